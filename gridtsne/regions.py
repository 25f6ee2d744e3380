"""Region names of the map (as PixPlot's hotspots): short names for large areas of the grid.

The rule, kept simple so that a user can tell why a name is where it is:

1. The grid is cut into square blocks at a few scales: blocks of half the grid's
   longer side, then a quarter, an eighth, ..., down to blocks of ``SMALLEST_BLOCK``
   cells a side.
2. A block of at least ``MIN_PHOTOS`` photos is named by what a clear majority of
   them share (at least ``MIN_SHARE``): the most common label when labels are
   given, else the most common folder (its last part), else the most common word
   of the file names (lower case, split on anything but letters, so digits and
   extensions go, and stop-words such as img, dsc or photo left out).
   A value shared by more than ``TOO_COMMON`` of the whole map (a single folder,
   a camera's prefix) names nothing in particular and is never used.
3. Touching blocks of one scale with the same name are one region; its box is
   the cells they cover.
4. A region inside a larger region of the same name (its box's centre in the
   larger box) is left out: the larger one already says it.

The page shows a region's name while the region is large on screen, and a click
on the name zooms to its box.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Blocks smaller than this many cells a side are not named.
SMALLEST_BLOCK = 3
#: A named block holds at least this many photos.
MIN_PHOTOS = 6
#: The share of a block's photos that must share a name.
MIN_SHARE = 0.4
#: A value shared by more than this share of all photos is never a name.
TOO_COMMON = 0.8
#: Names longer than this are cut (with an ellipsis): a name is a hint, not a caption.
NAME_CHARS = 32
#: At most this many regions, the coarsest first: data.js stays small on any map.
MAX_REGIONS = 4000
#: Words of file names that say nothing about a photo: camera prefixes, formats, fillers.
STOP_WORDS = frozenset(
    "img image images dsc dscn dscf dcim pxl mvimg photo photos pic pics picture pictures screenshot "
    "scan scanned copy edit edited final jpg jpeg png heic heif gif tif tiff webp raw vid gopr dji wa "
    "the and of in on at an with to for from by"
    .split()
)  # fmt: skip


@dataclass(frozen=True)
class Region:
    """A named area: ``box`` is (col0, row0, col1, row1) in cells, the ends exclusive; ``scale``
    is 1 for the coarsest blocks (half the grid), 2 for the next, ..."""

    name: str
    box: tuple[int, int, int, int]
    scale: int


@dataclass(frozen=True)
class Values:
    """One kind of name (labels, folders or words): the names, and (photo, name index) pairs;
    a photo may have none or several (the words of its file name)."""

    names: list[str]
    photo: np.ndarray
    value: np.ndarray


def short(text: str) -> str:
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 1].rstrip() + "\u2026"


def words_of(file_name: str) -> set[str]:
    """The words of a file name that may name it: letters only, lower case, no stop-words."""
    stem, extension = os.path.splitext(file_name)
    stem = stem if extension and len(extension) <= 6 else file_name
    words = re.findall(r"[^\W\d_]+", stem.lower())  # letters only: digits and "_" split words
    return {word for word in words if len(word) > 1 and word not in STOP_WORDS}


def single_values(per_photo: Sequence[int], names: list[str]) -> Values:
    """One value per photo (an index into ``names``; -1 for none)."""
    value = np.asarray(per_photo, dtype=np.int64)
    photo = np.flatnonzero(value >= 0)
    return Values(names, photo, value[photo])


def word_values(file_names: Sequence[str]) -> Values:
    """The words of each photo's file name, each word counted once per photo."""
    table: dict[str, int] = {}
    photo, value = [], []
    for index, name in enumerate(file_names):
        for word in sorted(words_of(name)):
            photo.append(index)
            value.append(table.setdefault(word, len(table)))
    return Values(list(table), np.asarray(photo, dtype=np.int64), np.asarray(value, dtype=np.int64))


