"""Stage 3, assign: snap the 2-D map onto the cells of a rows x cols grid.

Each image goes to exactly one cell so that the total squared displacement
between map positions and cell centres is minimal: a linear assignment
problem, solved exactly by Jonker-Volgenant (``lap``). With fewer images than
cells the problem is rectangular and the solver itself picks the empty cells.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np

from gridtsne.workdir import COORDS, GRID, StageError, Workdir, file_hash, save_npy

STAGE = "assign"


def parse_grid(text: str) -> tuple[int, int]:
    """``"12x16"`` -> (12, 16): rows x columns."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (rows := int(match[1]), cols := int(match[2])):
        raise ValueError(f"{text!r} is not ROWSxCOLS, e.g. 10x12")
    return rows, cols


def grid_shape(n_images: int) -> tuple[int, int]:
    """The smallest near-square grid that holds every image: cols = ceil(sqrt N)."""
    cols = max(1, math.ceil(math.sqrt(n_images)))
    rows = max(1, math.ceil(n_images / cols))
    return rows, cols


def fit_to_grid(coords: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Map points to grid units (x = column, y = row), stretched to span the grid.

    The grid must be filled, so each axis is stretched to the grid's extent;
    a unit is one cell on both axes, so costs treat square tiles as square.
    """
    coords = np.asarray(coords, dtype=np.float64)
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    unit = (coords - low) / span
    unit[:, high <= low] = 0.5
    return unit * np.array([cols - 1, rows - 1], dtype=np.float64)


def cell_centres(rows: int, cols: int) -> np.ndarray:
    """(rows*cols) x 2 centres in grid units, row-major, as (x = col, y = row)."""
    row_of_cell, col_of_cell = np.divmod(np.arange(rows * cols), cols)
    return np.stack([col_of_cell, row_of_cell], axis=1).astype(np.float64)


def assign_to_grid(coords: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, float]:
    """Cell index (row-major) of each point, and the total squared displacement."""
    import lap

    n_points = len(coords)
    if n_points > rows * cols:
        raise StageError(
            f"{n_points} images do not fit a {rows}x{cols} grid ({rows * cols} cells): "
            "choose a larger --grid or leave it out"
        )
    points = fit_to_grid(coords, rows, cols)
    centres = cell_centres(rows, cols)
    cost = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    if n_points == rows * cols:
        _, cell_of_image, _ = lap.lapjv(cost)
    else:
        _, cell_of_image, _ = lap.lapjv(cost, extend_cost=True)
    cell_of_image = np.asarray(cell_of_image, dtype=np.int32)
    total = float(cost[np.arange(n_points), cell_of_image].sum())
    return cell_of_image, total


def parameters(grid: tuple[int, int] | None) -> dict:
    return {"grid": f"{grid[0]}x{grid[1]}" if grid else "auto"}


def current_inputs(workdir: Workdir) -> dict:
    return {COORDS: file_hash(workdir.require(COORDS))}


def grid_of(workdir: Workdir, n_images: int) -> tuple[np.ndarray, int, int]:
    """Load ``grid.npy`` with its shape, checked against the number of images."""
    manifest = workdir.read_manifest(STAGE)
    cell_of_image = workdir.load_array(GRID)
    if manifest is None:
        raise StageError(
            f"{workdir.manifest_path(STAGE)} is missing: run `gridtsne assign -w {workdir.path}`"
        )
    rows, cols = manifest["results"]["rows"], manifest["results"]["cols"]
    if len(cell_of_image) != n_images or cell_of_image.max(initial=-1) >= rows * cols:
        raise StageError(
            f"{workdir.file(GRID)} holds {len(cell_of_image)} cells for {n_images} images: "
            f"it is out of date, run `gridtsne reduce -w {workdir.path}` "
            f"and `gridtsne assign -w {workdir.path}`"
        )
    return cell_of_image, rows, cols


def run(workdir: Workdir, *, grid: tuple[int, int] | None = None, skip_if_fresh: bool = False) -> dict:
    started = time.perf_counter()
    params = parameters(grid)
    inputs = current_inputs(workdir)
    if skip_if_fresh and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary
    coords = workdir.load_array(COORDS)
    rows, cols = grid or grid_shape(len(coords))
    cell_of_image, total_cost = assign_to_grid(coords, rows, cols)
    save_npy(workdir.file(GRID), cell_of_image)
    results = {
        "images": len(coords),
        "rows": rows,
        "cols": cols,
        "empty_cells": rows * cols - len(coords),
        "solver": "lapjv",
        "cost": total_cost,
        "rms_displacement_cells": float(np.sqrt(total_cost / max(1, len(coords)))),
    }
    return workdir.finish_stage(STAGE, params, inputs, {GRID: workdir.file(GRID)}, started, results)
