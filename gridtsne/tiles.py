"""Tiles: one thumbnail per photo at the size a render needs, and their cache.

A tile is made from the source file at the size needed (JPEG ``draft``
decoding plus Pillow's ``reducing_gap``, so a 4000 px photo is never decoded
at full size for a 32 px tile) and cached in the work directory, keyed by the
photo's content hash, the tile size and the fit. A new layout at the same tile
size therefore decodes no photo again.

The key is the content of the photo as it is now, as for the embedding cache:
a photo rewritten since embed, even at the same size, is drawn as it is now. A
cached tile records the (path, size, modification time) of the files it was
checked against, so an unchanged photo is not even read again. Tiles are
cached losslessly (PNG), so a render from the cache is the same picture, byte
for byte, as the render that filled it. A tile's modification time is the
last time a render used it, so ``prune_cache`` drops the least recently used.

How a photo fills its square tile is a choice among a few small functions
behind one name (``FITS``). "pad" tiles are made and cached without their
margins (the mosaic centres them on its background), so the background colour
can change without remaking them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, PngImagePlugin

from gridtsne import images as imagelib

#: Where tiles are cached, inside the work directory.
CACHE_DIRNAME = "thumbs"

#: Cached tiles are PNG, lossless; the lowest compression is the quickest and still halves the size.
CACHE_COMPRESS_LEVEL = 1

#: The PNG text entry that lists the [path, bytes, mtime_ns] of files known to have a tile's content.
STAMPS_KEY = "gridtsne-stamps"
#: How many such files one tile remembers (copies of one photo under several names).
MAX_STAMPS = 16


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

    def _cache_path(self, sha: str) -> Path:
        # PNG inside, but not named .png: a work directory inside the photo folder
        # must not have its cache taken for photos by the next embed.
        return self.folder / sha[:2] / f"{sha}.tile"

    def tile(self, entry: dict) -> Image.Image:
        """The tile of one ``images.json`` entry, as the photo is now; raises ``UnreadableImage``.

        A photo gone since embed is reported, not drawn from memory; one
        rewritten since is drawn as it is now.
        """
        path = Path(entry["path"])
        try:
            file_stat = os.stat(path)
        except OSError:
            file_stat = None  # open_image below says why
        if file_stat is not None and not stat.S_ISREG(file_stat.st_mode):  # a FIFO would block open()
            raise imagelib.UnreadableImage(
                "not a regular file", imagelib.describe_file_type(file_stat.st_mode)
            )
        if file_stat is None or self.folder is None:
            return self._make(path)
        stamp = [str(path), file_stat.st_size, file_stat.st_mtime_ns]
        sha_at_embed = entry.get("sha256")
        tile, stamps = None, []
        if sha_at_embed:
            tile, stamps = self._load(sha_at_embed)
            if tile is not None and stamp in stamps:  # this very file was checked before: not read again
                return self._count_cached(tile)
        sha = imagelib.content_hash(path)
        if sha != sha_at_embed:
            tile, stamps = self._load(sha)
        if tile is not None:
            if stamp not in stamps:
                self._store(sha, tile, stamps + [stamp])
            return self._count_cached(tile)
        tile = self._make(path)
        self._store(sha, tile, [stamp])
        return tile

    def cached_tile(self, entry: dict) -> Image.Image | None:
        """The cached tile of an ``images.json`` entry whose file is unchanged since it was
        checked against it, without reading the photo; else None (``--cluster`` makes it)."""
        try:
            file_stat = os.stat(entry["path"])
        except OSError:
            return None
        if self.folder is None or not entry.get("sha256"):
            return None
        tile, stamps = self._load(entry["sha256"])
        if tile is None or [str(entry["path"]), file_stat.st_size, file_stat.st_mtime_ns] not in stamps:
            return None
        return self._count_cached(tile)

    def store_made(self, sha: str, tile: Image.Image, stamp: list) -> None:
        """Keep a tile made elsewhere (by a ``--cluster`` worker) of the content ``sha``."""
        with self._count_lock:
            self.decoded += 1
        if self.folder is not None:
            _, stamps = self._load(sha)
            self._store(sha, tile, [s for s in stamps if s != stamp] + [stamp])

    def _make(self, path: Path) -> Image.Image:
        image, _ = imagelib.open_image(path, draft_px=self.tile_px)
        tile = make_tile(image, self.tile_px, self.fit)
        with self._count_lock:
            self.decoded += 1
        return tile

    def _count_cached(self, tile: Image.Image) -> Image.Image:
        with self._count_lock:
            self.cached += 1
        return tile

    def _load(self, sha: str) -> tuple[Image.Image | None, list]:
        """The cached tile of this content and the stamps of the files checked against it."""
        path = self._cache_path(sha)
        try:
            with Image.open(path) as image:
                if image.format != "PNG":  # from a version that cached lossy JPEG: make it again
                    return None, []
                tile = image.convert("RGB")
                stamps = json.loads(image.info.get(STAMPS_KEY, "[]"))
            with contextlib.suppress(OSError):
                os.utime(path)  # used now: kept by a prune by age
            return tile, [s for s in stamps if isinstance(s, list)] if isinstance(stamps, list) else []
        except (OSError, ValueError, SyntaxError):
            return None, []  # not cached yet, or a damaged entry: make it again

    def _store(self, sha: str, tile: Image.Image, stamps: list) -> None:
        # A cache entry, not an artifact: rename for atomicity, but no fsync per tile.
        path = self._cache_path(sha)
        info = PngImagePlugin.PngInfo()
        info.add_text(STAMPS_KEY, json.dumps(stamps[-MAX_STAMPS:]))
        buffer = io.BytesIO()
        tile.save(buffer, format="PNG", compress_level=CACHE_COMPRESS_LEVEL, pnginfo=info)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(buffer)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs the cache, not the render
            with contextlib.suppress(OSError):
                tmp.unlink()


def cache_files(work: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Each cached tile of a work directory, with its stat (a link or other odd entry is left out)."""
    for path in (Path(work) / CACHE_DIRNAME).glob("*/*/*.tile"):
        with contextlib.suppress(OSError):
            found = path.lstat()
            if stat.S_ISREG(found.st_mode):
                yield path, found


