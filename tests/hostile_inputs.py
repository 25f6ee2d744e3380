"""A folder of hostile but realistic inputs, made by this script (no binaries committed).

``make_hostile_folder(path)`` fills ``path`` with over 100 files of over 20
kinds and returns what gridtsne must make of each, by its path relative to
``path`` (a name that is not UTF-8 as ``os.fsdecode`` gives it):

- ``"image"``: embedded, listed in ``images.json``'s "images";
- a skip kind (``"truncated"``, ``"not a regular file"``, ...): listed in its
  "skipped" with a reason of that kind;
- ``"ignored"``: not looked at (hidden, another extension, a folder link), in neither.

``snapshot(path)`` is a digest of everything in the folder, read without
following a link or opening anything but a regular file, to check that a run
changed nothing. Run by hand::

    python tests/hostile_inputs.py /tmp/hostile     # makes it, prints the expected outcomes
    gridtsne all /tmp/hostile /tmp/hostile.jpg
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: What the default set leaves out, and the item of issue 10 that covers it. Empty: all kinds are in.
LEFT_OUT: dict[str, str] = {}


def _picture(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A distinct, deterministic picture: a gradient in the seed's colours plus some noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, 3)
    pixels = np.stack(
        [(base[c] + (x * (c + 1) + y * (3 - c)) * 255 // max(width + height, 1)) % 256 for c in range(3)], -1
    )
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims width x height pixels (a decompression bomb's)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def make_hostile_folder(path: str | os.PathLike) -> dict[str, str]:
    """Fill ``path`` (created if need be) with hostile inputs; the expected outcome of each."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    seed = iter(range(10_000))

    def write(name: str, data: bytes, outcome: str) -> Path:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        expected[name] = outcome
        return target

    def picture(name: str, fmt: str, size=(96, 72), mode="RGB", **options) -> Path:
        return write(name, _encoded(_picture(next(seed), size, mode), fmt, **options), "image")

    # Valid pictures of every common format and mode.
    for i in range(20):
        picture(f"jpeg-{i:02d}.jpg", "JPEG", size=(64 + 16 * i, 48 + 8 * (i % 5)), quality=85)
    for i in range(5):
        picture(f"png-rgb-{i}.png", "PNG", size=(80, 60 + 10 * i))
    for i in range(3):
        picture(f"png-rgba-{i}.png", "PNG", mode="RGBA")
    for i in range(3):
        picture(f"gif-{i}.gif", "GIF", mode="P")
    frames = [_picture(next(seed), (64, 64), "P") for _ in range(3)]
    write("gif-animated.gif", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image")
    for i in range(3):
        picture(f"webp-{i}.webp", "WEBP", quality=80)
    for i in range(3):
        picture(f"bmp-{i}.bmp", "BMP")
    for i in range(3):
        picture(f"tiff-{i}.tiff", "TIFF", compression="tiff_lzw")
    for i in range(3):
        deep = (np.asarray(_picture(next(seed), (70, 50), "L"), np.uint16) * 257).astype(np.uint16)
        write(f"png-16bit-{i}.png", _encoded(Image.fromarray(deep), "PNG"), "image")
    for i in range(3):
        palette = _picture(next(seed), (64, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        write(f"png-palette-transparent-{i}.png", _encoded(palette, "PNG", transparency=0), "image")
    for i in range(3):
        picture(f"jpeg-cmyk-{i}.jpg", "JPEG", mode="CMYK")
    for i in range(2):
        picture(f"jpeg-grey-{i}.jpg", "JPEG", mode="L")
    for i, orientation in enumerate((3, 6, 8, 5)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture(f"jpeg-exif-rotated-{i}.jpg", "JPEG", size=(100, 60), exif=exif.tobytes())
    picture("extreme-aspect-16x20000.png", "PNG", size=(16, 20_000))
    picture("tiny-but-enough-16x16.png", "PNG", size=(16, 16))

    # Names that break careless code: spaces, newlines, quotes, a leading dash, shell syntax.
    for name in (
        "with space.jpg",
        "new\nline.jpg",
        "tab\there.jpg",
        "quote's.jpg",
        'double"quote.jpg',
        "-leading-dash.jpg",
        "--help.jpg",
        "$(echo pwned).jpg",
        "back\\slash.jpg",
        "ünïcødé 写真.jpg",
        "UPPER CASE.JPG",
        "<script>alert(1)</script>.jpg",
    ):
        picture(name, "JPEG")
    picture("folder.jpg/inside.png", "PNG")  # a folder named like a photo is walked, not opened

    # The same file under two names: a hard link is a second name of its own; a symbolic link
    # to a file already found is a duplicate.
    os.link(root / "jpeg-00.jpg", root / "jpeg-00 hardlink.jpg")
    expected["jpeg-00 hardlink.jpg"] = "image"
    (root / "zz-symlink-to-jpeg-01.jpg").symlink_to("jpeg-01.jpg")
    expected["zz-symlink-to-jpeg-01.jpg"] = "duplicate"

    # Cut short, empty, not pictures at all, too small, claiming too much.
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), np.uint8))
    full_jpeg, full_png = _encoded(noise, "JPEG", quality=90), _encoded(noise, "PNG")
    for fraction in (0.05, 0.3, 0.6, 0.9):
        write(
            f"truncated-{int(fraction * 100)}.jpg", full_jpeg[: int(len(full_jpeg) * fraction)], "truncated"
        )
        write(f"truncated-{int(fraction * 100)}.png", full_png[: int(len(full_png) * fraction)], "truncated")
    for name in ("empty.jpg", "empty.png", "empty.gif"):
        write(name, b"", "empty")
    write("text.jpg", b"this is a text file, not a picture\n", "not an image")
    write("html.png", b"<!doctype html><title>not a picture</title>\n", "not an image")
    write("json.webp", b'{"not": "a picture"}\n', "not an image")
    write("random-bytes.tiff", np.random.default_rng(7).bytes(3000), "not an image")
    write("png-header-only.png", full_png[:8], "not an image")
    damaged = bytearray(full_png)
    damaged[len(damaged) // 2] ^= 0xFF  # a byte flipped inside the compressed pixels
    write("png-damaged-pixels.png", bytes(damaged), "corrupt")
    for name, fmt, size in (
        ("tiny-1x1.png", "PNG", (1, 1)),
        ("tiny-1x1.gif", "GIF", (1, 1)),
        ("tiny-8x8.jpg", "JPEG", (8, 8)),
    ):
        picture(name, fmt, size=size)
        expected[name] = "too small"
    write("bomb-100000x100000.png", _png_claiming(100_000, 100_000), "too large")
    write("bomb-15000x15000.png", _png_claiming(15_000, 15_000), "too large")

    # Things that are not regular files, or not there.
    for name in ("fifo.jpg", "fifo.png"):
        os.mkfifo(root / name)  # opening one for reading would block for ever
        expected[name] = "not a regular file"
    with socket.socket(socket.AF_UNIX) as listening:
        try:
            listening.bind(str(root / "socket.jpg"))
            expected["socket.jpg"] = "not a regular file"
        except OSError:  # a path too long for a socket address: leave this kind out
            pass
    (root / "broken-link.jpg").symlink_to("never-there.jpg")
    (root / "broken-absolute-link.png").symlink_to("/nonexistent/gridtsne/photo.png")
    (root / "self-loop.jpg").symlink_to("self-loop.jpg")
    expected.update(
        {"broken-link.jpg": "missing", "broken-absolute-link.png": "missing", "self-loop.jpg": "missing"}
    )
    (root / "loop").symlink_to(".")  # a folder link back to the top: walked once
    expected["loop"] = "ignored"

    # Names that are not UTF-8 (Latin-1, as old cameras and archives write them).
    for raw in (b"latin1-caf\xe9.jpg", b"dir-\xff/inside.jpg"):
        name = os.fsdecode(raw)
        picture(name, "JPEG")
        expected[name] = "bad file name"

    # Not looked at: hidden files and folders, other extensions.
    for name in (".hidden.jpg", ".hidden-folder/photo.jpg", "notes.txt", "photo.jpg.bak", "README"):
        write(name, _encoded(_picture(next(seed), (40, 40)), "JPEG"), "ignored")

    # Unreadable (as root, chmod 000 does not stop reading: then it is an image).
    for i in range(2):
        unreadable = picture(f"chmod-000-{i}.jpg", "JPEG")
        unreadable.chmod(0)
        expected[f"chmod-000-{i}.jpg"] = "image" if os.access(unreadable, os.R_OK) else "unreadable"

    for name in LEFT_OUT:
        (root / name).unlink()
        del expected[name]
    return expected


def snapshot(path: str | os.PathLike) -> dict[bytes, tuple]:
    """Every entry under ``path``: its type, mode, size, time and content hash (or link target).

    Links are not followed and only regular files are opened, so a FIFO or a
    link loop cannot stall it.
    """
    entries = {}
    top = os.fsencode(path)
    for folder, subfolders, names in os.walk(top):
        for name in subfolders + names:
            full = os.path.join(folder, name)
            info = os.lstat(full)
            content = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(full)
            elif stat.S_ISREG(info.st_mode) and os.access(full, os.R_OK):
                with open(full, "rb") as handle:
                    content = hashlib.file_digest(handle, "sha256").hexdigest()
            entries[os.path.relpath(full, top)] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return entries


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hostile_inputs.py FOLDER")
    outcomes = make_hostile_folder(sys.argv[1])
    for name, outcome in sorted(outcomes.items()):
        print(f"{outcome:20} {name!r}")
    print(
        f"{len(outcomes)} entries, {len(set(outcomes.values()))} outcomes, in {sys.argv[1]}", file=sys.stderr
    )
