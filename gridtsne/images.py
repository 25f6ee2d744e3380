"""Finding input images and opening one image safely.

Opening never raises for a bad file: it raises ``UnreadableImage`` with a
short reason, which the caller records in ``images.json`` and counts.
Files are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: What a folder walk looks at. A file named on the command line is tried
#: whatever its name: Pillow, not the extension, decides what is an image.
DEFAULT_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp",
    ".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".ppm", ".pgm",
)

#: Pillow's own decompression-bomb threshold: refuse headers that claim more.
DEFAULT_MAX_PIXELS = 178_956_970

#: EXIF orientation values 5-8 swap width and height.
ORIENTATION_TAG = 0x0112

#: Below this, a CNN sees little more than a blur.
MIN_SIDE_PX = 16


class UnreadableImage(Exception):
    """A file that cannot be used as an image; ``str()`` is the reason."""


@dataclass
class Found:
    """The outcome of looking for images: candidate files and refused paths."""

    files: list[Path]
    missing: list[tuple[Path, str]]


def find_images(
    paths: Iterable[str | os.PathLike],
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    exclude: Iterable[str | os.PathLike] = (),
) -> Found:
    """Files to try, sorted; folders are walked recursively, hidden entries skipped.

    The same file named twice (or reached through two routes) is kept once.
    ``exclude`` keeps out files such as the mosaic itself, when it is written
    into the folder of photos, and folders such as a web page's.
    """
    wanted = {ext.lower() for ext in extensions}
    files: dict[Path, Path | None] = {Path(path).resolve(): None for path in exclude}
    missing: list[tuple[Path, str]] = []
    for given in paths:
        root = Path(given).absolute()
        if root.is_file():
            files.setdefault(root.resolve(), root)
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and (Path(dirpath) / d).resolve() not in files)
                for name in filenames:
                    path = Path(dirpath) / name
                    if name.startswith(".") or path.suffix.lower() not in wanted:
                        continue
                    if path.is_file():
                        files.setdefault(path.resolve(), path)
        else:
            missing.append((root, "no such file or folder"))
    return Found(files=sorted(path for path in files.values() if path is not None), missing=missing)


def fingerprint(files: Iterable[Path]) -> str:
    """A cheap digest of names, sizes and modification times, to notice changes."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is laid onto ``background``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        # 16-bit files open as "I" too; scale their full range, not clip to 255.
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = pixels.min(), pixels.max()
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else pixels * 0
        image = Image.fromarray(scaled.astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def open_image(
    path: Path,
    *,
    draft_px: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    data: bytes | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode one image to RGB, upright. Returns it and its original pixel size.

    ``draft_px`` lets JPEG decoding skip detail that will be thrown away: the
    result keeps both sides at least that large (or the original size).
    """
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise UnreadableImage(f"cannot read: {error.strerror or error}") from None
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(
                    f"too many pixels: {width} x {height} is over the limit of {max_pixels}"
                )
            if min(width, height) < MIN_SIDE_PX:
                raise UnreadableImage(f"too small: {width} x {height} pixels")
            if draft_px:
                image.draft("RGB", (draft_px, draft_px))
            image.load()
            try:
                turned = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
                image = ImageOps.exif_transpose(image)
            except Exception:  # a broken EXIF block must not cost the picture
                turned = False
            if turned:
                width, height = height, width
            return _to_rgb(image, background), (width, height)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:
        raise UnreadableImage("too many pixels: refused as a decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        reason = str(error) or type(error).__name__
        raise UnreadableImage(f"cannot decode: {reason}") from None
