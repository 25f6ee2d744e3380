"""Positions for other tools: each photo's grid cell and t-SNE coordinates as a table.

One row per embedded photo (skipped files have none), in ``images.json``
order, with the same columns in every format:

| column | meaning |
|---|---|
| index | the photo's row in images.json, embeddings.npy and coords.npy |
| path | the photo's path, as in images.json |
| row, col | its grid cell, counted from the top left, from 0 |
| cell | row * cols + col, the value in grid.npy |
| x, y | its point in coords.npy, in [0, 1] (x to the right, y down the grid) |

The format is a choice behind one name (``FORMATS``): csv (with a header
row), json (one array of objects), jsonl (one object per line, for jq and
streaming readers). Reading only, export writes no manifest.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from gridtsne import assign
from gridtsne.errors import StageError
from gridtsne.workdir import COORDS, Workdir, atomic_write

COLUMNS = ("index", "path", "row", "col", "cell", "x", "y")


def positions(workdir: Workdir) -> list[dict]:
    """The table's rows, after checking that the grid was made from the current map."""
    listing = workdir.load_images()["images"]
    cell_of_image, rows, cols = assign.grid_of(workdir, len(listing))
    if assign.STAGE.staleness(workdir):
        raise StageError(
            f"{workdir.file('grid.npy')} was made from another {COORDS}: "
            f"run `gridtsne assign -w {workdir.path}` first"
        )
    coords = workdir.load_coords(len(listing))
    table = []
    for index, (entry, cell, point) in enumerate(
        zip(listing, cell_of_image.tolist(), coords.tolist(), strict=True)
    ):
        if cell < 0:  # left out of the grid by assign --subset: no position to give
            continue
        row, col = divmod(cell, cols)
        table.append(
            {
                "index": index,
                "path": entry["path"],
                "row": row,
                "col": col,
                "cell": cell,
                "x": round(point[0], 6),
                "y": round(point[1], 6),
            }
        )
    return table


def _csv(table: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return text.getvalue()


def _json(table: list[dict]) -> str:
    return json.dumps(table, indent=1, ensure_ascii=False) + "\n"


def _jsonl(table: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table)


FORMATS_BY_NAME: dict[str, Callable[[list[dict]], str]] = {"csv": _csv, "json": _json, "jsonl": _jsonl}
FORMATS = ("auto", *FORMATS_BY_NAME)


def format_of(output: str | os.PathLike, table_format: str = "auto") -> str:
    """``table_format`` unless "auto"; then the extension of ``output`` if it names one, else csv."""
    if table_format != "auto":
        return table_format
    suffix = Path(str(output)).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS_BY_NAME else "csv"


def export(workdir: Workdir, table_format: str) -> str:
    return FORMATS_BY_NAME[table_format](positions(workdir))


def save(output: str | os.PathLike, text: str) -> None:
    atomic_write(Path(output), lambda handle: handle.write(text.encode("utf-8")))
