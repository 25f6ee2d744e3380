"""Time and peak memory of `gridtsne render` for a very large collection (default 100,000 photos).

    python benchmarks/render_scale.py [--photos 100000] [--tile 32] [--keep DIR]
                                      [--outputs mosaic.jpg,mosaic.jpg,mosaic.png,gallery.html]

Builds a work directory as embed, reduce and assign would leave it for N
photos (no model run: images.json, a random coords.npy, grid.npy on the
default near-square grid, assign.json). The photos are N symbolic links to
the sample photos (at most 640 px JPEGs), each with its own path and its own
content hash in images.json, so every one is decoded and cached on its own
as N distinct photos would be. Then it renders each of --outputs in turn,
each as a separate process; by default:

1. mosaic.jpg    first render: decodes every photo, fills the tile cache
2. mosaic.jpg    after a new layout (grid.npy shuffled): tiles from the cache
3. mosaic.png    the streamed PNG writer, from the cache
4. gallery.html  the web page with its tile pyramid, from the cache

and prints wall time and peak resident memory (ru_maxrss of that process).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gridtsne import assign
from gridtsne.workdir import COORDS, IMAGES, Workdir, save_json, save_npy

REPO = Path(__file__).resolve().parent.parent


def synthesise(folder: Path, n_photos: int, seed: int = 0) -> Workdir:
    samples = sorted((REPO / "sample_images").glob("*.jpg"))
    photos = folder / "photos"
    photos.mkdir(parents=True)
    entries = []
    for index in range(n_photos):
        source = samples[index % len(samples)]
        path = photos / f"{index // 1000:03d}" / f"{index:06d}_{source.name}"
        path.parent.mkdir(exist_ok=True)
        path.symlink_to(source)
        entries.append(
            {
                "path": str(path),
                "bytes": source.stat().st_size,
                "sha256": hashlib.sha256(str(path).encode()).hexdigest(),
                "width": 0,
                "height": 0,
            }
        )
    work = Workdir(folder / "work")
    work.path.mkdir()
    save_json(work.file(IMAGES), {"images": entries, "skipped": []})
    rng = np.random.default_rng(seed)
    save_npy(work.file(COORDS), rng.random((n_photos, 2), dtype=np.float32))
    new_layout(work, n_photos, rng)
    return work


def new_layout(work: Workdir, n_photos: int, rng) -> None:
    """A random grid.npy on the default grid, with its assign.json."""
    rows, cols = assign.grid_shape(n_photos)
    assign.save_grid(work, rng.permutation(rows * cols)[:n_photos].astype(np.int32), rows, cols)


def measure(*args) -> tuple[float, float, dict]:
    """Seconds, peak RSS in MiB and the JSON summary of one gridtsne process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "gridtsne", *map(str, args), "--quiet", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"gridtsne {' '.join(map(str, args))} failed:\n{stderr.decode()}")
    return seconds, usage.ru_maxrss / 1024, json.loads(stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument(
        "--outputs",
        default="mosaic.jpg,mosaic.jpg,mosaic.png,gallery.html",
        help="What to render, in order; the layout changes before the second.",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="Build here and keep it (default: a temporary folder)."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        started = time.perf_counter()
        work = synthesise(folder, args.photos)
        print(
            f"{args.photos:,} photos, {args.tile} px tiles; work directory built in "
            f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs"
        )
        print(f"{'run':<44}{'seconds':>9}{'peak MiB':>10}  picture")
        kinds = {".jpg": "", ".png": " (streamed strip by strip)", ".html": " (web page, tile pyramid)"}
        for number, name in enumerate(args.outputs.split(",")):
            when = ["first render", "new layout", "same layout"][min(number, 2)]
            label = f"{when}, {Path(name).suffix}{kinds.get(Path(name).suffix, '')}"
            if number == 1:
                new_layout(work, args.photos, np.random.default_rng(1))
            seconds, peak_mib, summary = measure(
                "render", folder / name, "-w", work.path, "--tile", args.tile
            )
            size = f"{summary['width']:,} x {summary['height']:,} px"
            print(
                f"{label:<44}{seconds:9.1f}{peak_mib:10.0f}  {size}, {summary['decoded']:,} decoded, "
                f"{summary['from_cache']:,} from cache",
                flush=True,
            )


if __name__ == "__main__":
    main()
