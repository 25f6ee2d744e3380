"""Finding input images and opening one image safely.

Opening never raises anything but ``UnreadableImage``, whose text is a short
reason of the form ``"kind: detail"``; the caller records it in
``images.json`` and counts skips by kind. Files are only opened for reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

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

#: The most one decode may allocate, every buffer counted: the decoded picture
#: at its mode's bytes per pixel, and the copies that turn it into RGB.
DEFAULT_MAX_DECODE_BYTES = 1 << 30

#: A picture decoded for a smaller size (``draft_px``) whose conversion to RGB
#: would copy more than this is first shrunk by a whole factor, strip by strip.
#: Below it the picture is converted as it is, so that ordinary photos embed
#: exactly as they always have.
SHRINK_ABOVE_BYTES = 256 << 20

#: Decodes that allocate more than this take turns: threads decoding side by
#: side never hold two large pictures at once.
LARGE_DECODE_BYTES = 128 << 20
_LARGE_DECODE = threading.Lock()

#: Pixels per strip when a picture is converted or shrunk strip by strip.
STRIP_PIXELS = 1 << 20

#: EXIF orientation -> the transposition that makes the picture upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Modes of more than 8 bits a channel, mapped to 8 bits by their range.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: Modes with transparency, laid onto the background.
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
#: Modes Image.reduce accepts.
REDUCIBLE_MODES = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

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
    #: Files in walked folders that were not tried, counted: "hidden file", "hidden folder"
    #: (not walked), and by extension those that are not image extensions (".txt", "(none)").
    left_out: dict[str, int] = field(default_factory=dict)
    other_extensions: dict[str, int] = field(default_factory=dict)


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

    def count(kind: str, how_many: int = 1) -> None:
        if how_many:
            found.left_out[kind] = found.left_out.get(kind, 0) + how_many

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
                hidden_folders = [d for d in subfolders if not hidden and d.startswith(".")]
                count("hidden folder", len(hidden_folders))
                subfolders[:] = sorted(
                    d
                    for d in subfolders
                    if d not in hidden_folders and (Path(folder) / d).resolve() not in excluded
                )
                for name in sorted(names):
                    path = Path(folder) / name
                    if not hidden and name.startswith("."):
                        count("hidden file")
                    elif path.suffix.lower() not in wanted:
                        if not excluded or path.resolve() not in excluded:
                            suffix = path.suffix.lower() or "(none)"
                            found.other_extensions[suffix] = found.other_extensions.get(suffix, 0) + 1
                            count("not an image extension")
                    else:
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
    """Any Pillow mode to 8-bit RGB; transparency is laid onto ``background``.

    An RGB picture is returned as it is, not copied.
    """
    if image.mode in DEEP_MODES:
        low, high = _eight_bit_range(image)
        image = _by_strips(image, lambda strip: _to_eight_bit(strip, low, high))
    if _has_alpha(image):
        canvas = Image.new("RGBA", image.size, background + (255,))
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _eight_bit_range(image: Image.Image) -> tuple[float, float]:
    """The values of a deep (16-bit, 32-bit, float) picture that become 0 and 255."""
    if image.mode.startswith("I;16"):
        return 0.0, 65535.0
    if image.mode == "I":
        # 16-bit files open as "I" too: scale their full range rather than clip at 255.
        return 0.0, 65535.0 if image.getextrema()[1] > 255 else 255.0
    low, high, rows = np.inf, -np.inf, _strip_rows(image)
    for top in range(0, image.height, rows):
        pixels = np.nan_to_num(np.asarray(_strip(image, top, rows), dtype=np.float64))
        low, high = min(low, float(pixels.min())), max(high, float(pixels.max()))
    if 0.0 <= low and high <= 1.0:  # the usual convention for float images
        return 0.0, 1.0
    return low, high


def _to_eight_bit(strip: Image.Image, low: float, high: float) -> Image.Image:
    pixels = np.nan_to_num(np.asarray(strip, dtype=np.float64))
    if high <= low:
        return Image.fromarray(np.zeros(pixels.shape, np.uint8))
    return Image.fromarray(np.clip((pixels - low) / (high - low) * 255.0, 0, 255).astype(np.uint8))


def _strip_rows(image: Image.Image, factor: int = 1) -> int:
    return max(1, STRIP_PIXELS // (image.width * factor)) * factor


def _strip(image: Image.Image, top: int, rows: int) -> Image.Image:
    return image.crop((0, top, image.width, min(image.height, top + rows)))


def _by_strips(image: Image.Image, convert, factor: int = 1) -> Image.Image:
    """``convert`` applied to ``image`` strip by strip, each strip reduced by ``factor`` (box average).

    Only one strip is converted at a time, so the picture costs its own
    buffer and a strip's, never a second full-size copy.
    """
    rows = _strip_rows(image, factor)
    whole = None
    for top in range(0, image.height, rows):
        part = convert(_strip(image, top, rows))
        if factor > 1:
            part = part.reduce(factor)
        if whole is None:
            whole = Image.new(part.mode, (-(-image.width // factor), -(-image.height // factor)))
        whole.paste(part, (0, top // factor))
    return whole


def _shrink(image: Image.Image, factor: int) -> Image.Image:
    """``image`` reduced by a whole ``factor`` before any conversion of its full size."""
    if image.mode in DEEP_MODES:
        low, high = _eight_bit_range(image)
        return _by_strips(image, lambda strip: _to_eight_bit(strip, low, high), factor)
    if image.mode in REDUCIBLE_MODES:
        return _by_strips(image, lambda strip: strip, factor)
    wide_mode = "RGBA" if _has_alpha(image) else "RGB"
    return _by_strips(image, lambda strip: strip.convert(wide_mode), factor)


def _bytes_per_pixel(mode: str) -> int:
    """What Pillow allocates a pixel of ``mode`` (multi-band modes take 4 bytes)."""
    return {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}.get(mode, 4)


def _conversion_bytes(image: Image.Image, pixels: int) -> int:
    """What ``_to_rgb`` allocates for a picture of ``pixels`` pixels in ``image``'s mode."""
    if image.mode == "RGB":
        return 0
    eight_bit = pixels if image.mode in DEEP_MODES else 0
    if _has_alpha(image):  # a canvas, the RGBA picture (unless it is one), the composite, RGB
        return eight_bit + 4 * pixels * (3 if image.mode == "RGBA" else 4)
    return eight_bit + 4 * pixels


