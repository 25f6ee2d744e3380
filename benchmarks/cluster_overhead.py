"""What `--cluster` costs: a local embed against the same embed on `--cluster local:N`, and the
fixed cost of one chunk (scheduling, the round trip, the driver's cache write).

    python benchmarks/cluster_overhead.py                    # sample_images/, local:2
    python benchmarks/cluster_overhead.py --images 1000 --workers 2 --batch-size 32

Every embed starts from an empty cache. "cluster, cold" includes each worker loading the
model; "cluster, warm" is a second run on the same workers, the steady state of a long run.
The per-chunk figures come from chunks that do nothing on the workers (so that only the
overhead is timed) and from the driver writing one chunk of results into the cache.
Needs the `dask` extra (pip install -e '.[dask]').
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gridtsne import cluster, embed, photo_model
from gridtsne.cache import EmbeddingCache, Record
from gridtsne.options import EmbedOptions
from gridtsne.stage import Context
from gridtsne.workdir import Workdir

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def photos(count: int, folder: Path) -> Path:
    """``count`` photos: the sample set, repeated under new names (so none is a cache hit by path)."""
    samples = sorted(SAMPLES.glob("*.jpg"))
    folder.mkdir(parents=True)
    for index in range(count):
        shutil.copy(samples[index % len(samples)], folder / f"{index:07d}.jpg")
    return folder


def timed_embed(folder: Path, work: Path, batch_size: int, context: Context) -> float:
    started = time.perf_counter()
    embed.run(Workdir(work), EmbedOptions(paths=(str(folder),), batch_size=batch_size), context)
    return time.perf_counter() - started


def _nothing(paths, *rest):
    return len(paths)


def _vectors(paths, dimension, *rest):
    return np.zeros((len(paths), dimension), dtype=np.float32)


def chunk_overhead(client, chunks: int, batch_size: int, dimension: int) -> tuple[float, float]:
    """Seconds per chunk through the scheduler: doing nothing, and returning a chunk's vectors."""
    paths = [f"/photos/{i:07d}.jpg" for i in range(batch_size)]
    results = []
    for function, args in ((_nothing, ()), (_vectors, (dimension,))):
        work = ((paths, *args) for _ in range(chunks))
        started = time.perf_counter()
        for _ in cluster._in_order(client, function, work, str):
            pass
        results.append((time.perf_counter() - started) / chunks)
    return results[0], results[1]


def driver_write(folder: Path, batch_size: int, dimension: int, repeats: int = 50) -> float:
    """Seconds for the driver to write one chunk of results into the cache."""
    cache = EmbeddingCache(folder, "bench")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for chunk in range(repeats):
        records = [
            Record(f"/p/{chunk}-{i}.jpg", 1000, 1, f"{chunk:032x}{i:032x}", 640, 480,
                   rng.random(dimension, dtype=np.float32))
            for i in range(batch_size)
        ]  # fmt: skip
        cache.add(records)
    return (time.perf_counter() - started) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=250, help="photos to embed (default 250)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of local:N (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="files per chunk (default 32)")
    parser.add_argument("--chunks", type=int, default=200, help="empty chunks timed (default 200)")
    args = parser.parse_args(argv)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folder = photos(args.images, root / "photos")
        context = Context(jobs=None)
        photo_model.model_for(EmbedOptions())  # loaded once here, as any run loads it before its work
        local = timed_embed(folder, root / "local", args.batch_size, context)

        address = f"local:{args.workers}"
        started = time.perf_counter()
        client = cluster.client_for(address)
        start_seconds = time.perf_counter() - started
        cold = timed_embed(folder, root / "cold", args.batch_size, Context(cluster=address))
        warm = timed_embed(folder, root / "warm", args.batch_size, Context(cluster=address))
        dimension = photo_model.model_for(EmbedOptions()).session.get_outputs()[0].shape[1] or 1280
        nothing, with_vectors = chunk_overhead(client, args.chunks, args.batch_size, dimension)
        write = driver_write(root / "cache", args.batch_size, dimension)
        cluster.shutdown()

    print(f"commit {commit.strip()}; {args.images} photos, chunks of {args.batch_size}, {address}")
    print(f"  local embed:               {local:6.2f} s  {args.images / local:6.1f} photos/s")
    print(f"  start LocalCluster:        {start_seconds:6.2f} s")
    print(f"  cluster embed, cold:       {cold:6.2f} s  {args.images / cold:6.1f} photos/s"
          f"  ratio {cold / local:.2f} x local")  # fmt: skip
    print(f"  cluster embed, warm:       {warm:6.2f} s  {args.images / warm:6.1f} photos/s"
          f"  ratio {warm / local:.2f} x local")  # fmt: skip
    print(f"  per chunk, empty task:     {nothing * 1e3:6.2f} ms (scheduling and round trip)")
    print(f"  per chunk, with vectors:   {with_vectors * 1e3:6.2f} ms (as above, plus their transfer)")
    print(f"  per chunk, driver write:   {write * 1e3:6.2f} ms (one cache chunk of the chunk's vectors)")


if __name__ == "__main__":
    sys.exit(main())
