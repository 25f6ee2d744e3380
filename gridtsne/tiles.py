"""Tiles: one thumbnail per photo at the size a render needs, and their cache.

A tile is made from the source file at the size needed (JPEG ``draft``
decoding plus Pillow's ``reducing_gap``, so a 4000 px photo is never decoded
at full size for a 32 px tile) and cached in the work directory, keyed by the
photo's content hash from ``images.json``, the tile size and the fit. A new
layout at the same tile size therefore decodes no photo again.

How a photo fills its square tile is a choice among a few small functions
behind one name (``FITS``). "pad" tiles are made and cached without their
margins (the mosaic centres them on its background), so the background colour
can change without remaking them.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from gridtsne import images as imagelib

#: Where tiles are cached, inside the work directory.
CACHE_DIRNAME = "thumbs"

#: Cached tiles are JPEG at this quality with full-resolution colour: no visible loss, a few KB each.
CACHE_QUALITY = 95


def _crop(image: Image.Image, tile_px: int) -> Image.Image:
    """Centre-crop to a square, then scale: fills the tile, cuts the long side's edges."""
    side = min(image.size)
    left, top = (image.width - side) / 2, (image.height - side) / 2
    return image.resize(
        (tile_px, tile_px), Image.LANCZOS, box=(left, top, left + side, top + side), reducing_gap=2.0
    )


def _pad(image: Image.Image, tile_px: int) -> Image.Image:
    """The whole photo, its long side tile_px; the margins are added when it is pasted."""
    scale = tile_px / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.LANCZOS, reducing_gap=2.0)


def _stretch(image: Image.Image, tile_px: int) -> Image.Image:
    """The whole photo squeezed to a square: no margins, the aspect ratio is lost."""
    return image.resize((tile_px, tile_px), Image.LANCZOS, reducing_gap=2.0)


FITS = {"crop": _crop, "pad": _pad, "stretch": _stretch}


def make_tile(image: Image.Image, tile_px: int, fit: str) -> Image.Image:
    """The tile of one decoded photo: tile_px square, or for "pad" at most that."""
    return FITS[fit](image, tile_px)


class Tiles:
    """Makes the tiles of one render, from the cache when it has them."""

    def __init__(self, cache_root: Path | None, tile_px: int, fit: str):
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
        self.tile_px = tile_px
        self.fit = fit
        self.folder = cache_root / CACHE_DIRNAME / f"{tile_px}px-{fit}" if cache_root else None
        self.decoded = 0  # photos decoded this run
        self.cached = 0  # tiles read from the cache
        self._count_lock = threading.Lock()

    def _cache_path(self, entry: dict) -> Path | None:
        sha = entry.get("sha256")
        if self.folder is None or not sha:
            return None
        # JPEG inside, but not named .jpg: a work directory inside the photo folder
        # must not have its cache taken for photos by the next embed.
        return self.folder / sha[:2] / f"{sha}.tile"

    def tile(self, entry: dict) -> Image.Image:
        """The tile of one ``images.json`` entry; raises ``UnreadableImage``.

        The cache is used only while the photo is still there, its size unchanged:
        a photo gone since embed is reported, not drawn from memory.
        """
        try:
            unchanged = Path(entry["path"]).stat().st_size == entry.get("bytes")
        except OSError:
            unchanged = False  # open_image below says why
        cached = self._cache_path(entry) if unchanged else None
        if cached is not None:
            try:
                with Image.open(cached) as image:
                    tile = image.convert("RGB")
                with self._count_lock:
                    self.cached += 1
                return tile
            except (OSError, ValueError, SyntaxError):
                pass  # not cached yet, or a damaged entry: make it again
        image, _ = imagelib.open_image(Path(entry["path"]), draft_px=self.tile_px)
        tile = make_tile(image, self.tile_px, self.fit)
        with self._count_lock:
            self.decoded += 1
        if cached is not None:
            self._store(cached, tile)
        return tile

    @staticmethod
    def _store(path: Path, tile: Image.Image) -> None:
        # A cache entry, not an artifact: rename for atomicity, but no fsync per tile.
        buffer = io.BytesIO()
        tile.save(buffer, format="JPEG", quality=CACHE_QUALITY, subsampling=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(buffer)}.tmp")
        try:
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs the cache, not the render
            with contextlib.suppress(OSError):
                tmp.unlink()


def in_order(
    tiles: Tiles, entries: list[dict], order: list[int], jobs: int
) -> Iterator[tuple[int, Image.Image | None, str | None]]:
    """(index, tile or None, reason) for each image index in ``order``, made in parallel.

    At most a few hundred tiles are in flight or waiting at any time, so memory
    stays bounded however many photos there are.
    """

    def make(index: int) -> tuple[int, Image.Image | None, str | None]:
        try:
            return index, tiles.tile(entries[index]), None
        except imagelib.UnreadableImage as error:
            return index, None, str(error)

    window = max(64, 32 * jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: deque = deque()
        for index in order:
            pending.append(pool.submit(make, index))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
