"""Finding input images and opening one image safely.

Opening never raises anything but ``UnreadableImage``, whose text is a short
reason of the form ``"kind: detail"``; the caller records it in
``images.json`` and counts skips by kind. Files are only opened for reading.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gridtsne.options import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS
from gridtsne.workdir import NotRegularFile, sha256_file

try:  # HEIC/HEIF (and AVIF on older Pillow) where the optional plugin is installed.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_PLUGIN = True
except ImportError:
    HEIF_PLUGIN = False

#: EXIF orientation values 5-8 swap width and height.
ORIENTATION_TAG = 0x0112

#: Below this, a CNN sees little more than a blur.
MIN_SIDE_PX = 16

#: ISO-BMFF brands of HEIF/AVIF files, which Pillow reads only with a plugin.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


class UnreadableImage(Exception):
    """A file that cannot be used as an image; ``str()`` is ``"kind: detail"``."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def reason_kind(reason: str) -> str:
    """The kind of a skip reason (the words before the first colon)."""
    return reason.split(":", 1)[0]


@dataclass
class Found:
    """The outcome of looking: files to try, in order, and paths refused on sight."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_images(
    paths: Iterable[str | os.PathLike],
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    exclude: Iterable[str | os.PathLike] = (),
    hidden: bool = False,
) -> Found:
    """Files to try, sorted; folders walked recursively, following symlinks safely.

    Hidden files and folders are left out unless ``hidden``. A folder reached
    twice (a symlink loop) is walked once. A file reached under two names is
    tried once and the other name is skipped as a duplicate. ``exclude`` keeps
    out files and folders that gridtsne writes itself (the mosaic, a web page's
    folder) when they are written into the folder of photos.

    What is never opened is skipped with a reason: anything but a regular file
    (a FIFO would block the run), and a path that is not valid UTF-8, which
    ``images.json`` could not name; that one is reported under ``shown_path``.
    """
    wanted = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    excluded = {Path(path).resolve() for path in exclude}
    first_name: dict[Path, Path] = {}
    looked_at: set[Path] = set()  # each path is reported once, however often it is reached
    found = Found()

    def consider(path: Path) -> None:
        if path in looked_at:
            return
        looked_at.add(path)
        reason = _refusal(path)
        if reason:  # and not resolved: resolve() raises on a symlink loop
            found.skipped.append((shown_path(path), reason))
            return
        real = path.resolve()
        if real in excluded:
            return
        if real in first_name:
            found.skipped.append((path, f"duplicate: same file as {first_name[real]}"))
        else:
            first_name[real] = path
            found.files.append(path)

    def unlistable(error: OSError) -> None:
        found.skipped.append((shown_path(error.filename), f"unreadable: {error.strerror} (a folder)"))

    walked: set[tuple[int, int]] = set()
    for given in paths:
        root = Path(os.path.abspath(given))
        if root.is_dir():
            for folder, subfolders, names in os.walk(root, onerror=unlistable, followlinks=True):
                folder_stat = os.stat(folder)
                if (folder_stat.st_dev, folder_stat.st_ino) in walked:
                    subfolders[:] = []
                    continue
                walked.add((folder_stat.st_dev, folder_stat.st_ino))
                subfolders[:] = sorted(
                    d
                    for d in subfolders
                    if (hidden or not d.startswith(".")) and (Path(folder) / d).resolve() not in excluded
                )
                for name in sorted(names):
                    path = Path(folder) / name
                    if (hidden or not name.startswith(".")) and path.suffix.lower() in wanted:
                        consider(path)
        else:
            consider(root)
    found.files.sort()
    return found


def shown_path(path: str | os.PathLike) -> Path:
    """``path`` with any bytes that are not UTF-8 written as ``\\xNN``: printable, storable in JSON.

    Only for naming a file in a message or in ``images.json``'s skipped list; it
    does not round-trip to the file.
    """
    return Path(os.fsencode(path).decode("utf-8", "backslashreplace"))


def _refusal(path: Path) -> str | None:
    """Why ``path`` is not even opened, or None when it is a regular file with a usable name."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return "bad file name: not valid UTF-8 (rename the file to include it)"
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if os.path.islink(path):
            return "missing: broken symbolic link"
        if isinstance(error, FileNotFoundError):
            return "missing: no such file or folder"
        return f"unreadable: {error.strerror or error}"
    if not stat.S_ISREG(mode):
        return f"not a regular file: {describe_file_type(mode)}"
    return None


def describe_file_type(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    for test, words in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return words
    return "a special file"


def fingerprint(files: Iterable[Path]) -> str:
    """A cheap digest of names, sizes and modification times, to notice changes."""
    digest = hashlib.sha256()
    for path in files:
        try:
            file_stat = path.stat()
            digest.update(os.fsencode(path) + f"\0{file_stat.st_size}\0{file_stat.st_mtime_ns}\n".encode())
        except OSError:  # gone since it was found: that is a change too
            digest.update(os.fsencode(path) + b"\0gone\n")
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """SHA-256 of a regular file, read in blocks so that memory stays small.

    Anything else is refused before a byte is read: opening without blocking
    means a FIFO put in a photo's place cannot stall the run.
    """
    try:
        return sha256_file(path)
    except NotRegularFile as error:
        raise UnreadableImage("not a regular file", describe_file_type(error.mode)) from None
    except OSError as error:
        raise UnreadableImage("unreadable", error.strerror or str(error)) from None


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is laid onto ``background``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        # 16-bit files open as "I" too: scale their full range rather than clip at 255.
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = pixels.min(), pixels.max()
        if 0.0 <= low and high <= 1.0:  # the usual convention for float images
            low, high = 0.0, 1.0
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _unidentified(path: Path) -> UnreadableImage:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS and not HEIF_PLUGIN:
        return UnreadableImage(
            "unsupported format", "HEIC/AVIF needs the pillow-heif plugin: pip install 'gridtsne[heif]'"
        )
    return UnreadableImage("not an image", "Pillow cannot identify it")


def open_image(
    path: Path,
    *,
    draft_px: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode one image to RGB, upright. Returns it and its upright pixel size.

    The header is checked before any pixel is decoded, so a file that claims
    more than ``max_pixels`` costs no memory. ``draft_px`` lets JPEG decoding
    skip detail that will be thrown away (both sides stay at least that large).
    Animated files give their first frame.
    """
    path = Path(path)
    try:
        if os.stat(path).st_size == 0:
            raise UnreadableImage("empty", "zero bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableImage(
                        "too large", f"{width} x {height} pixels is over the limit of {max_pixels}"
                    )
                if min(width, height) < MIN_SIDE_PX:
                    raise UnreadableImage("too small", f"{width} x {height} pixels")
                if draft_px:
                    image.draft("RGB", (draft_px, draft_px))
                image.load()
                try:
                    turned = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
                    upright = ImageOps.exif_transpose(image)
                except Exception:  # a broken EXIF block must not cost the picture
                    turned, upright = False, image
                if turned:
                    width, height = height, width
                return _to_rgb(upright, background), (width, height)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own check, for the most extreme claims
        raise UnreadableImage("too large", str(error)) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(path) from None
    except FileNotFoundError:
        raise UnreadableImage("missing", "the file disappeared") from None
    except PermissionError as error:
        raise UnreadableImage("unreadable", error.strerror or str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as error:
        detail = str(error) or type(error).__name__
        # Pillow says "image file is truncated" or "Truncated File Read", depending on where it stopped.
        kind = "truncated" if "truncated" in detail.lower() or isinstance(error, EOFError) else "corrupt"
        raise UnreadableImage(kind, detail) from None
