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

The marker also records digests of what the tiles, previews and neighbours
were made from (everything but the labels) and of the labels. A render that
changes only the labels rewrites only ``data.js`` (and the marker) in the page
as it stands: a new labels file must not redo a pyramid of 100,000 photos.
The page's marker is held locked while it does, and while a new folder is put
in the page's place, so the two never interleave.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from gridtsne import images, labels, regions, tiles
from gridtsne.errors import StageError
from gridtsne.workdir import atomic_write

PYRAMID_TILE_PX = 256
TEMPLATE = Path(__file__).with_name("web_page.html")
#: JPEG quality of the previews the details panel shows.
PREVIEW_QUALITY = 82
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


def _folder_link(folder_of_photos: str, page: Path) -> str:
    """The relative URL from the page folder to a folder of photos, ending in "/"."""
    try:
        relative = os.path.relpath(folder_of_photos, page)
    except ValueError:  # another drive (Windows): only an absolute URL can reach it
        return Path(folder_of_photos).absolute().as_uri() + "/"
    return urllib.parse.quote(Path(relative).as_posix()) + "/"


def _base64(array: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def photo_order(mosaic) -> list[int]:
    """The image indices of the photos on the page, in the order of their cells."""
    return [index for index in mosaic.image_at() if index is not None]


def page_data(
    mosaic, folder: Path, levels: list[tuple[int, int]], order: list[int], label_of_photo=None, **extra
) -> dict:
    """What the viewer needs: grid geometry, pyramid levels, and per photo (in ``order``, the
    order of their cells) its cell, name, folder and pixel size, as compact arrays; with
    ``label_of_photo`` (in ``order``, "" for none) a label table and each photo's index into
    it; and the named regions of the map (``regions.py``).

    Folders are a table, each photo an index into it. A folder is named relative to the
    common folder of all photos (``root``, only its own name), and linked relative to
    the page folder: no absolute path of this machine goes into the page.
    """
    paths = [os.path.abspath(mosaic.entries[index]["path"]) for index in order]
    parents = [os.path.dirname(path) for path in paths]
    root = os.path.commonpath(parents) if parents else ""
    table: dict[str, int] = {}
    folder_of = [table.setdefault(parent, len(table)) for parent in parents]
    shown = [Path(os.path.relpath(parent, root)).as_posix() for parent in table] if root else []
    sizes = [
        (mosaic.entries[index].get("width") or 0, mosaic.entries[index].get("height") or 0) for index in order
    ]
    names = [os.path.basename(path) for path in paths]
    given = label_of_photo is not None
    label_names, label_of = labels.table(label_of_photo) if given else (None, [])
    kinds = [regions.single_values([i - 1 for i in label_of], label_names)] if given else []
    last_parts = [os.path.basename(root) if name == "." else Path(name).name for name in shown]
    kinds += [regions.single_values(folder_of, last_parts), regions.word_values(names)]
    cells = mosaic.cell_of_image[order] if order else np.zeros(0, dtype=np.int64)
    named = regions.name_regions(cells, mosaic.rows, mosaic.cols, kinds)
    label_bytes = 1 if len(label_names or ()) < 2**8 else 2 if len(label_names) < 2**16 else 4
    return {
        "version": 2,
        "rows": mosaic.rows,
        "cols": mosaic.cols,
        "tile_px": mosaic.tile_px,
        "gap_px": mosaic.gap_px,
        "width": mosaic.width,
        "height": mosaic.height,
        "background": "#{:02x}{:02x}{:02x}".format(*mosaic.background),
        "pyramid_tile_px": PYRAMID_TILE_PX,
        "levels": levels,
        "count": len(order),
        "root": os.path.basename(root),
        "folders": ["" if name == "." else name for name in shown],
        "folder_links": [_folder_link(parent, folder) for parent in table],
        "names": names,
        "folder": _base64(np.asarray(folder_of, dtype=np.int64), "<i4"),
        "cell": _base64(cells, "<i4"),
        "size": _base64(np.asarray(sizes, dtype=np.int64).reshape(-1), "<u4"),
        # Labels: a table (most common first) and per photo 1 + its index there (0: none).
        "labels": label_names,
        "label": _base64(np.asarray(label_of, dtype=np.int64), f"<u{label_bytes}") if given else None,
        "label_bytes": label_bytes,
        # Regions: [name, col0, row0, col1, row1] (ends exclusive), the coarsest first.
        "regions": [[region.name, *region.box] for region in named],
        **extra,
    }


def write_neighbours(path: Path, index: np.ndarray, similarity: np.ndarray) -> None:
    """``neighbours.js``: per photo (page order) its most similar photos, loaded by the page on
    first need; similarities as int8 (cosine x 127)."""
    data = {
        "k": int(index.shape[1]),
        "index": _base64(index, "<i4"),
        "similarity": _base64(np.round(np.clip(similarity, -1, 1) * 127), "i1"),
    }
    path.write_text("window.GRIDTSNE_NEIGHBOURS = " + json.dumps(data) + ";\n", encoding="ascii")


def page_neighbours(embeddings: Path, order: list[int], jobs: int, cache: Path | None) -> tuple:
    """The most similar photos of each photo on the page, as page indices (``order``'s).

    Computed on embeddings.npy (memory-mapped) and kept in ``cache`` (the work directory's
    ``neighbours.npz``, keyed by the embeddings' hash and the photos placed), so that another
    render of the same map does not compute them again.
    """
    from gridtsne import neighbours
    from gridtsne.workdir import file_hash

    vectors = np.load(embeddings, mmap_mode="r")
    placed = np.asarray(order, dtype=np.int64)
    key = hashlib.sha256(
        f"{file_hash(embeddings)} {neighbours.K} {neighbours.VERSION} ".encode() + placed.tobytes()
    ).hexdigest()
    if cache is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            with np.load(cache) as kept:
                if str(kept["key"]) == key:
                    return kept["index"], kept["similarity"]
    rows_of = np.sort(placed)  # the rows searched, in file order (all of them: the memory map itself)
    found, found_similarity = neighbours.most_similar(
        vectors if len(rows_of) == len(vectors) else vectors[rows_of], jobs=jobs
    )
    page_of = np.zeros(len(vectors), dtype=np.int32)
    page_of[placed] = np.arange(len(placed), dtype=np.int32)
    index, similarity = np.empty_like(found), np.empty_like(found_similarity)
    index[page_of[rows_of]] = page_of[rows_of[found]]
    similarity[page_of[rows_of]] = found_similarity
    if cache is not None:
        with contextlib.suppress(OSError):
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, key=np.array(key), index=index, similarity=similarity)
            os.replace(tmp, cache)
    return index, similarity


