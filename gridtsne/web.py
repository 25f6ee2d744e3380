"""The web page output: a folder that shows the mosaic zoomable in any browser.

``render gallery.html`` writes the folder ``gallery/``:

- ``index.html``: the viewer (plain JavaScript on a canvas, no library, no
  network), from the template ``web_page.html`` beside this module;
- ``data.js``: the grid and the photo of each cell, loaded by a script tag
  because browsers refuse fetch() of files from file:// pages;
- ``tiles/Z/X_Y.jpg``: a deep-zoom pyramid of 256 px tiles. Level Z is the
  picture at 1/2^(top - Z) of full size; level 0 fits one tile. The page loads
  only the tiles in view at the level the zoom needs, so it stays fast at
  100,000 photos.

The pyramid is built from the strips of the mosaic as they are made, each
level fed by the one below, so memory holds a few strips, not the picture.
The folder is built beside its final place and renamed into place. A render
killed meanwhile leaves its hidden ``.NAME.*.tmp`` folder behind; the next
render of that page removes it, knowing it by the marker file inside, which
its builder holds locked while it works.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
from pathlib import Path

from PIL import Image

from gridtsne.errors import StageError

PYRAMID_TILE_PX = 256
TEMPLATE = Path(__file__).with_name("web_page.html")
#: A file that says a folder is a page gridtsne wrote and may replace.
MARKER = ".gridtsne-web"


def page_folder(output: str | os.PathLike) -> Path:
    """``gallery.html`` -> the folder ``gallery/`` that holds the page."""
    return Path(output).with_suffix("")


def pyramid_levels(width: int, height: int, tile_px: int = PYRAMID_TILE_PX) -> list[tuple[int, int]]:
    """Level sizes from the smallest (level 0, one tile) up to the full picture."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile_px:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes[::-1]


