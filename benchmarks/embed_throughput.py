"""Embedding throughput on full-size camera JPEGs: gridtsne embed vs the model alone vs a naive loop.

    python benchmarks/embed_throughput.py [--images 64] [--threads 2] [--jobs 2] [--folder DIR]

Makes (once) a folder of 4000 x 3000 camera-like JPEGs (sample photos
upscaled with sensor-like noise, quality 92, about 3 MB each), then measures,
with the same onnxruntime threads:

- model only: the model on ready-made 224 x 224 tensors, in batches;
- gridtsne embed: the real command, cold cache, as a user runs it
  (images/s from the stage's own timing, peak memory of the process);
- naive loop: open the full image, resize, one inference call per image.

It also prints the CPU time each step costs per image (thread CPU time, so
other load on the machine does not inflate it) and the throughput ceiling
that follows on this many cores: no overlap of decoding and inference can
beat total CPU work / cores.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gridtsne import images, photo_model
from gridtsne.options import EmbedOptions
from gridtsne.stage import default_jobs

REPO = Path(__file__).resolve().parent.parent

MEASURE_PEAK = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "from gridtsne.cli import main\n"
    "main()\n"
)


def make_camera_jpegs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "sample_images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"camera-{index:04d}.jpg"
        if not path.exists():
            photo = Image.open(sources[index * 7 % len(sources)]).convert("RGB")
            photo = ImageOps.fit(photo, (4000, 3000), Image.BICUBIC)
            pixels = np.asarray(photo, dtype=np.int16) + rng.normal(0, 5, (3000, 4000, 3)).astype(np.int16)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def model_only(count: int, threads: int, batch_size: int) -> float:
    model = photo_model.load_model(threads=threads)
    batch = np.random.default_rng(1).normal(size=(batch_size, 3, 224, 224)).astype(np.float32)
    model(batch)  # warm-up
    started = time.perf_counter()
    done = 0
    while done < count:
        model(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def gridtsne_embed(folder: Path, threads: int, jobs: int, batch_size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                MEASURE_PEAK,
                "embed",
                str(folder),
                "-w",
                work,
                "--json",
                "--quiet",
                "--threads",
                str(threads),
                "--jobs",
                str(jobs),
                "--batch-size",
                str(batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    summary = json.loads(result.stdout)
    peak_kb = int(result.stderr.split("peak_rss_kb")[-1].split()[0])
    return summary["embedded"] / summary["seconds"], peak_kb / 1024


def cpu_per_image(paths: list[Path]) -> dict[str, float]:
    """Milliseconds of CPU per image for each step of gridtsne embed, one thread."""
    model = photo_model.load_model(threads=1)
    costs, decoded = {}, []
    started = time.thread_time()
    for path in paths:
        images.content_hash(path)
    costs["hash"] = time.thread_time() - started
    started = time.thread_time()
    for path in paths:
        decoded.append(images.open_image(path, draft_px=model.prep.resize_short_side)[0])
    costs["decode (JPEG draft)"] = time.thread_time() - started
    started = time.thread_time()
    batch = np.stack([photo_model.preprocess(image, model.prep) for image in decoded])
    costs["resize + crop"] = time.thread_time() - started
    model(batch)
    started = time.process_time()
    model(batch)
    costs["inference"] = time.process_time() - started
    return {step: seconds / len(paths) * 1000 for step, seconds in costs.items()}


def naive_loop(paths: list[Path], threads: int) -> float:
    model = photo_model.load_model(threads=threads)
    started = time.perf_counter()
    for path in paths:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        model(photo_model.preprocess(image, model.prep)[None])
    return len(paths) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[EmbedOptions.default("threads")],
        help="onnxruntime threads (0: onnxruntime decides)",
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[default_jobs()])
    parser.add_argument("--batch-size", type=int, default=EmbedOptions.default("batch_size"))
    parser.add_argument("--naive-images", type=int, default=16, help="the naive loop is slow")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "gridtsne-camera-jpegs")
    args = parser.parse_args()

    paths = make_camera_jpegs(args.folder, args.images)
    megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(
        f"{len(paths)} JPEGs of 4000 x 3000 ({megabytes:.1f} MB each) in {args.folder}; "
        f"batch {args.batch_size}"
    )
    costs = cpu_per_image(paths[:16])
    print("  CPU per image: " + ", ".join(f"{step} {ms:.1f} ms" for step, ms in costs.items()))
    cores = os.cpu_count() or 1
    print(
        f"  so on {cores} cores no pipeline exceeds {cores * 1000 / sum(costs.values()):.1f} images/s, "
        f"and the model alone may reach {cores * 1000 / costs['inference']:.1f}"
    )
    for threads in args.threads:
        reference = model_only(len(paths), threads, args.batch_size)
        naive = naive_loop(paths[: args.naive_images], threads)
        print(f"  onnxruntime threads {threads}: model only {reference:.1f} images/s, naive loop {naive:.1f}")
        for jobs in args.jobs:
            rate, peak_mb = gridtsne_embed(args.folder, threads, jobs, args.batch_size)
            print(
                f"    gridtsne embed --threads {threads} -j{jobs}: {rate:6.1f} images/s = "
                f"{rate / reference:.2f} x model only, {rate / naive:.1f} x naive; "
                f"peak memory {peak_mb:.0f} MB"
            )


if __name__ == "__main__":
    main()