#: The work directory's cache of the neighbours of the last page rendered from it.
NEIGHBOURS_CACHE = "neighbours.npz"
#: What the previews of a page folder are, for the next render to reuse them.
PREVIEWS_INDEX = "made.json"


def make_previews(
    entries: list[dict], order: list[int], target: Path, old: Path | None, px: int, quality: int, jobs: int
) -> dict:
    """``previews/P.jpg``: photo P of the page (``order``), at most ``px`` on its long side.

    A preview the previous page (``old``) made of the same file, unchanged since (same
    content hash at embed, size and modification time), at the same settings, is linked or
    copied from it instead of decoding the photo again. Returns counts, and the photos that
    have no preview (their file is unreadable now).
    """
    target.mkdir()
    settings = {"px": px, "quality": quality}
    reusable: dict = {}
    if old is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            before = json.loads((old / PREVIEWS_INDEX).read_text())
            if before.get("settings") == settings:
                reusable = before.get("files", {})
    made: dict[str, list] = {}
    lock = threading.Lock()
    counts = {"made": 0, "reused": 0, "unreadable": 0}
    missing: list[int] = []

    def one(page_index: int) -> None:
        entry = entries[order[page_index]]
        name = f"{page_index}.jpg"
        try:
            found = os.stat(entry["path"])
            stamp = [entry.get("sha256"), found.st_size, found.st_mtime_ns]
        except OSError:
            stamp = None
        before = reusable.get(stamp[0]) if stamp and stamp[0] else None
        if before is not None and before[:2] == stamp[1:] and _link_or_copy(old / before[2], target / name):
            kind = "reused"
        else:
            try:
                image, _ = images.open_image(Path(entry["path"]), draft_px=_draft_px(entry, px))
            except images.UnreadableImage:
                with lock:
                    counts["unreadable"] += 1
                    missing.append(page_index)
                return
            if max(image.size) > px:
                image = tiles.make_tile(image, px, "pad")
            image.save(target / name, quality=quality)
            kind = "made"
        with lock:
            counts[kind] += 1
            if stamp and stamp[0]:
                made[stamp[0]] = [stamp[1], stamp[2], name]

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, range(len(order))))
    (target / PREVIEWS_INDEX).write_text(json.dumps({"settings": settings, "files": made}))
    return counts, sorted(missing)


