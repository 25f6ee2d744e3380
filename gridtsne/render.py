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

import hashlib
import json
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from gridtsne import __version__, assign, images, tiles
from gridtsne.errors import OptionError, OptionMismatch, StageError
from gridtsne.options import RenderOptions, parse_colour
from gridtsne.stage import Context, Plan, Stage
from gridtsne.workdir import EMBEDDINGS, GRID, IMAGES, Workdir, atomic_write, file_hash

STDOUT = "-"


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
        cluster: str | None = None,
        on_progress=lambda fraction: None,
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
        self.cluster = cluster
        self.on_progress = on_progress
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
        if self.cluster:  # tiles made on a Dask cluster (imported only then)
            from gridtsne import cluster

            made = cluster.tiles_in_order(self.tiles, self.entries, order, self.jobs, self.cluster)
        else:
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
        for done, (index, tile, reason) in enumerate(bar, start=1):
            if done % 64 == 0:
                self.on_progress(done / len(order))
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


def _too_large(name: str, width: int, height: int, limit: str) -> OptionMismatch:
    return OptionMismatch(
        "tile",
        f"a {width} x {height} px mosaic is too large for one {name} file ({limit}): use a smaller "
        "{tile}, a .png (written strip by strip, up to 2,147,483,647 px a side), or a .html page "
        "(a zoomable tile pyramid, for any size)",
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


#: Bytes a render holds per pixel of one full-width strip: the row of tiles being pasted,
#: the strip handed to the writer, and the writer's own copy of it.
STRIP_BYTES_PER_PIXEL = 12
#: The tallest strip a writer asks for (the web page's pyramid tiles).
TALLEST_STRIP_PX = 256


def check_strip_memory(mosaic: Mosaic) -> None:
    """Refuse, before any photo is decoded, a mosaic whose rows alone would not fit in memory
    (a huge --tile or --gap on many columns): memory holds a few full-width strips at once."""
    strip_px = mosaic.width * max(mosaic.pitch_px, TALLEST_STRIP_PX)
    needed, available = strip_px * STRIP_BYTES_PER_PIXEL, available_memory_bytes()
    if available is not None and needed > 0.5 * available:
        raise OptionMismatch(
            "tile",
            f"one row of the {mosaic.width:,} px wide mosaic needs {needed / 2**30:.1f} GiB of memory "
            f"and {available / 2**30:.1f} GiB are free: use a smaller {{tile}} or {{gap}}, or a taller "
            "{aspect}",
        )


#: The "Software" mark of every picture render makes (``images.made_by_gridtsne``).
SOFTWARE = f"{images.SOFTWARE_TAG} {__version__}"


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
        mark = Image.Exif()
        mark[images.SOFTWARE_EXIF_TAG] = SOFTWARE
        return _to(
            destination,
            lambda handle: picture.save(handle, format=self.pil_format, exif=mark, **self.save_options),
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
    #: Samples (pixels x 3) filtered in one go.
    FILTER_SAMPLES = 1 << 20

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
        handle.write(_png_chunk(b"tEXt", b"Software\0" + SOFTWARE.encode("latin-1")))
        compressor = zlib.compressobj(self.compress_level)
        above = np.zeros(width * 3, dtype=np.uint8)
        # The filter makes a dozen temporary copies: a few rows at a time keeps them small.
        rows_at_once = max(1, self.FILTER_SAMPLES // (width * 3))
        for strip in strips:
            pixels = np.asarray(strip, dtype=np.uint8).reshape(strip.height, width * 3)
            for start in range(0, len(pixels), rows_at_once):
                rows = pixels[start : start + rows_at_once]
                data = compressor.compress(paeth_filtered(rows, above))
                above = rows[-1]
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


def format_of(output: str | os.PathLike, image_format: str = "auto") -> str:
    """The format name for OUT: ``image_format`` unless "auto", else from the extension."""
    if image_format != "auto":
        if image_format not in WRITERS:
            raise OptionError("format", f"unknown format {image_format!r}: use one of {', '.join(WRITERS)}")
        if str(output) == STDOUT and image_format == "html":
            raise OptionError("format", "a web page is a folder and cannot go to stdout: name a .html file")
        return image_format
    if str(output) == STDOUT:
        raise OptionError("format", "writing to stdout (-) needs {format}: png, jpeg, webp or tiff")
    suffix = Path(output).suffix.lower()
    if suffix not in EXTENSIONS:
        raise OptionError(
            "output",
            f"cannot tell the format of {output}: end its name in one of {', '.join(EXTENSIONS)} "
            "or give {format}",
        )
    return EXTENSIONS[suffix]


def resolve_writer(output: str | os.PathLike, image_format: str = "auto", quality: int = 90):
    """The writer for OUT: the one place where a format name becomes an object."""
    return WRITERS[format_of(output, image_format)](quality)


def may_write_over(workdir: Workdir, output: Path, overwrite: bool, photos=()) -> None:
    """Refuse an output that is a photo, whatever ``overwrite`` says, then ask the work directory
    (which refuses a file gridtsne did not write unless ``overwrite``)."""
    reason = images.photo_reason(output, photos)
    if reason is not None:
        raise StageError(
            f"{output} already exists and {reason}. Did a shell glob take your last photo as the "
            "output? Name the output explicitly, last, as a new file (e.g. mosaic.jpg); "
            "gridtsne never writes over a photo"
        )
    workdir.may_write(output, overwrite)


def paths_written(output: str | os.PathLike, image_format: str = "auto") -> list[Path]:
    """What a render to ``output`` writes (a file, or a page's folder), so that `all` never
    embeds it as photos when it lies inside the photo folder."""
    if str(output) == STDOUT:
        return []
    if format_of(output, image_format) == "html":
        from gridtsne import web

        return [web.page_folder(output)]
    return [Path(output)]


class RenderStage(Stage):
    """``images.json`` and ``grid.npy`` -> the mosaic (a picture or a web page)."""

    name = "render"
    options_type = RenderOptions
    reads = (IMAGES, GRID)

    def plan(self, workdir: Workdir, options: RenderOptions) -> Plan:
        name = format_of(options.output, options.format)
        output = STDOUT if options.output == STDOUT else str(Path(options.output).absolute())
        parameters = {**options.freshness(), "output": output, "format": name}
        if isinstance(options.labels, str):
            parameters["labels"] = str(Path(options.labels).absolute())
        inputs = self.inputs(workdir, options)
        return Plan(parameters, inputs, page_keys(parameters, inputs) if self.is_page(options) else None)

    def inputs(self, workdir: Workdir, options: RenderOptions) -> dict:
        manifest = workdir.read_manifest("assign") or {"results": {}}
        inputs = {**super().inputs(workdir, options),
                  "grid_shape": [manifest["results"].get(k) for k in ("rows", "cols")]}  # fmt: skip
        if self.is_page(options) and workdir.file(EMBEDDINGS).is_file():  # the page's "more like this"
            inputs[EMBEDDINGS] = file_hash(workdir.file(EMBEDDINGS))
        if self.is_page(options) and isinstance(options.labels, str):  # a changed file: a new page
            try:
                inputs["labels"] = file_hash(Path(options.labels))
            except OSError as error:
                raise OptionMismatch(
                    "labels", f"{options.labels}: cannot read the labels file: {error.strerror or error}"
                ) from None
        return inputs

    @staticmethod
    def is_page(options: RenderOptions) -> bool:
        return options.output != STDOUT and format_of(options.output, options.format) == "html"

    def may_skip(self, options: RenderOptions) -> bool:
        return options.output != STDOUT  # bytes sent to a pipe are gone: a render to stdout always runs

    def outputs(self, workdir: Workdir, options: RenderOptions, results: dict) -> dict[str, Path]:
        if options.output == STDOUT:
            return {}
        if format_of(options.output, options.format) == "html":
            from gridtsne import web

            folder = web.page_folder(Path(options.output).absolute())
            return {"page": folder / "index.html", "data": folder / "data.js"}
        return {"output": Path(options.output).absolute()}

    def compute(self, workdir: Workdir, options: RenderOptions, context: Context, prepared) -> dict:
        to_stdout = options.output == STDOUT
        name = format_of(options.output, options.format)
        writer = resolve_writer(options.output, options.format, options.quality)
        if self.is_page(options):
            from gridtsne import web

            writer = web.WebWriter(options.quality, preview_px=options.preview, jobs=context.jobs,
                                   embeddings=workdir.file(EMBEDDINGS),
                                   neighbours_cache=workdir.file(web.NEIGHBOURS_CACHE))  # fmt: skip
            writer.key, writer.labels_key = prepared
        output = STDOUT if to_stdout else Path(options.output).absolute()
        listing = workdir.load_images()["images"]
        if self.is_page(options) and options.labels is not None:
            writer.labels = photo_labels(options.labels, [entry["path"] for entry in listing],
                                         context.on_message)  # fmt: skip
        self.check_destination(workdir, options, [entry["path"] for entry in listing])
        cell_of_image, rows, cols = assign.grid_of(workdir, len(listing))
        tile_maker = tiles.Tiles(workdir.path, options.tile, options.fit)
        mosaic = Mosaic(listing, cell_of_image, rows, cols, tile_maker=tile_maker, gap_px=options.gap,
                        background=parse_colour(options.background), jobs=context.jobs,
                        progress=context.progress, cluster=context.cluster,
                        on_progress=lambda done: context.on_progress("render", done))  # fmt: skip
        writer.check(mosaic.width, mosaic.height)
        check_strip_memory(mosaic)
        written = writer.save(mosaic, context.stdout if to_stdout else output)
        if "output" in written:
            workdir.remember_written([written["output"]])
        return {
            "output": str(written.get("page", output)),
            "format": name,
            "width": mosaic.width,
            "height": mosaic.height,
            "tiles": mosaic.placed - len(mosaic.unreadable),
            "decoded": tile_maker.decoded,
            "from_cache": tile_maker.cached,
            "unreadable": mosaic.unreadable,
            **({"labels_only": True} if written.get("labels_only") else {}),
        }

    def check_destination(self, workdir: Workdir, options: RenderOptions, photos=()) -> None:
        """Refuse, before any work, an output that is one of the photos or a file gridtsne did not
        write (a shell glob that left the output off makes the last photo the output).
        A web page's folder is checked by its writer, by the marker inside it."""
        if options.labels is not None and not self.is_page(options):
            raise OptionError("labels", "labels colour the web page: give a .html output")
        if options.output == STDOUT or format_of(options.output, options.format) == "html":
            return
        output = Path(options.output).absolute()
        if str(output) in {str(Path(photo).absolute()) for photo in photos}:
            raise StageError(f"{output} is one of the photos: name a new file as the output, last")
        may_write_over(workdir, output, options.overwrite, photos)

    def describe(self, summary: dict) -> str:
        if summary.get("labels_only"):
            return f"render: {summary['output']} (only the labels changed: data.js rewritten)"
        missing = f", {len(summary['unreadable'])} unreadable" if summary["unreadable"] else ""
        cached = f", {summary['from_cache']} from the tile cache" if summary.get("from_cache") else ""
        return (
            f"render: {summary['output']} ({summary['width']}x{summary['height']} px, "
            f"{summary['tiles']} tiles{cached}{missing})"
        )


def page_keys(parameters: dict, inputs: dict) -> tuple[str, str]:
    """Two digests of a web page: of what all but its labels are made from (render's parameters
    and inputs but the labels, and the version), and of its labels. A page whose first matches
    and second differs needs only a new data.js (``web.WebWriter``)."""

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    unlabelled = {kind: {name: value for name, value in values.items() if name != "labels"}
                  for kind, values in (("parameters", parameters), ("inputs", inputs))}  # fmt: skip
    labelled = [parameters.get("labels"), inputs.get("labels")]
    return digest({**unlabelled, "version": __version__}), digest(labelled)


#: Labelled paths that are no photo of the layout, named in the warning.
UNMATCHED_SHOWN = 3


def photo_labels(given, photo_paths: list[str], on_message) -> list[str]:
    """Each photo's label ("" for none) from a labels file or inline pairs; the labelled paths
    that are no photo of this layout are counted, with examples, in a warning."""
    from gridtsne import labels

    try:
        found = labels.read_csv(given) if isinstance(given, str) else labels.from_pairs(given)
    except labels.LabelsError as error:
        raise OptionMismatch("labels", str(error)) from None
    per_photo, unmatched = labels.match(found, photo_paths)
    if unmatched:
        examples = "; ".join(f"{entry.where}: {entry.path}" for entry in unmatched[:UNMATCHED_SHOWN])
        more = ", ..." if len(unmatched) > UNMATCHED_SHOWN else ""
        on_message(f"render: warning: {len(unmatched)} labelled path(s) are no photo of this layout "
                   f"and were left out ({examples}{more})")  # fmt: skip
    return per_photo


STAGE = RenderStage()


def run(
    workdir: Workdir,
    options: RenderOptions | dict | None = None,
    context: Context | None = None,
    *,
    skip_if_fresh: bool = False,
) -> dict:
    """Render to ``options.output`` (a path, or "-" for ``context.stdout``); returns a summary."""
    return STAGE.run(workdir, options, context, skip_if_fresh=skip_if_fresh)
