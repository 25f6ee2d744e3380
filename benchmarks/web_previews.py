"""The web page's previews: time and bytes per 1,000 photos, made and reused.

    python benchmarks/web_previews.py

On the 250 sample photos (at most 640 px) and on 40 of them enlarged to
4000 x 3000 px JPEGs (as from a camera), ``web.make_previews`` with 2
threads, as render makes them, at --preview 256, 384 and 512; then again from
the previews just made (the photos unchanged, as a second render finds them).
Prints seconds and bytes per 1,000 photos.
"""

import hashlib
import tempfile
import time
from pathlib import Path

from datasets import REPO
from PIL import Image

from gridtsne import web


def entries_of(files):
    entries = []
    for path in files:
        with Image.open(path) as image:
            width, height = image.size
        entries.append({"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                        "width": width, "height": height})  # fmt: skip
    return entries


def measure(label, files, px):
    entries = entries_of(files)
    order = list(range(len(entries)))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        web.make_previews(entries, order, Path(tmp) / "a", None, px, web.PREVIEW_QUALITY, 2)
        made = time.perf_counter() - started
        size = sum(f.stat().st_size for f in (Path(tmp) / "a").glob("*.jpg"))
        started = time.perf_counter()
        web.make_previews(entries, order, Path(tmp) / "b", Path(tmp) / "a", px, web.PREVIEW_QUALITY, 2)
        reused = time.perf_counter() - started
    per = 1000 / len(files)
    print(f"{label:>22} {px:>7} {made * per:>9.1f} {size * per / 1e6:>9.1f} {reused * per:>9.2f}", flush=True)


def main():
    photos = sorted(p for p in (REPO / "sample_images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    print(f"{'photos':>22} {'preview':>7} {'s/1000':>9} {'MB/1000':>9} {'again s':>9}")
    for px in (256, 384, 512):
        measure(f"{len(photos)} samples", photos, px)
    with tempfile.TemporaryDirectory() as tmp:
        large = []
        for photo in photos[:40]:
            with Image.open(photo) as image:
                image.convert("RGB").resize((4000, 3000)).save(Path(tmp) / photo.name, quality=90)
            large.append(Path(tmp) / photo.name)
        for px in (384, 512):
            measure("40 of 4000 x 3000", large, px)


if __name__ == "__main__":
    main()