def name_regions(cells: np.ndarray, rows: int, cols: int, kinds: Sequence[Values]) -> list[Region]:
    """The named regions of a grid; ``cells[p]`` is photo p's cell (row-major), ``kinds`` the kinds
    of names in the order they are tried (labels, folders, words). The rule is the module's."""
    cells = np.asarray(cells, dtype=np.int64)
    count = len(cells)
    if count == 0:
        return []
    row_of, col_of = cells // cols, cells % cols
    usable = [_usable(kind, count) for kind in kinds]
    regions: list[Region] = []
    scale, side = 1, -(-max(rows, cols) // 2)
    while side >= SMALLEST_BLOCK:
        block_rows, block_cols = -(-rows // side), -(-cols // side)
        block_of = (row_of // side) * block_cols + col_of // side
        named = _name_blocks(block_of, block_rows * block_cols, kinds, usable)
        for name, blocks in _touching(named, block_rows, block_cols):
            box = (min(c for _, c in blocks) * side, min(r for r, _ in blocks) * side,
                   min(cols, (max(c for _, c in blocks) + 1) * side),
                   min(rows, (max(r for r, _ in blocks) + 1) * side))  # fmt: skip
            if not _said_already(name, box, regions):
                regions.append(Region(name, box, scale))
        if len(regions) >= MAX_REGIONS:
            break
        scale, side = scale + 1, -(-side // 2) if side > SMALLEST_BLOCK else 0
    return regions[:MAX_REGIONS]


def _usable(kind: Values, count: int) -> np.ndarray:
    """Per name of a kind: whether it may name a block (it is not on most of the map)."""
    totals = np.bincount(kind.value, minlength=len(kind.names))
    return totals <= TOO_COMMON * count


def _name_blocks(block_of: np.ndarray, blocks: int, kinds: Sequence[Values], usable) -> dict[int, str]:
    """Block -> its name, for the blocks that have one."""
    photos_in = np.bincount(block_of, minlength=blocks)
    named: dict[int, str] = {}
    for kind, allowed in zip(kinds, usable, strict=True):
        if not len(kind.value):
            continue
        keep = allowed[kind.value]
        block, value = block_of[kind.photo[keep]], kind.value[keep]
        if not len(block):
            continue
        width = len(kind.names)
        pairs, counts = np.unique(block * width + value, return_counts=True)
        # The most common name of each block (ties: the name listed first), as the last of its block.
        order = np.lexsort((-(pairs % width), counts, pairs // width))
        pairs, counts = pairs[order], counts[order]
        last = np.r_[pairs[1:] // width != pairs[:-1] // width, True]
        for pair, found in zip(pairs[last].tolist(), counts[last].tolist(), strict=True):
            block_id, value_id = divmod(pair, width)
            size = photos_in[block_id]
            if block_id not in named and size >= MIN_PHOTOS and found >= MIN_SHARE * size:
                named[block_id] = short(kind.names[value_id])
    return named


def _touching(named: dict[int, str], block_rows: int, block_cols: int) -> list[tuple[str, list]]:
    """Groups of side-by-side blocks with the same name, each as (name, [(row, col), ...])."""
    groups, seen = [], set()
    for start in sorted(named):
        if start in seen:
            continue
        seen.add(start)
        name, todo, members = named[start], [start], []
        while todo:
            block = todo.pop()
            row, col = divmod(block, block_cols)
            members.append((row, col))
            for d_row, d_col in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                r, c = row + d_row, col + d_col
                other = r * block_cols + c
                inside = 0 <= r < block_rows and 0 <= c < block_cols
                if inside and other not in seen and named.get(other) == name:
                    seen.add(other)
                    todo.append(other)
        groups.append((name, members))
    return groups


def _said_already(name: str, box: tuple[int, int, int, int], regions: list[Region]) -> bool:
    centre_col, centre_row = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(
        region.name == name and region.box[0] <= centre_col <= region.box[2]
        and region.box[1] <= centre_row <= region.box[3]
        for region in regions
    )  # fmt: skip