def cache_usage(work: Path) -> dict:
    """How many tiles the work directory's cache holds, what they take on disk, their use times."""
    found = [(found.st_blocks * 512, found.st_mtime) for _, found in cache_files(work)]
    return {
        "folder": str(Path(work) / CACHE_DIRNAME),
        "tiles": len(found),
        "bytes": sum(size for size, _ in found),
        "oldest_use": min((when for _, when in found), default=None),
        "newest_use": max((when for _, when in found), default=None),
    }


def prune_cache(work: Path, older_than_seconds: float | None = None, max_bytes: int | None = None) -> dict:
    """Remove the tiles not used for ``older_than_seconds``, then the least recently used
    until the cache takes at most ``max_bytes``; what was removed and kept.

    Safe beside a running render: a tile removed from under it is made again from its photo."""
    import time

    found = sorted(cache_files(work), key=lambda entry: entry[1].st_mtime, reverse=True)  # newest first
    cutoff = time.time() - older_than_seconds if older_than_seconds is not None else None
    kept_bytes, removed, freed, full = 0, 0, 0, False
    for path, found_stat in found:
        size = found_stat.st_blocks * 512
        full = full or (max_bytes is not None and kept_bytes + size > max_bytes)  # and all older ones go
        if full or (cutoff is not None and found_stat.st_mtime < cutoff):
            with contextlib.suppress(OSError):
                path.unlink()
                removed, freed = removed + 1, freed + size
                continue
        kept_bytes += size
    return {"folder": str(Path(work) / CACHE_DIRNAME), "removed": removed, "kept": len(found) - removed,
            "freed_bytes": freed, "bytes": kept_bytes}  # fmt: skip


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
