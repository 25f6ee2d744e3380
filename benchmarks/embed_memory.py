"""Peak memory of `gridtsne embed`: flat as the number of images grows, bounded for one huge image.

    python benchmarks/embed_memory.py [--counts 1000 10000] [--folder DIR] [--keep]
    python benchmarks/embed_memory.py --extreme
    python benchmarks/embed_memory.py ... --gridtsne PATH    # another build, to compare

Makes the small distinct JPEGs of end_to_end_scale.py (1,000 a subfolder),
then for each count embeds the first count of them with the installed
`gridtsne embed` (a fresh work directory, and its own cache, each time, so
every image is decoded and run through the model) and prints its seconds and
peak resident memory (ru_maxrss, as `/usr/bin/time -v` reports it). Only
the vectors (1280 float32, 5 KB an image) and one record per image may grow
with N; the decoded pictures must not.

With --extreme, embeds files one at a time that cost gigabytes before
gridtsne bounded one decode: 168-megapixel PNGs (RGB and RGBA, just under
the default --max-pixels) and 14 KB strips of 16 x 100,000 and 16 x 400,000
pixels; each line gives the file's peak and what became of it.
"""

import argparse
import json
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import end_to_end_scale
from end_to_end_scale import PER_FOLDER, check, make_images, measure
from PIL import Image


def embed_counts(folder: Path, counts: list[int]) -> None:
    make_images(folder, max(counts))
    print(f"{'images':>8}{'seconds':>10}{'peak MiB':>10}{'KiB/image':>11}")
    previous = None
    for count in sorted(counts):
        subfolders = [folder / f"{index:03d}" for index in range(count // PER_FOLDER)]
        with tempfile.TemporaryDirectory() as work:
            result = measure(["embed", *subfolders, "-w", work, "--json", "--quiet"])
            summary = check(result, "gridtsne embed")
        slope = ""
        if previous:
            slope = f"{(result['peak_mib'] - previous[1]) * 1024 / (count - previous[0]):11.1f}"
        print(f"{summary['embedded']:8,}{result['seconds']:10.1f}{result['peak_mib']:10.0f}{slope}")
        previous = (count, result["peak_mib"])


def extreme_files(folder: Path) -> list[Path]:
    """Files that each cost gigabytes to embed when a decode was not bounded."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, size, mode in [
        ("strip-16x100000.png", (16, 100_000), "RGB"),
        ("strip-16x400000.png", (16, 400_000), "RGB"),
        ("rgb-168mp.png", (14_000, 12_000), "RGB"),
        ("rgba-168mp.png", (14_000, 12_000), "RGBA"),
    ]:
        path = folder / name
        if not path.exists():
            # A smooth picture (compresses well): a gradient along the long side, a band across.
            width, height = size
            image = Image.linear_gradient("L").resize((256, 256)).resize(size, Image.BILINEAR)
            bands = [image, image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), Image.new("L", size, 90)]
            if mode == "RGBA":
                bands.append(Image.new("L", size, 200))
            Image.merge(mode, bands).save(path, compress_level=1)
            del image, bands
        made.append(path)
    return made


def embed_extremes(folder: Path) -> None:
    # Made in another process: a child's ru_maxrss starts from this process's own peak.
    with ProcessPoolExecutor(max_workers=1) as pool:
        files = pool.submit(extreme_files, folder).result()
    print(f"{'file':<22}{'KB':>9}{'seconds':>9}{'peak MiB':>10}   outcome")
    for path in files:
        with tempfile.TemporaryDirectory() as work:
            result = measure(["embed", path, "-w", work, "--json", "--quiet"])
            if result["rc"] == 0:
                listing = json.loads((Path(work) / "images.json").read_text())
                outcome = "embedded" if listing["images"] else listing["skipped"][0]["reason"]
            else:
                outcome = f"exit {result['rc']}: {result['stderr'].strip().splitlines()[-1][:90]}"
        print(
            f"{path.name:<22}{path.stat().st_size / 1000:9,.0f}{result['seconds']:9.1f}"
            f"{result['peak_mib']:10.0f}   {outcome}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--extreme", action="store_true", help="Huge and extreme-aspect files, one at a time."
    )
    parser.add_argument("--folder", type=Path, default=None, help="Where the images go (default: temporary).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary images.")
    parser.add_argument("--gridtsne", default=None, help="The gridtsne command to measure.")
    args = parser.parse_args()
    end_to_end_scale.COMMAND = args.gridtsne
    if any(count % PER_FOLDER for count in args.counts):
        sys.exit(f"--counts must be multiples of {PER_FOLDER}")

    scratch = Path(tempfile.mkdtemp(prefix="gridtsne-embed-memory-"))
    folder = args.folder or scratch / "images"
    try:
        if args.extreme:
            embed_extremes(folder)
        else:
            embed_counts(folder, args.counts)
        if args.keep or args.folder:
            print(f"images in {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
