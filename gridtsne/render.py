"""Stage 4, render: the mosaic, as one picture or as a zoomable web page.

The picture is made row by row (``Mosaic.strips``): the tiles of one grid row
are made in parallel (``tiles.py``), pasted into a strip the width of the
picture, and the strip is handed to the output writer, so memory holds a few
rows of tiles, not the whole collection.

What is written is one choice behind one name, resolved in one place
(``resolve_writer``): a format name, or "auto" to take it from OUT's
extension. Each writer has the same two methods: ``check`` (can this format
hold a picture this large?) and ``save``. PNG is encoded strip by strip as
the rows arrive; JPEG, WebP and TIFF are encoded by Pillow from the whole
picture in memory; "html" writes a folder with a tile pyramid (``web.py``).
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageColor
from tqdm import tqdm

from gridtsne import assign, tiles
from gridtsne.workdir import GRID, IMAGES, StageError, Workdir, atomic_write, file_hash

STAGE = "render"
DEFAULT_TILE_PX = 128
FITS = tuple(tiles.FITS)
STDOUT = "-"


def parse_colour(text: str) -> tuple[int, int, int]:
    """A Pillow colour name or hex code (``white``, ``#202020``) -> RGB."""
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a colour: use a name like 'black' or a code like '#202020'"
        ) from None


def grid_size_px(rows: int, cols: int, tile_px: int, gap_px: int = 0) -> tuple[int, int]:
    """(width, height) of a grid of tiles with ``gap_px`` between them (not around them)."""
    return cols * tile_px + (cols - 1) * gap_px, rows * tile_px + (rows - 1) * gap_px