def _draft_px(entry: dict, px: int) -> int:
    """The short side a preview needs: only its long side is ``px`` (JPEG draft then decodes
    a 4000 x 3000 photo at 1/8 for a 384 px preview, not 1/4)."""
    width, height = entry.get("width") or 0, entry.get("height") or 0
    if width <= 0 or height <= 0:
        return px
    return max(1, -(-px * min(width, height) // max(width, height)))


def _link_or_copy(source: Path, destination: Path) -> bool:
    if source.is_symlink() or not source.is_file():
        return False
    try:
        os.link(source, destination)
    except OSError:
        try:
            shutil.copyfile(source, destination)
        except OSError:
            return False
    return True


class WebWriter:
    """A folder with a zoomable page over a tile pyramid; no size limit.

    With ``embeddings`` (embeddings.npy) the page gets each photo's most similar photos
    (``neighbours.js``); with ``preview_px`` a preview of each photo (``previews/``).
    """

    name = "html"

    def __init__(
        self,
        quality: int = 90,
        *,
        preview_px: int = 0,
        embeddings: Path | None = None,
        neighbours_cache: Path | None = None,
        jobs: int = 1,
        on_message=lambda text: None,
    ):
        self.quality = quality
        self.preview_px = preview_px
        self.embeddings = embeddings
        self.neighbours_cache = neighbours_cache
        self.jobs = jobs
        self.on_message = on_message
        self.counts: dict = {}
        #: Each photo's label ("" for none), by image index; None: the folders are the labels.
        self.labels: list[str] | None = None
        #: Digests of what all but the labels are made from, and of the labels: a page of the same
        #: key and other labels gets only a new data.js. None: always build the whole page.
        self.key: str | None = None
        self.labels_key: str | None = None

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
        written = {"page": folder / "index.html", "data": folder / "data.js"}
        if self.key is not None and self._rewrite_data(mosaic, folder):
            return {**written, "labels_only": True}
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(folder)
        building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        claim = None
        try:
            (building / MARKER).write_text(MARKER_NOTE)
            claim = _hold(building / MARKER)  # until the end: a render meanwhile sees this one is alive
            pyramid = Pyramid(building / "tiles", mosaic.width, mosaic.height, self.quality)
            for strip in mosaic.strips(PYRAMID_TILE_PX):
                pyramid.add(strip)
            pyramid.finish()
            order = photo_order(mosaic)
            extra = {"preview_px": self.preview_px, "no_preview": [], "neighbours": None}
            if self.preview_px:
                old = folder / "previews" if (folder / MARKER).is_file() else None
                self.counts["previews"], extra["no_preview"] = make_previews(
                    mosaic.entries, order, building / "previews", old, self.preview_px, PREVIEW_QUALITY,
                    self.jobs,
                )  # fmt: skip
            if self.embeddings is not None and self.embeddings.is_file() and order:
                index, similarity = page_neighbours(self.embeddings, order, self.jobs, self.neighbours_cache)
                write_neighbours(building / "neighbours.js", index, similarity)
                extra["neighbours"] = "neighbours.js"
            (building / "data.js").write_text(self._data_js(mosaic, folder, order, extra), encoding="utf-8")
            (building / "index.html").write_text(_index_html(folder), encoding="utf-8")
            # Photos whose tile is missing, by page index (no path of this machine goes into the page).
            page_of = {mosaic.entries[index]["path"]: p for p, index in enumerate(order)}
            unreadable = [[page_of[photo["path"]], photo["reason"]] for photo in mosaic.unreadable]
            state = {"key": self.key, "labels": self.labels_key, "extra": extra, "unreadable": unreadable}
            (building / MARKER).write_text(_marker_text(state))  # the same file: still held
            os.chmod(building, 0o755)
            _replace_folder(building, folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        finally:
            if claim is not None:
                os.close(claim)
        return written

    def _data_js(self, mosaic, folder: Path, order: list[int], extra: dict) -> str:
        label_of_photo = [self.labels[index] for index in order] if self.labels is not None else None
        levels = pyramid_levels(mosaic.width, mosaic.height)
        data = page_data(mosaic, folder, levels, order, label_of_photo, **extra)
        return "window.GRIDTSNE = " + json.dumps(data, separators=(",", ":")) + ";\n"

    def _rewrite_data(self, mosaic, folder: Path) -> bool:
        """Give the page at ``folder`` a new data.js (and marker), and touch nothing else, when its
        marker says only the labels differ and the page is whole; False (and nothing written)
        otherwise, for a new page to be built. A link is never written into."""
        if folder.is_symlink() or not folder.is_dir():
            return False
        try:
            held = _hold_page(folder)
        except OSError:
            return False
        try:
            state = _page_state(held)
            if state.get("key") != self.key or state.get("labels") == self.labels_key:
                return False  # more than the labels changed, or nothing did: build it all, as asked
            if not isinstance(state.get("extra"), dict) or not isinstance(state.get("unreadable"), list):
                return False
            if not _whole(folder):
                return False
            order = photo_order(mosaic)
            text = self._data_js(mosaic, folder, order, state["extra"])
            atomic_write(folder / "data.js", lambda handle: handle.write(text.encode("utf-8")))
            marker = _marker_text({**state, "labels": self.labels_key})
            atomic_write(folder / MARKER, lambda handle: handle.write(marker.encode("utf-8")))
            mosaic.unreadable = [{"path": mosaic.entries[order[p]]["path"], "reason": reason}
                                 for p, reason in state["unreadable"]]  # fmt: skip
            return True
        finally:
            os.close(held)


#: The marker's first line, for a person who finds it; the page's state follows as JSON.
MARKER_NOTE = "written by gridtsne render; replaced by the next one\n"


def _index_html(folder: Path) -> str:
    return TEMPLATE.read_text(encoding="utf-8").replace("__TITLE__", html.escape(folder.name))


def _whole(folder: Path) -> bool:
    """Whether a page has its tiles and this gridtsne's index.html (not one changed by hand)."""
    index_html = folder / "index.html"
    if not (folder / "tiles").is_dir() or index_html.is_symlink():
        return False
    try:
        return index_html.read_bytes() == _index_html(folder).encode("utf-8")
    except OSError:
        return False


def _marker_text(state: dict) -> str:
    return MARKER_NOTE + json.dumps(state) + "\n"


def _page_state(marker_fd: int) -> dict:
    """What the marker records of its page (see ``save``); {} for none (an older gridtsne's)."""
    with open(marker_fd, "rb", closefd=False) as handle:
        handle.seek(0)
        _, _, rest = handle.read().decode("utf-8", "replace").partition("\n")
    try:
        state = json.loads(rest)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _hold_page(folder: Path) -> int:
    """``_hold`` on the marker of the page now at ``folder``: after waiting for the lock it is
    checked to be the marker still there, as a render may have put a new page in place meanwhile."""
    while True:
        held = _hold(folder / MARKER)
        try:
            now, locked = os.stat(folder / MARKER, follow_symlinks=False), os.fstat(held)
            if (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino):
                return held
        except OSError:
            os.close(held)
            raise
        os.close(held)


def _replace_folder(new: Path, folder: Path) -> None:
    """Put ``new`` where ``folder`` is; the old page is moved aside first, then removed. The old
    page's marker is held meanwhile, so that a render rewriting its data.js has done so first."""
    old, held = None, None
    if folder.exists():
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):  # no usable marker: no render can be rewriting it
                held = _hold_page(folder)
        try:
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.replace(folder, old / folder.name)
            os.replace(new, folder)
        finally:
            if held is not None:
                os.close(held)
    else:
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
