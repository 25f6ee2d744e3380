"""Stage 4, render: paste a thumbnail of every image into its grid cell.

Tiles keep their aspect ratio: by default each photo is centre-cropped to
fill its square tile ("crop"); "fit" shows the whole photo with margins in
the background colour. The canvas is exactly rows x cols tiles, so every
tile lies fully inside the picture.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageColor, ImageOps
from tqdm import tqdm

from gridtsne import assign
from gridtsne import images as imagelib
from gridtsne.workdir import GRID, IMAGES, StageError, Workdir, atomic_write, file_hash

STAGE = "render"

#: Output format by file extension, with the largest side each format allows.
FORMATS = {
    ".jpg": ("JPEG", 65_500),
    ".jpeg": ("JPEG", 65_500),
    ".png": ("PNG", 2**31 - 1),
    ".webp": ("WEBP", 16_383),
}
FITS = ("crop", "fit")
DEFAULT_TILE_PX = 128


def output_format(path: str | os.PathLike) -> tuple[str, int]:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise StageError(
            f"cannot tell the image format of {path}: end its name in one of {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def parse_colour(text: str) -> tuple[int, int, int]:
    """A Pillow colour name or hex code (``white``, ``#202020``) -> RGB."""
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a colour: use a name like 'black' or a code like '#202020'"
        ) from None


def make_tile(image: Image.Image, tile_px: int, fit: str, background: tuple[int, int, int]) -> Image.Image:
    """A tile_px x tile_px thumbnail that keeps the photo's aspect ratio."""
    if fit == "crop":
        return ImageOps.fit(image, (tile_px, tile_px), Image.LANCZOS)
    thumbnail = ImageOps.contain(image, (tile_px, tile_px), Image.LANCZOS)
    tile = Image.new("RGB", (tile_px, tile_px), background)
    tile.paste(thumbnail, ((tile_px - thumbnail.width) // 2, (tile_px - thumbnail.height) // 2))
    return tile


def compose(
    tiles: Iterable[tuple[int, Image.Image]],
    rows: int,
    cols: int,
    tile_px: int,
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Paste (cell index, tile) pairs onto a rows x cols canvas, row-major."""
    canvas = Image.new("RGB", (cols * tile_px, rows * tile_px), background)
    for cell, tile in tiles:
        row, col = divmod(int(cell), cols)
        canvas.paste(tile, (col * tile_px, row * tile_px))
    return canvas


def parameters(output: Path, tile_px: int, background: str, fit: str, quality: int) -> dict:
    return {"output": str(Path(output).absolute()), "tile_px": tile_px,
            "background": list(parse_colour(background)), "fit": fit, "quality": quality}


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
    quality: int = 90,
    jobs: int | None = None,
    progress: bool = True,
    skip_if_fresh: bool = False,
) -> dict:
    started = time.perf_counter()
    output = Path(output).absolute()
    image_format, largest_side = output_format(output)
    params = parameters(output, tile_px, background, fit, quality)
    inputs = current_inputs(workdir)
    if skip_if_fresh and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary

    listing = workdir.load_images()["images"]
    cell_of_image, rows, cols = assign.grid_of(workdir, len(listing))
    if max(rows, cols) * tile_px > largest_side:
        raise StageError(
            f"a {rows}x{cols} grid of {tile_px} px tiles is too large for {image_format} "
            f"(at most {largest_side} px a side): use a smaller --tile or another format"
        )
    colour = tuple(params["background"])
    unreadable: list[dict] = []

    def tile_of(index: int) -> tuple[int, Image.Image | None]:
        path = Path(listing[index]["path"])
        try:
            image, _ = imagelib.open_image(path, draft_px=tile_px)
        except imagelib.UnreadableImage as error:
            unreadable.append({"path": str(path), "reason": str(error)})
            return int(cell_of_image[index]), None
        return int(cell_of_image[index]), make_tile(image, tile_px, fit, colour)

    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        placed = [index for index in range(len(listing)) if cell_of_image[index] >= 0]  # -1: left out
        tiles = tqdm(pool.map(tile_of, placed), total=len(placed), unit="img",
                     desc="render", disable=None if progress else True, file=sys.stderr)
        canvas = compose(((cell, tile) for cell, tile in tiles if tile is not None),
                         rows, cols, tile_px, colour)

    save_options = {"quality": quality} if image_format in ("JPEG", "WEBP") else {}
    atomic_write(output, lambda handle: canvas.save(handle, format=image_format, **save_options))
    results = {
        "output": str(output),
        "width": canvas.width,
        "height": canvas.height,
        "tiles": len(placed) - len(unreadable),
        "unreadable": unreadable,
    }
    return workdir.finish_stage(STAGE, params, inputs, {"output": output}, started, results)