def _decode_plan(image: Image.Image, draft_px: int | None) -> tuple[int, int]:
    """(shrink factor, bytes the decode will allocate) for an opened, not yet loaded picture."""
    width, height = image.size
    # Pillow's WebP decoder hands over a finished copy of the picture, which is then copied in.
    decoded = width * height * _bytes_per_pixel(image.mode) * (2 if image.format == "WEBP" else 1)
    as_is = decoded + _conversion_bytes(image, width * height)
    factor = min(width, height) // (2 * draft_px) if draft_px else 1
    if factor < 2 or as_is - decoded <= SHRINK_ABOVE_BYTES:
        return 1, as_is
    small = -(-width // factor) * -(-height // factor)
    strip = 32 * STRIP_PIXELS  # a strip, its conversion (float64 for deep modes) and temporaries
    return factor, decoded + strip + 4 * small + _conversion_bytes(image, small)


def _unidentified(path: Path) -> UnreadableImage:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS and not HEIF_PLUGIN:
        return UnreadableImage(
            "unsupported format", "HEIC/AVIF needs the pillow-heif plugin: pip install -e '.[heif]'"
        )
    return UnreadableImage("not an image", "Pillow cannot identify it")


def _decode(
    handle: BinaryIO,
    draft_px: int | None,
    max_pixels: int,
    max_bytes: int,
    background: tuple[int, int, int],
) -> tuple[Image.Image, tuple[int, int]]:
    """The picture in the open file ``handle``, as ``open_image`` promises.

    ``image`` is the only reference to each stage of the picture, so that each
    is freed as soon as the next is made.
    """
    image = Image.open(handle)
    width, height = image.size
    if width * height > max_pixels:
        raise UnreadableImage("too large", f"{width} x {height} pixels is over the limit of {max_pixels}")
    if min(width, height) < MIN_SIDE_PX:
        raise UnreadableImage("too small", f"{width} x {height} pixels")
    if draft_px:
        image.draft("RGB", (draft_px, draft_px))
    factor, cost = _decode_plan(image, draft_px)
    if cost > max_bytes:
        raise UnreadableImage(
            "too large",
            f"decoding {width} x {height} pixels ({image.mode}) would take {cost / 2**20:,.0f} MB, "
            f"over the limit of {max_bytes / 2**20:,.0f} MB",
        )
    try:
        with _LARGE_DECODE if cost > LARGE_DECODE_BYTES else contextlib.nullcontext():
            image.load()
            try:
                orientation = int(image.getexif().get(ORIENTATION_TAG, 1))
            except Exception:  # a broken EXIF block must not cost the picture
                orientation = 1
            if factor > 1:
                image = _shrink(image, factor)
            # Converting before turning gives the same pixels; the turn then copies 8-bit RGB.
            image = _to_rgb(image, background)
            if orientation in UPRIGHT:
                image = image.transpose(UPRIGHT[orientation])
    except MemoryError:
        raise UnreadableImage("too large", f"out of memory decoding {width} x {height} pixels") from None
    turned = orientation in (5, 6, 7, 8)
    return image, (height, width) if turned else (width, height)


def open_image(
    path: Path,
    *,
    draft_px: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode one image to RGB, upright. Returns it and its upright pixel size.

    The header is checked before any pixel is decoded, so a file that claims
    more than ``max_pixels``, or whose decoding would allocate more than
    ``max_bytes``, costs no memory. ``draft_px`` lets decoding skip detail that
    will be thrown away (both sides stay at least that large): JPEG decodes at
    a fraction of its size, and a picture whose conversion would copy hundreds
    of megabytes is shrunk first. Animated files give their first frame.
    """
    path = Path(path)
    try:
        if os.stat(path).st_size == 0:
            raise UnreadableImage("empty", "zero bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Our own handle, not Image.open(path): closing that image would free the pixels
            # returned, and copying them first would double what a large picture costs.
            with open(path, "rb") as handle:
                return _decode(handle, draft_px, max_pixels, max_bytes, background)
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


#: What gridtsne writes into every picture it makes (EXIF or PNG "Software"), so that it
#: can tell a mosaic of its own, even one it lost track of, from a photo of the user's.
SOFTWARE_TAG = "gridtsne"
#: The EXIF tag "Software".
SOFTWARE_EXIF_TAG = 0x0131


def made_by_gridtsne(image: Image.Image) -> bool:
    """Whether an opened picture carries gridtsne's "Software" mark (its mosaics do)."""
    software = image.info.get("Software") or image.getexif().get(SOFTWARE_EXIF_TAG) or ""
    return str(software).startswith(SOFTWARE_TAG)


def photo_reason(path: str | os.PathLike, photos: Iterable[str | os.PathLike] = ()) -> str | None:
    """Why the existing file at ``path`` must be taken for one of the user's photos, or None.

    A file is a photo when Pillow reads it as a picture that gridtsne did not
    make, or when it has the extension of a photo named in ``photos`` (a
    damaged photo is still a photo). ``--overwrite`` never reaches past this.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # absent, a link, a pipe: may_write decides
            return None
    except OSError:
        return None
    try:
        with Image.open(path) as image:
            if made_by_gridtsne(image):
                return None
            return f"is a {image.format} picture that gridtsne did not make"
    except Exception:  # not a picture Pillow reads: judged by its name
        pass
    named = {Path(photo).suffix.lower() for photo in photos if not Path(photo).is_dir()}
    if path.suffix.lower() in named - {""}:
        return f"has the extension of the photos ({path.suffix})"
    return None