class Pyramid:
    """Writes the tile pyramid from full-resolution strips of PYRAMID_TILE_PX rows, top to bottom."""

    def __init__(self, folder: Path, width: int, height: int, quality: int):
        self.folder, self.quality = folder, quality
        self.levels = pyramid_levels(width, height)
        self.top = len(self.levels) - 1
        # By distance from the full-resolution level: the next strip row, and half a strip waiting.
        self.next_row = [0] * len(self.levels)
        self.waiting: list[Image.Image | None] = [None] * len(self.levels)
        for zoom in range(len(self.levels)):
            (folder / str(zoom)).mkdir(parents=True)

    def add(self, strip: Image.Image) -> None:
        self._push(0, strip)

    def _push(self, below_top: int, strip: Image.Image) -> None:
        zoom, row = self.top - below_top, self.next_row[below_top]
        self.next_row[below_top] += 1
        for col in range(-(-strip.width // PYRAMID_TILE_PX)):
            left = col * PYRAMID_TILE_PX
            tile = strip.crop((left, 0, min(left + PYRAMID_TILE_PX, strip.width), strip.height))
            tile.save(self.folder / str(zoom) / f"{col}_{row}.jpg", quality=self.quality)
        if zoom == 0:
            return
        half = strip.reduce(2)
        above = below_top + 1
        if self.waiting[above] is None and half.height < PYRAMID_TILE_PX:
            self.waiting[above] = half
            return
        first, self.waiting[above] = self.waiting[above], None
        joined = Image.new("RGB", (half.width, first.height + half.height))
        joined.paste(first, (0, 0))
        joined.paste(half, (0, first.height))
        self._push(above, joined)

    def finish(self) -> None:
        """Write what waits at each level (the bottom edge of the picture)."""
        for below_top in range(1, len(self.levels)):
            if self.waiting[below_top] is not None:
                strip, self.waiting[below_top] = self.waiting[below_top], None
                self._push(below_top, strip)


def photo_links(paths: list[str | None], folder: Path) -> list[str | None]:
    """Relative URLs from the page folder to each photo (None for an empty cell)."""
    links = []
    for path in paths:
        if path is None:
            links.append(None)
            continue
        try:
            relative = os.path.relpath(path, folder)
        except ValueError:  # another drive (Windows): only an absolute URL can reach it
            links.append(Path(path).absolute().as_uri())
            continue
        links.append(urllib.parse.quote(Path(relative).as_posix()))
    return links


def page_data(mosaic, folder: Path, levels: list[tuple[int, int]]) -> dict:
    """What the viewer needs: grid geometry, pyramid levels, the photo of each cell."""
    paths = [None if index is None else mosaic.entries[index]["path"] for index in mosaic.image_at()]
    return {
        "rows": mosaic.rows,
        "cols": mosaic.cols,
        "tile_px": mosaic.tile_px,
        "gap_px": mosaic.gap_px,
        "width": mosaic.width,
        "height": mosaic.height,
        "background": "#{:02x}{:02x}{:02x}".format(*mosaic.background),
        "pyramid_tile_px": PYRAMID_TILE_PX,
        "levels": levels,
        "photos": photo_links(paths, folder),
    }


class WebWriter:
    """A folder with a zoomable page over a tile pyramid; no size limit."""

    name = "html"

    def __init__(self, quality: int = 90):
        self.quality = quality

    def check(self, width: int, height: int) -> None:
        """Any size works: the page loads only the tiles in view."""

    def save(self, mosaic, destination) -> dict:
        if not isinstance(destination, Path):
            raise StageError("a web page is a folder and cannot go to stdout: name a .html file")
        folder = page_folder(destination)
        if folder.exists() and not (folder / MARKER).is_file():
            raise StageError(
                f"{folder} exists and is not a page gridtsne wrote: remove it or name another .html file"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(folder)
        building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        claim = None
        try:
            (building / MARKER).write_text("written by gridtsne render; replaced by the next one\n")
            claim = _hold(building / MARKER)  # until the end: a render meanwhile sees this one is alive
            pyramid = Pyramid(building / "tiles", mosaic.width, mosaic.height, self.quality)
            for strip in mosaic.strips(PYRAMID_TILE_PX):
                pyramid.add(strip)
            pyramid.finish()
            data = page_data(mosaic, folder, pyramid.levels)
            (building / "data.js").write_text(
                "window.GRIDTSNE = " + json.dumps(data, separators=(",", ":")) + ";\n", encoding="utf-8"
            )
            page = TEMPLATE.read_text(encoding="utf-8").replace("__TITLE__", folder.name)
            (building / "index.html").write_text(page, encoding="utf-8")
            os.chmod(building, 0o755)
            _replace_folder(building, folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        finally:
            if claim is not None:
                os.close(claim)
        return {"page": folder / "index.html", "data": folder / "data.js"}


def _replace_folder(new: Path, folder: Path) -> None:
    """Put ``new`` where ``folder`` is; the old page is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
        os.replace(folder, old / folder.name)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_builds(folder: Path) -> None:
    """Remove what killed renders of this page left beside it, and nothing else.

    That is a hidden folder named as ``save`` names its temporary folders
    (``.NAME.*.tmp`` being built, ``.NAME.*.old`` an old page on its way out),
    not a link, holding a page marker that no live render holds locked.
    """
    ours = re.compile(rf"\.{re.escape(folder.name)}\.[A-Za-z0-9_]+\.(tmp|old)")
    try:
        entries = list(os.scandir(folder.parent))
    except OSError:
        return
    for entry in entries:
        match = ours.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        leftover = Path(entry.path)
        marker = leftover / MARKER if match.group(1) == "tmp" else leftover / folder.name / MARKER
        try:
            held = _hold(marker, wait=False)
        except OSError:
            continue  # no marker, a link, or a live render's: not ours to remove
        try:
            shutil.rmtree(leftover, ignore_errors=True)
        finally:
            os.close(held)


def _hold(marker: Path, wait: bool = True) -> int:
    """An exclusive ``flock`` on a page marker; the descriptor holds it until closed.

    Raises OSError when the marker is missing, not a regular file (a link is
    not followed), or with ``wait=False`` held by another process.
    """
    fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{marker} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