class Mosaic:
    """The picture to draw: which photo goes in which cell, and how tiles look.

    ``strips()`` makes it top to bottom; ``unreadable`` lists the photos that
    could not be read this time (their cells show the background).
    """

    def __init__(
        self,
        entries: list[dict],
        cell_of_image: np.ndarray,
        rows: int,
        cols: int,
        *,
        tile_maker: tiles.Tiles,
        gap_px: int = 0,
        background: tuple[int, int, int] = (0, 0, 0),
        jobs: int = 1,
        progress: bool = False,
    ):
        self.entries = entries
        self.cell_of_image = np.asarray(cell_of_image)
        self.rows, self.cols = rows, cols
        self.tiles = tile_maker
        self.tile_px = tile_maker.tile_px
        self.gap_px = gap_px
        self.pitch_px = self.tile_px + gap_px
        self.background = background
        self.jobs = jobs
        self.progress = progress
        self.width, self.height = grid_size_px(rows, cols, self.tile_px, gap_px)
        self.unreadable: list[dict] = []

    def image_at(self) -> list[int | None]:
        """The image index in each cell, row-major; None for an empty cell."""
        at: list[int | None] = [None] * (self.rows * self.cols)
        for index, cell in enumerate(self.cell_of_image.tolist()):
            if cell >= 0:  # -1: left out of the grid by assign --subset
                at[cell] = index
        return at

    @property
    def placed(self) -> int:
        """How many photos have a cell (all, unless assign --subset left some out)."""
        return int((self.cell_of_image >= 0).sum())

    def _grid_rows(self) -> Iterator[Image.Image]:
        """One full-width image per grid row, tile_px high, top to bottom."""
        by_cell = np.argsort(self.cell_of_image, kind="stable")
        order = by_cell[self.cell_of_image[by_cell] >= 0].tolist()  # -1: left out by assign --subset
        made = tiles.in_order(self.tiles, self.entries, order, self.jobs)
        bar = tqdm(
            made,
            total=len(order),
            unit="img",
            desc="render",
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        self.unreadable = []

        def blank_row() -> Image.Image:
            return Image.new("RGB", (self.width, self.tile_px), self.background)

        row_image, row_now = blank_row(), 0
        for index, tile, reason in bar:
            row, col = divmod(int(self.cell_of_image[index]), self.cols)
            while row_now < row:
                yield row_image
                row_image, row_now = blank_row(), row_now + 1
            if tile is None:
                self.unreadable.append({"path": self.entries[index]["path"], "reason": reason})
                continue
            # A "pad" tile is smaller than tile_px on one side: centre it on the background.
            row_image.paste(
                tile,
                (col * self.pitch_px + (self.tile_px - tile.width) // 2, (self.tile_px - tile.height) // 2),
            )
        yield row_image
        for _ in range(row_now + 1, self.rows):
            yield blank_row()

    def _pieces(self) -> Iterator[Image.Image]:
        gap = Image.new("RGB", (self.width, self.gap_px), self.background) if self.gap_px else None
        for row, row_image in enumerate(self._grid_rows()):
            yield row_image
            if gap is not None and row < self.rows - 1:
                yield gap

    def strips(self, height_px: int | None = None) -> Iterator[Image.Image]:
        """The picture as horizontal strips, top to bottom, each ``height_px`` high
        (the last may be lower); by default each grid row and each gap as they come."""
        if height_px is None:
            yield from self._pieces()
            return
        strip, filled = Image.new("RGB", (self.width, height_px), self.background), 0
        for piece in self._pieces():
            taken = 0
            while taken < piece.height:
                take = min(piece.height - taken, height_px - filled)
                strip.paste(piece.crop((0, taken, self.width, taken + take)), (0, filled))
                taken, filled = taken + take, filled + take
                if filled == height_px:
                    yield strip
                    strip, filled = Image.new("RGB", (self.width, height_px), self.background), 0
        if filled:
            yield strip.crop((0, 0, self.width, filled))

    def picture(self) -> Image.Image:
        """The whole picture in memory (for formats Pillow must encode in one go)."""
        canvas = Image.new("RGB", (self.width, self.height), self.background)
        top = 0
        for strip in self.strips():
            canvas.paste(strip, (0, top))
            top += strip.height
        return canvas


def _to(destination: Path | BinaryIO, write: Callable[[BinaryIO], None], name: str = "output") -> dict:
    """Write to a stream as is, or to a file atomically; the files written, for the manifest."""
    if isinstance(destination, Path):
        atomic_write(destination, write)
        return {name: destination}
    write(destination)
    destination.flush()
    return {}


def _too_large(name: str, width: int, height: int, limit: str) -> StageError:
    return StageError(
        f"a {width} x {height} px mosaic is too large for one {name} file ({limit}): use a smaller "
        "--tile, a .png (written strip by strip, up to 2,147,483,647 px a side), or a .html page "
        "(a zoomable tile pyramid, for any size)"
    )


def available_memory_bytes() -> int | None:
    """Memory this machine has free now (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PillowWriter:
    """JPEG, WebP, TIFF: Pillow encodes the whole picture, so it is built in memory first."""

    #: Pillow keeps an RGB picture at 4 bytes a pixel.
    BYTES_PER_PIXEL = 4

    def __init__(self, name: str, pil_format: str, largest_side: int, save_options: dict):
        self.name, self.pil_format = name, pil_format
        self.largest_side, self.save_options = largest_side, save_options

    def check(self, width: int, height: int) -> None:
        if max(width, height) > self.largest_side:
            raise _too_large(self.name.upper(), width, height, f"at most {self.largest_side:,} px a side")
        if self.pil_format == "TIFF" and width * height * 3 >= 2**32:
            raise _too_large("TIFF", width, height, "classic TIFF files end at 4 GiB")
        needed, available = width * height * self.BYTES_PER_PIXEL, available_memory_bytes()
        # Refuse now rather than be killed for memory after minutes of decoding photos.
        if available is not None and needed > 0.8 * available:
            raise _too_large(
                self.name.upper(),
                width,
                height,
                f"it must be held in memory to be encoded: {needed / 2**30:.1f} GiB, "
                f"and {available / 2**30:.1f} GiB are free",
            )

    def save(self, mosaic: Mosaic, destination: Path | BinaryIO) -> dict:
        picture = mosaic.picture()
        return _to(
            destination, lambda handle: picture.save(handle, format=self.pil_format, **self.save_options)
        )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def paeth_filtered(pixels: np.ndarray, above: np.ndarray) -> bytes:
    """PNG scanlines with the Paeth filter (type 4); ``above`` is the row before the first."""
    raw = pixels.astype(np.int16)
    up = np.concatenate([above.astype(np.int16)[None], raw[:-1]])
    left = np.zeros_like(raw)
    left[:, 3:] = raw[:, :-3]
    up_left = np.zeros_like(raw)
    up_left[:, 3:] = up[:, :-3]
    estimate = left + up - up_left
    to_left, to_up, to_up_left = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - up_left)
    predicted = np.where(
        (to_left <= to_up) & (to_left <= to_up_left), left, np.where(to_up <= to_up_left, up, up_left)
    )
    filtered = ((raw - predicted) & 0xFF).astype(np.uint8)
    lines = np.empty((len(pixels), filtered.shape[1] + 1), dtype=np.uint8)
    lines[:, 0] = 4
    lines[:, 1:] = filtered
    return lines.tobytes()


class PngWriter:
    """PNG, encoded strip by strip as the rows are made: memory holds one row of tiles."""

    name = "png"
    largest_side = 2**31 - 1

    def __init__(self, compress_level: int = 6):
        self.compress_level = compress_level

    def check(self, width: int, height: int) -> None:
        if max(width, height) > self.largest_side:
            raise StageError(f"a {width} x {height} px mosaic is too large even for PNG: use a .html page")

    def save(self, mosaic: Mosaic, destination: Path | BinaryIO) -> dict:
        return _to(
            destination, lambda handle: self.write(mosaic.width, mosaic.height, mosaic.strips(), handle)
        )

    def write(self, width: int, height: int, strips, handle: BinaryIO) -> None:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        compressor = zlib.compressobj(self.compress_level)
        above = np.zeros(width * 3, dtype=np.uint8)
        for strip in strips:
            pixels = np.asarray(strip, dtype=np.uint8).reshape(strip.height, width * 3)
            data = compressor.compress(paeth_filtered(pixels, above))
            above = pixels[-1]
            if data:
                handle.write(_png_chunk(b"IDAT", data))
        handle.write(_png_chunk(b"IDAT", compressor.flush()))
        handle.write(_png_chunk(b"IEND", b""))


def _web_writer(quality: int):
    from gridtsne import web

    return web.WebWriter(quality=quality)


#: Every output format: its name -> a function of the quality that makes its writer.
WRITERS: dict[str, Callable[[int], object]] = {
    "jpeg": lambda quality: PillowWriter("jpeg", "JPEG", 65_500, {"quality": quality}),
    "png": lambda quality: PngWriter(),
    "webp": lambda quality: PillowWriter("webp", "WEBP", 16_383, {"quality": quality}),
    "tiff": lambda quality: PillowWriter("tiff", "TIFF", 2**31 - 1, {"compression": "tiff_adobe_deflate"}),
    "html": _web_writer,
}
EXTENSIONS = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".html": "html",
    ".htm": "html",
}
FORMATS = ("auto", *WRITERS)


def format_of(output: str | os.PathLike, image_format: str = "auto") -> str:
    """The format name for OUT: ``image_format`` unless "auto", else from the extension."""
    if image_format != "auto":
        if image_format not in WRITERS:
            raise StageError(f"unknown format {image_format!r}: use one of {', '.join(WRITERS)}")
        if str(output) == STDOUT and image_format == "html":
            raise StageError("a web page is a folder and cannot go to stdout: name a .html file")
        return image_format
    if str(output) == STDOUT:
        raise StageError("writing to stdout (-) needs --format: png, jpeg, webp or tiff")
    suffix = Path(output).suffix.lower()
    if suffix not in EXTENSIONS:
        raise StageError(
            f"cannot tell the format of {output}: end its name in one of {', '.join(EXTENSIONS)} "
            "or give --format"
        )
    return EXTENSIONS[suffix]


def resolve_writer(output: str | os.PathLike, image_format: str = "auto", quality: int = 90):
    """The writer for OUT: the one place where a format name becomes an object."""
    return WRITERS[format_of(output, image_format)](quality)


def paths_written(output: str | os.PathLike, image_format: str = "auto") -> list[Path]:
    """What a render to ``output`` writes (a file, or a page's folder), so that `all` never
    embeds it as photos when it lies inside the photo folder."""
    if str(output) == STDOUT:
        return []
    if format_of(output, image_format) == "html":
        from gridtsne import web

        return [web.page_folder(output)]
    return [Path(output)]


def parameters(
    output: str | Path, image_format: str, tile_px: int, background: str, fit: str, gap_px: int, quality: int
) -> dict:
    return {
        "output": output if output == STDOUT else str(Path(output).absolute()),
        "format": image_format,
        "tile_px": tile_px,
        "background": list(parse_colour(background)),
        "fit": fit,
        "gap_px": gap_px,
        "quality": quality,
    }


def current_inputs(workdir: Workdir) -> dict:
    manifest = workdir.read_manifest("assign") or {}
    return {
        IMAGES: file_hash(workdir.require(IMAGES)),
        GRID: file_hash(workdir.require(GRID)),
        "grid_shape": [manifest.get("results", {}).get(k) for k in ("rows", "cols")],
    }


def run(
    workdir: Workdir,
    output: str | os.PathLike,
    *,
    tile_px: int = DEFAULT_TILE_PX,
    background: str = "black",
    fit: str = "crop",
    gap_px: int = 0,
    quality: int = 90,
    image_format: str = "auto",
    jobs: int | None = None,
    progress: bool = True,
    skip_if_fresh: bool = False,
    stdout: BinaryIO | None = None,
) -> dict:
    """Render to OUT (a path, or "-" for ``stdout``), unless it is fresh and ``skip_if_fresh``."""
    started = time.perf_counter()
    to_stdout = str(output) == STDOUT
    name = format_of(output, image_format)
    writer = WRITERS[name](quality)
    output = STDOUT if to_stdout else Path(output).absolute()
    params = parameters(output, name, tile_px, background, fit, gap_px, quality)
    inputs = current_inputs(workdir)
    # Bytes sent to a pipe are gone: a render to stdout always runs.
    if skip_if_fresh and not to_stdout and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary

    listing = workdir.load_images()["images"]
    cell_of_image, rows, cols = assign.grid_of(workdir, len(listing))
    tile_maker = tiles.Tiles(workdir.path, tile_px, fit)
    mosaic = Mosaic(
        listing,
        cell_of_image,
        rows,
        cols,
        tile_maker=tile_maker,
        gap_px=gap_px,
        background=tuple(params["background"]),
        jobs=jobs or min(4, os.cpu_count() or 1),
        progress=progress,
    )
    writer.check(mosaic.width, mosaic.height)
    outputs = writer.save(mosaic, stdout if to_stdout else output)
    results = {
        "output": str(outputs.get("page", output)),
        "format": name,
        "width": mosaic.width,
        "height": mosaic.height,
        "tiles": mosaic.placed - len(mosaic.unreadable),
        "decoded": tile_maker.decoded,
        "from_cache": tile_maker.cached,
        "unreadable": mosaic.unreadable,
    }
    return workdir.finish_stage(STAGE, params, inputs, outputs, started, results)
