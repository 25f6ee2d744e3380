"""Stage 3, assign: snap the 2-D map onto the cells of a rows x cols grid.

Each image goes to exactly one cell so that the total squared displacement
between map positions and cell centres is minimal: a linear assignment
problem. The solver is one choice behind one name, resolved in
``resolve_solver``: "exact" (Jonker-Volgenant via scipy, optimal, cubic) while
that takes seconds, "blocks" (exact within blocks, balanced between them,
refined on overlapping windows; near-linear, complete by construction) above.
With fewer images than cells the problem is rectangular and the solver itself
picks the empty cells; with more, ``subset`` keeps a representative subset.
Then the grid is refined against the embedding (``gridtsne.refine``) and its
quality measured (``gridtsne.quality``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from gridtsne import quality, refine
from gridtsne.errors import OptionMismatch, StageError
from gridtsne.options import AssignOptions
from gridtsne.stage import Context, Stage
from gridtsne.vectors import in_parts, match_rows, nearest_unit_rows, normalise, row_keys
from gridtsne.workdir import (
    ASSIGN_STATE,
    COORDS,
    EMBEDDINGS,
    GRID,
    IMAGES,
    REDUCE_STATE,
    Workdir,
    file_hash,
    load_state,
    save_npy,
    save_state,
)  # fmt: skip


def grid_shape(n_images: int, aspect: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """The smallest grid of about ``aspect`` (width : height) that holds every image.

    cols = ceil(sqrt(N x W / H)), rows = ceil(N / cols); for 1:1 the near-square
    grid (1000 images: 32 x 32; 110: 10 x 11).
    """
    width, height = aspect
    cols = max(1, math.ceil(math.sqrt(n_images * width / height)))
    rows = max(1, math.ceil(n_images / cols))
    return rows, cols


def fit_to_grid(coords: np.ndarray, rows: int, cols: int, fill: int | None = None) -> np.ndarray:
    """Map points to grid units (x = column, y = row) with one scale for both axes.

    A cell is one unit on both axes (square tiles), so the map is never
    stretched more on one axis than on the other. It is centred on the grid
    and scaled so that its spread (root-mean-square distance from its centre)
    equals that of the N cells nearest the grid's centre: the most compact
    region the N images could fill, which is the whole grid when they fill it
    (``fill``: that many cells instead of N, when room is kept among them).
    The assignment then moves points as little as possible onto the cells:
    a round map on a wide grid with room to spare stays round, and where the
    grid must be filled the map is widened only as far as that demands.
    """
    coords = np.asarray(coords, dtype=np.float64)
    centres = cell_centres(rows, cols)
    middle = centres.mean(axis=0)
    from_middle = ((centres - middle) ** 2).sum(axis=1)
    nearest = np.sort(from_middle)[: max(1, fill or len(coords))]
    offset = coords - coords.mean(axis=0)
    spread = math.sqrt(float((offset**2).sum(axis=1).mean()))
    scale = math.sqrt(float(nearest.mean())) / spread if spread > 0 else 0.0
    return offset * scale + middle


def cell_centres(rows: int, cols: int) -> np.ndarray:
    """(rows*cols) x 2 centres in grid units, row-major, as (x = col, y = row)."""
    row_of_cell, col_of_cell = np.divmod(np.arange(rows * cols), cols)
    return np.stack([col_of_cell, row_of_cell], axis=1).astype(np.float64)


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The assignment cost: squared distance in cells from every point to every centre."""
    # Axis by axis: the same numbers as summing over a third axis, without its slow reduction;
    # the second axis's squares are added to the first's a band of rows at a time, so no second
    # N x cells array stands beside the result (which doubled the exact solver's peak: 57 MB
    # for 28 at 1,873 photos).
    cost = np.subtract.outer(points[:, 0], centres[:, 0])
    np.square(cost, out=cost)
    for start in range(0, len(points), COST_BAND_ROWS):
        band = np.subtract.outer(points[start : start + COST_BAND_ROWS, 1], centres[:, 1])
        np.square(band, out=band)
        cost[start : start + COST_BAND_ROWS] += band
    return cost


#: Rows of the cost matrix whose second-axis squares ``squared_distances`` makes at once.
COST_BAND_ROWS = 64


def _exact_lap(
    points: np.ndarray, centres: np.ndarray, weights: np.ndarray | None = None, *, priced: bool = False
) -> np.ndarray:
    """Index of the centre of each point, minimising the total squared distance (each point's
    times its weight, when given: a heavier point is moved less readily).

    Rectangular when there are more centres than points: the solver itself
    leaves the centres that cost most to fill empty. ``priced``: a square problem without
    weights starts from each centre's least cost (the same optimum, found sooner).
    """
    from scipy.optimize import linear_sum_assignment

    cost = squared_distances(points, centres)
    if weights is not None:
        cost *= np.asarray(weights, dtype=np.float64)[:, None]
    elif priced and cost.shape[0] == cost.shape[1]:
        # Every centre takes a point, so less each centre's least cost the optimum is the same,
        # and scipy's solver, which starts from zero prices, finds it sooner: a fifth less time
        # at 1,024 photos on 32 x 32 cells. Not with empty cells (a centre may go unused), nor
        # with weights (an update, whose new photos start on their kin's place: where points
        # tie, the prices would decide which keeps the cell), nor in the blocks solver's
        # windows, where one of thousands of near ties went the other way and the grid moved.
        cost -= cost.min(axis=0)
    point_index, centre_index = linear_sum_assignment(cost)
    centre_of_point = np.empty(len(points), dtype=np.int64)
    centre_of_point[point_index] = centre_index
    return centre_of_point


class ExactSolver:
    """Jonker-Volgenant on the full N x cells cost matrix: optimal, cubic in time."""

    name = "exact"

    def solve(
        self, points: np.ndarray, rows: int, cols: int, weights: np.ndarray | None = None
    ) -> np.ndarray:
        return _exact_lap(points, cell_centres(rows, cols), weights, priced=True)


class BlocksSolver:
    """Optimal within blocks, balanced between them: near-linear time and memory.

    1. Balanced partition: the grid is cut in two along its longer side,
       again and again, down to blocks of at most ``block_cells`` cells; at
       each cut the points are split by their coordinate across it, as many
       to each side as lie there, moved over only as far as each side's
       number of cells demands. Every block so gets no more points than
       cells, so the assignment is complete by construction.
    2. Exact LAP inside each block.
    3. Refinement: exact LAP on windows of ``window`` x ``window`` cells,
       shifted by half a window on alternate passes so that they straddle the
       block borders, over the points the window's cells hold. Each window
       can only lower the total cost, so the result is never worse than the
       blocks and stays complete. Passes stop when two in a row lower the
       cost by less than ``tolerance`` (relative), or after ``max_passes``.
       Windows of 8 x 8 cost a ninth of the time of 16 x 16 at 10,000 photos
       (the exact solver is cubic in a window's cells) and leave a few percent
       more displacement, which refinement makes up: the refined grids score
       the same (docs/benchmarks.md).
    """

    name = "blocks"

    def __init__(self, block_cells: int = 64, window: int = 8, max_passes: int = 12, tolerance: float = 1e-4):
        self.block_cells, self.window = block_cells, window
        self.max_passes, self.tolerance = max_passes, tolerance

    def solve(self, points: np.ndarray, rows: int, cols: int) -> np.ndarray:
        cell_of_point = np.empty(len(points), dtype=np.int64)
        pending = [(np.arange(len(points)), 0, rows, 0, cols)]
        while pending:
            members, row0, row1, col0, col1 = pending.pop()
            height, width = row1 - row0, col1 - col0
            if height * width <= self.block_cells or len(members) == 0:
                self._solve_window(points, cell_of_point, members, row0, row1, col0, col1, cols)
                continue
            if width >= height:
                cut, axis = col0 + width // 2, 0
                first = (row0, row1, col0, cut)
                second = (row0, row1, cut, col1)
            else:
                cut, axis = row0 + height // 2, 1
                first = (row0, cut, col0, col1)
                second = (cut, row1, col0, col1)
            capacity_first = (first[1] - first[0]) * (first[3] - first[2])
            capacity_second = height * width - capacity_first
            order = members[np.argsort(points[members, axis], kind="stable")]
            natural = int(np.searchsorted(points[order, axis], cut - 0.5))
            n_first = min(max(natural, len(members) - capacity_second), capacity_first)
            pending.append((order[:n_first], *first))
            pending.append((order[n_first:], *second))
        return self.improve(points, cell_of_point, rows, cols)

    def improve(
        self, points: np.ndarray, cell_of_point: np.ndarray, rows: int, cols: int, weights=None
    ) -> np.ndarray:
        """Step 3 alone, on any complete assignment: it only lowers the total cost, window by
        window, so photos already where they should be stay. ``weights``: as ``_exact_lap``'s."""
        cell_of_point = np.asarray(cell_of_point, dtype=np.int64).copy()
        centres = cell_centres(rows, cols)
        weight = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
        costs = [float((weight * ((points - centres[cell_of_point]) ** 2).sum(axis=1)).sum())]
        for index in range(self.max_passes):
            shift = (self.window // 2) * (index % 2)
            occupant = occupants(cell_of_point, rows, cols)
            # A window whose photos all sit on their own place is optimal as it is (an update:
            # most of the grid): skipped. Windows do not overlap, so this holds through a pass.
            displaced = (points != centres[cell_of_point]).any(axis=1)
            tasks = []
            for r0, r1, c0, c1 in windows(rows, cols, self.window, shift):
                members = occupant[r0:r1, c0:c1].ravel()
                members = members[members >= 0]
                if displaced[members].any():
                    tasks.append((members, r0, r1, c0, c1))

            def solve_windows(part: range, tasks: list = tasks) -> None:
                for task in part:
                    self._solve_window(points, cell_of_point, *tasks[task], cols, weights)

            # A pass's windows hold different photos and cells: each thread takes a run of them
            # and writes its own photos' cells, so the grid is the one that one thread makes.
            in_parts(solve_windows, len(tasks), WINDOW_THREADS)
            costs.append(float((weight * ((points - centres[cell_of_point]) ** 2).sum(axis=1)).sum()))
            if len(costs) > 2 and costs[-3] - costs[-1] <= self.tolerance * costs[-3]:
                break
        return cell_of_point

    @staticmethod
    def _solve_window(points, cell_of_point, members, row0, row1, col0, col1, cols, weights=None) -> None:
        if len(members) == 0:
            return
        row, col = np.divmod(np.arange((row1 - row0) * (col1 - col0)), col1 - col0)
        centres = np.stack([col + col0, row + row0], axis=1).astype(np.float64)
        local = _exact_lap(points[members], centres, None if weights is None else weights[members])
        cell_of_point[members] = (row[local] + row0) * cols + col[local] + col0


#: Threads that solve a pass's windows (scipy's solver lets go of the GIL): two cores here.
WINDOW_THREADS = 2


def windows(rows: int, cols: int, size: int, shift: int = 0):
    """(row0, row1, col0, col1) of size x size windows tiling the grid, offset by ``shift``."""
    for row0 in range(-shift, rows, size):
        for col0 in range(-shift, cols, size):
            yield max(0, row0), min(rows, row0 + size), max(0, col0), min(cols, col0 + size)


def occupants(cell_of_point: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """rows x cols: the point in each cell, -1 where empty (points with cell -1 left out)."""
    occupant = np.full(rows * cols, -1, dtype=np.int64)
    placed = np.flatnonzero(cell_of_point >= 0)
    occupant[cell_of_point[placed]] = placed
    return occupant.reshape(rows, cols)


#: The solvers by name; "auto" picks exact up to EXACT_MAX_CELLS cells.
SOLVERS = {"exact": ExactSolver, "blocks": BlocksSolver}
#: Exact assignment above this many cells costs more than seconds (docs/benchmarks.md).
EXACT_MAX_CELLS = 2048


def resolve_solver(name: str, n_cells: int):
    """The solver for ``name``; "auto" is exact while it is affordable, else blocks."""
    if name == "auto":
        name = "exact" if n_cells <= EXACT_MAX_CELLS else "blocks"
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}: choose one of auto, {', '.join(SOLVERS)}")
    return SOLVERS[name]()


def representative_subset(coords: np.ndarray, size: int) -> np.ndarray:
    """Indices of ``size`` points spread over the map like the whole set.

    The points are ordered along a Hilbert curve through the map, which keeps
    neighbours together, and every (N / size)-th is kept: a sample stratified
    over the map, so each region keeps its share and none is left out.
    """
    coords = np.asarray(coords, dtype=np.float64)
    order = np.argsort(_hilbert_index(coords), kind="stable")
    picks = np.floor((np.arange(size) + 0.5) * len(coords) / size).astype(np.int64)
    return np.sort(order[picks])


def _hilbert_index(coords: np.ndarray, bits: int = 16) -> np.ndarray:
    """Position of each 2-D point along a Hilbert curve over its bounding box."""
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    side = (1 << bits) - 1
    x, y = (np.rint((coords - low) / span * side).astype(np.int64)).T
    index = np.zeros(len(coords), dtype=np.int64)
    level = 1 << (bits - 1)
    while level > 0:
        rx = (x & level) > 0
        ry = (y & level) > 0
        index += level * level * ((3 * rx) ^ ry)
        # Rotate the quadrant so that the curve continues.
        flip = ~ry & rx
        x = np.where(flip, side - x, x)
        y = np.where(flip, side - y, y)
        x, y = np.where(~ry, y, x), np.where(~ry, x, y)
        level >>= 1
    return index


def spread_cells(count: int, rows: int, cols: int) -> np.ndarray:
    """``count`` cells spread evenly over the grid, the same every time: the points of the R2
    low-discrepancy sequence (Roberts 2018), each in its cell, the first ``count`` distinct."""
    count = min(count, rows * cols)
    plastic = 1.324717957244746  # x^3 = x + 1
    chosen: dict[int, None] = {}
    step = np.arange(4 * count + 16)
    while len(chosen) < count:
        u, v = (0.5 + step / plastic) % 1.0, (0.5 + step / plastic**2) % 1.0
        for cell in (
            np.floor(v * rows).astype(np.int64) * cols + np.floor(u * cols).astype(np.int64)
        ).tolist():
            chosen.setdefault(cell)
            if len(chosen) == count:
                break
        step = step + len(step)
    return np.fromiter(chosen, dtype=np.int64, count=count)


def assign_to_grid(
    coords: np.ndarray, rows: int, cols: int, *, solver: str = "auto", subset: bool = False, room: int = 0
) -> tuple[np.ndarray, float, str]:
    """Cell index (row-major) of each point, the total squared displacement, and the solver used.

    With more points than cells, ``subset`` keeps a representative subset and
    gives the others cell -1; without it that is an error. ``room``: cells left
    empty, spread evenly among the photos, for photos added later
    (``spread_cells`` places a stand-in point in each; the solver places them
    with the photos, and their cells stay empty).
    """
    n_points = len(coords)
    cell_of_image = np.full(n_points, -1, dtype=np.int32)
    placed = np.arange(n_points)
    if n_points > rows * cols:
        if not subset:
            raise ValueError(f"{n_points} points do not fit {rows * cols} cells and subset is False")
        placed = representative_subset(coords, rows * cols)
    chosen = resolve_solver(solver, rows * cols)
    room = min(room, rows * cols - len(placed))
    points = fit_to_grid(np.asarray(coords)[placed], rows, cols, fill=len(placed) + room)
    stand_ins = cell_centres(rows, cols)[spread_cells(room, rows, cols)]
    cells = chosen.solve(np.concatenate([points, stand_ins]), rows, cols)[: len(points)]
    cell_of_image[placed] = cells
    total = float(((points - cell_centres(rows, cols)[cells]) ** 2).sum())
    return cell_of_image, total, chosen.name


def layout(
    coords: np.ndarray,
    embeddings: np.ndarray,
    rows: int,
    cols: int,
    *,
    solver: str = "auto",
    subset: bool = False,
    refine_grid: bool = True,
    room: int = 0,
    unit_rows: bool = False,
    keep_basis: bool = False,
    on_progress=lambda fraction: None,
):
    """The whole stage on arrays: cell of each image (-1: left out) and the results to record;
    with ``keep_basis``, also refinement's basis (``refine.refine_layout``), which the stage
    keeps for the updates of this grid (None: not refined, or no basis to keep).

    ``unit_rows``: the embeddings are float32 rows of unit length already (the stage scales
    its own copy in place: no second copy of N x D). ``on_progress(fraction)`` is told as
    each step ends (assignment, refinement)."""
    if len(coords) != len(embeddings):
        raise ValueError(f"coords has {len(coords)} points for {len(embeddings)} embeddings")
    cell_of_image, total_cost, solver_used = assign_to_grid(
        coords, rows, cols, solver=solver, subset=subset, room=room
    )
    on_progress(0.3)
    vectors = embeddings if unit_rows else normalise(np.asarray(embeddings, dtype=np.float32))
    placed = np.flatnonzero(cell_of_image >= 0)
    basis = None
    if refine_grid:
        # The room stays where it was spread: refinement swaps photos, never a photo and a hole.
        movable = None
        if room:
            movable = np.zeros(rows * cols, dtype=bool)
            movable[cell_of_image[placed]] = True
        cell_of_image, basis = refine.refine_layout(
            vectors, cell_of_image, rows, cols, movable=movable, return_basis=True,
            on_progress=lambda done: on_progress(0.3 + 0.6 * done),
        )  # fmt: skip
    on_progress(0.9)
    everyone = len(placed) == len(vectors)  # then no copy of N x D to measure them
    after = quality.layout_quality(vectors if everyone else vectors[placed], cell_of_image[placed], cols)
    results = {
        "images": len(coords),
        "placed": len(placed),
        "left_out": np.flatnonzero(cell_of_image < 0).tolist(),
        "rows": rows,
        "cols": cols,
        "empty_cells": rows * cols - len(placed),
        "solver": solver_used,
        "solver_requested": solver,
        "cost": total_cost,
        "rms_displacement_cells": float(np.sqrt(total_cost / max(1, len(placed)))),
        "refined": refine_grid,
        "refinement": refine.settings() if refine_grid else None,
        "quality": after,
    }
    if keep_basis:
        return cell_of_image.astype(np.int32), results, basis
    return cell_of_image.astype(np.int32), results


#: In an update of a grid with room (``--room``), moving a staying photo costs this many times
#: what moving a new one does: a new photo takes a free cell a little further from its kin rather
#: than push a row of others aside (docs/benchmarks.md, "Stable maps").
STAY_WEIGHT = 4.0


def with_room(n_images: int, room: float) -> int:
    """Cells for ``n_images`` photos with the share ``room`` of them left empty."""
    return max(n_images, math.ceil(n_images / (1.0 - room))) if room > 0 else n_images


#: Cells around every change that refinement may still swap.
REFINE_AROUND = 2
#: What a staying photo adds to refinement's objective per cell it is away from its cell
#: (the objective's terms are distances between unit vectors, about 1 for unrelated photos),
#: and the cells that leaving its cell at all counts as on top: 0.2 to leave, 0.1 a cell.
#: On emoji with room 0.1, 10% added, seeds 0-2: 88% kept their cell at 0.985 of a fresh
#: layout's DPQ_16; 0.2 a cell alone, 76% at 0.992; frozen in place, 86% at 0.967
#: (docs/benchmarks.md, "Stable maps").
STAY_COST = 0.1
LEAVE_CELLS = 2.0
#: The blocks solver's window in an update: the larger one, so that the room made for new
#: photos spreads as far as it did when updates were measured (docs/benchmarks.md).
UPDATE_WINDOW = 16
#: Passes of those windows in an update. Each pass after the fourth still moved a hundred or
#: so photos at 10,000 (1,000 new), a cell each, for nothing that shows: the same share kept
#: their cell, the same kin within 3 cells, DPQ_16 within 0.0004 (seeds 0 and 1, and 1% new),
#: at 0.1-0.3 s less (``benchmarks/stable_update.py --set assign.UPDATE_PASSES=12``).
UPDATE_PASSES = 4


def grown_shape(rows: int, cols: int, n_images: int, aspect: tuple[float, float]) -> tuple[int, int]:
    """The earlier grid, grown a column or a row at a time (whichever keeps ``aspect``
    closer) until it holds ``n_images``; never smaller than it was."""
    width, height = aspect
    while rows * cols < n_images:
        if cols * height < rows * width:
            cols += 1
        else:
            rows += 1
    return rows, cols


def _disk(radius: int) -> np.ndarray:
    """(d_row, d_col) of every offset within ``radius`` cells, nearest first."""
    steps = np.arange(-radius, radius + 1)
    d_row, d_col = (a.ravel() for a in np.meshgrid(steps, steps, indexing="ij"))
    inside = d_row**2 + d_col**2 <= radius**2
    offsets = np.stack([d_row[inside], d_col[inside]], axis=1)
    return offsets[np.argsort((offsets**2).sum(axis=1), kind="stable")]


def _around(cells_rc: np.ndarray, rows: int, cols: int, radius: int) -> np.ndarray:
    """Every cell within ``radius`` cells of one of ``cells_rc`` ((row, col) pairs)."""
    reached = np.rint(cells_rc).astype(np.int64)[:, None, :] + _disk(radius)[None, :, :]
    row, col = reached[..., 0].ravel(), reached[..., 1].ravel()
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    return np.unique(row[inside] * cols + col[inside])


def _first_cells(place: np.ndarray, home: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A complete first assignment for an update: each staying photo in its cell, each new
    one in the free cell nearest its place (in order of the images), however far."""
    from scipy.spatial import cKDTree

    cells = home.astype(np.int64).copy()
    new = np.flatnonzero(home < 0)
    taken = np.zeros(rows * cols, dtype=bool)
    taken[home[home >= 0]] = True
    free = np.flatnonzero(~taken)
    if len(new) == 0:
        return cells
    free_rc = np.stack(np.divmod(free, cols), axis=1).astype(np.float64)
    tree = cKDTree(free_rc)
    used = np.zeros(len(free), dtype=bool)
    for image in new:
        k = 8
        while True:
            _, nearest = tree.query(place[image], k=min(k, len(free)))
            nearest = np.atleast_1d(nearest)
            open_ = nearest[~used[nearest]]
            if len(open_):
                used[open_[0]] = True
                cells[image] = free[open_[0]]
                break
            k *= 4
    return cells


def _kin(vectors: np.ndarray, home: np.ndarray, kin: np.ndarray | None) -> np.ndarray:
    """Each new photo's (``home`` -1) nearest staying photo in the embedding (cosine): from
    ``kin`` where it was found among the same staying photos, else searched."""
    new, staying = home < 0, home >= 0
    kin = None if kin is None else np.asarray(kin)
    usable = kin is not None and kin.shape == home.shape and np.issubdtype(kin.dtype, np.integer)
    if usable and np.array_equal(kin < 0, staying):  # a state of other photos is not used
        found = kin[new]
        if (found < len(home)).all() and staying[found].all():
            return found
    return nearest_unit_rows(vectors[new], vectors, among=staying)[0][:, 0]


def update_layout(
    coords: np.ndarray,
    embeddings: np.ndarray,
    home: np.ndarray,
    rows: int,
    cols: int,
    *,
    refine_grid: bool = True,
    stay_weight: float = 1.0,
    unit_rows: bool = False,
    vacated: np.ndarray | None = None,
    basis=None,
    kin: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """An earlier grid updated for a changed photo set: the cell of each image and the results.

    ``home`` is each image's cell on the earlier grid, placed in this one (-1:
    a new photo). Every image gets a place to be: a staying photo its own
    cell, a new photo the cell of its nearest staying photo in the embedding
    (cosine), its kin; the kin on the t-SNE map (``coords``, where reduce placed
    the new photos) were further: on emoji, 10% added, 49% of new photos
    landed within 3 cells of their kin that way, 86% this way, at a slightly
    higher DPQ_16 (docs/benchmarks.md, "Stable maps"). The images then go to the cells with the least
    squared displacement from those places, a staying photo's counted
    ``stay_weight`` times (exact up to ``EXACT_MAX_CELLS``; above, the blocks
    solver's windows improve a first assignment that puts the new photos in
    the nearest free cells), so a photo moves only as far as the room made
    for new photos demands. Refinement then swaps the photos within
    ``REFINE_AROUND`` cells of a change, a staying photo charged ``STAY_COST``
    for each cell it is away from its own; nothing further from a change moves.
    ``vacated``: the cells of removed photos; refinement runs around them too, so that the
    photos beside a hole may re-sort for the neighbours they lost (only for a clear gain, as
    above). ``basis``: refinement's basis from the fresh layout (``layout(keep_basis=True)``),
    so that an update swaps on the grid's own components without a PCA of its own (about a
    third of a second at 10,000 photos). ``kin``: reduce's nearest staying row of each new row
    (``reduce.place_new_points``), used where its staying photos are this grid's, so that the
    search is not made twice. ``unit_rows``: as ``layout``'s.
    """
    n_images, n_cells = len(home), rows * cols
    kept = np.flatnonzero(home >= 0)
    new = np.flatnonzero(home < 0)
    centre_rc = np.stack(np.divmod(np.arange(n_cells), cols), axis=1).astype(np.float64)
    place = np.empty((n_images, 2))
    place[kept] = centre_rc[home[kept]]
    vectors = embeddings if unit_rows else normalise(np.asarray(embeddings, dtype=np.float32))
    if len(new):
        place[new] = centre_rc[home[_kin(vectors, home, kin)]]
    points = place[:, ::-1].copy()  # the solvers take (x = col, y = row)
    weights = np.where(home >= 0, stay_weight, 1.0)
    if n_cells <= EXACT_MAX_CELLS:  # the optimum, while it takes a second
        solver = resolve_solver("exact", n_cells)
        cell_of_image = solver.solve(points, rows, cols, weights)
    else:  # from the earlier grid, better window by window: far from the changes nothing moves
        solver = BlocksSolver(window=UPDATE_WINDOW, max_passes=UPDATE_PASSES)
        cell_of_image = solver.improve(points, _first_cells(place, home, rows, cols), rows, cols, weights)
    placed_by_solver = cell_of_image.copy()
    movable = np.zeros(n_cells, dtype=bool)
    if refine_grid:
        # What changed: the cells of the new photos, and where moved photos went and came from.
        moved = kept[cell_of_image[kept] != home[kept]]
        gone = np.zeros(0, dtype=np.int64) if vacated is None else np.asarray(vacated, dtype=np.int64)
        changed = np.concatenate([cell_of_image[new], cell_of_image[moved], home[moved], gone])
        if len(changed):
            movable[_around(centre_rc[changed], rows, cols, REFINE_AROUND)] = True
            # A staying photo still in its cell stays: refinement sorts the new and moved ones
            # among themselves and the empty cells around them.
            # A staying photo may move too, but pays STAY_COST a cell for being away from its
            # cell: it leaves only for a clear gain, and one the solver moved goes back if it can.
            # A new photo's own cell, for that cost, is its kin's: it stays near it, not pushed away.
            anchor = home.copy()
            if len(new):
                anchor[new] = (place[new, 0] * cols + place[new, 1]).astype(np.int64)
            cell_of_image = refine.refine_layout(
                vectors, cell_of_image, rows, cols, movable=movable, home=anchor, stay_cost=STAY_COST,
                leave=LEAVE_CELLS, basis=basis,
            )  # fmt: skip
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64)
    moved = cell_of_image[kept] != home[kept]
    distance = np.sqrt(((centre_rc[cell_of_image[kept]] - centre_rc[home[kept]]) ** 2).sum(axis=1))[moved]
    results = {
        "images": n_images,
        "placed": n_images,
        "left_out": [],
        "rows": rows,
        "cols": cols,
        "empty_cells": n_cells - n_images,
        "solver": solver.name,
        "new": len(new),
        "kept_cell": int((~moved).sum()),
        "moved": int(moved.sum()),
        "moved_median_cells": float(np.median(distance)) if len(distance) else 0.0,
        "moved_largest_cells": float(distance.max()) if len(distance) else 0.0,
        "refined": refine_grid,
        "refinement": refine.settings() if refine_grid else None,
        "refined_cells": int(movable.sum()),
        "swapped_by_refinement": int((cell_of_image != placed_by_solver).sum()),
        "quality": quality.layout_quality(vectors, cell_of_image, cols),
    }
    return cell_of_image.astype(np.int32), results


def _keys_of(embeddings: np.ndarray, map_state, embeddings_hash: str) -> np.ndarray:
    """``row_keys(embeddings)``: reduce's, where its state holds the keys of this very file
    (the same SHA-256), else hashed here."""
    if map_state is not None and map_state[0].get("embeddings") == embeddings_hash:
        keys = map_state[1].get("keys")
        if keys is not None and keys.dtype == np.uint64 and keys.shape == (len(embeddings),):
            return keys
    return row_keys(embeddings)


def update_text(results: dict) -> str:
    """What an update kept, moved and added, in words, for summaries and ``status``."""
    moved = (
        f", {results['moved']} moved (median {results['moved_median_cells']:.1f}, largest "
        f"{results['moved_largest_cells']:.1f} cells)"
        if results["moved"]
        else ""
    )
    added = f"{results['new']} new, {results['removed']} removed"
    return f"{results['kept_cell']} photos kept their cell{moved}, {added}"


def quality_text(numbers: dict) -> str:
    """The layout quality numbers in words, for summaries and ``status``."""
    authors = f" ({numbers['dpq_authors']:.3f} as its authors count ties)" if "dpq_authors" in numbers else ""
    return (
        f"DPQ_{numbers['dpq_p']} {numbers['dpq']:.3f}{authors}, neighbourhood preservation "
        f"(k={numbers['k']}) {numbers['neighbourhood_preservation']:.3f}"
    )


#: The most cells a grid may have per image: more is an empty picture, and costs
#: memory and time in proportion to the cells.
MAX_CELLS_PER_IMAGE = 64
#: Grids up to this many cells are allowed whatever the number of images.
MAX_CELLS_ALWAYS = 4096


def _grid_options(options: AssignOptions) -> dict:
    """The options that an update must share with the grid it updates (else: afresh)."""
    pair = lambda value: list(value) if value else None  # noqa: E731
    return {"grid": pair(options.grid), "aspect": pair(options.aspect), "solver": options.solver,
            "refine": options.refine, "room": options.room}  # fmt: skip


class AssignStage(Stage):
    """``coords.npy`` (and ``embeddings.npy``, for refinement) -> ``grid.npy``; an earlier grid
    is updated in place when the photo set changes (``update_layout``)."""

    name = "assign"
    options_type = AssignOptions
    reads = (COORDS, EMBEDDINGS)
    writes = (GRID,)  # and ASSIGN_STATE: bookkeeping for the next update, not an artifact to guard

    def code_parameters(self, options: AssignOptions) -> dict:
        # Refinement's settings stand for its code: a grid refined by an older version is stale.
        return {"refinement": refine.settings() if options.refine else None}

    def may_skip(self, options: AssignOptions) -> bool:
        return not options.relayout  # a relayout is asked for: it runs even when fresh

    def plan_update(
        self, workdir: Workdir, options: AssignOptions, keys: np.ndarray, map_layout, embeddings_width: int
    ):
        """The earlier grid's shape and each image's earlier cell (-1: new), or why to start afresh."""
        if options.relayout:
            return None, "asked (--relayout)"
        if options.subset:
            return None, "a subset is laid out afresh"
        loaded = load_state(workdir.file(ASSIGN_STATE))
        if loaded is None:
            return None, "no earlier grid"
        meta, arrays = loaded
        if map_layout is None or meta.get("layout") != map_layout:
            return None, "the map was laid out afresh"
        if meta.get("options") != _grid_options(options):
            return None, "the grid's options changed"
        old_keys, old_cells = arrays.get("keys"), arrays.get("cells")
        rows, cols = meta.get("rows"), meta.get("cols")
        if (old_keys is None or old_cells is None or old_cells.shape != old_keys.shape
                or not all(isinstance(n, int) and n > 0 for n in (rows, cols))):  # fmt: skip
            return None, "the earlier grid's state is damaged"
        earlier_row = match_rows(old_keys, keys)
        earlier_cell = np.where(earlier_row >= 0, old_cells[np.maximum(earlier_row, 0)], -1)
        if not (earlier_cell >= 0).any():
            return None, "no photo of the earlier grid is left"
        if options.grid is None and rows * cols > max(MAX_CELLS_ALWAYS, 2 * len(keys)):
            return None, "most photos of the earlier grid are gone"
        gone = np.ones(len(old_keys), dtype=bool)
        gone[earlier_row[earlier_row >= 0]] = False
        mean, directions = arrays.get("basis_mean"), arrays.get("basis_directions")
        basis = None
        if mean is not None and directions is not None and directions.shape[:1] == mean.shape == (
            embeddings_width,
        ):  # fmt: skip
            basis = (mean, directions)
        return (rows, cols, earlier_cell, old_cells[gone], basis), None

    def compute(self, workdir: Workdir, options: AssignOptions, context: Context, prepared) -> dict:
        embeddings = workdir.load_embeddings()
        coords = workdir.load_coords(len(embeddings))
        self.check_grid(len(coords), options)
        map_state = load_state(workdir.file(REDUCE_STATE))
        keys = _keys_of(embeddings, map_state, file_hash(workdir.require(EMBEDDINGS)))
        # Scaled in place (the stage's own array): at a million photos a copy would be 4.9 GB.
        embeddings = normalise(np.asarray(embeddings, dtype=np.float32), copy=False)
        map_layout = map_state[0].get("layout") if map_state else None
        update, why_fresh = self.plan_update(workdir, options, keys, map_layout, embeddings.shape[1])
        if update is not None:
            # The new photos' kin, as reduce found them placing them on this very photo set.
            same_photos = map_state is not None and np.array_equal(map_state[1].get("keys"), keys)
            kin = map_state[1].get("kin") if same_photos else None
            results = self.update(coords, embeddings, options, update, kin)
        else:
            results = self.fresh(workdir, coords, embeddings, options, context)
            results["why"] = why_fresh
        cell_of_image = results.pop("cell_of_image")
        basis = results.pop("basis")
        meta = {"layout": map_layout, "rows": results["rows"], "cols": results["cols"],
                "options": _grid_options(options)}  # fmt: skip
        # The state first: killed before grid.npy, a rerun finds every photo in its new cell.
        # Refinement's basis from the fresh layout, for every update of this grid to swap on.
        kept = {} if basis is None else {"basis_mean": basis[0], "basis_directions": basis[1]}
        save_state(workdir.file(ASSIGN_STATE), meta, keys=keys, cells=cell_of_image, **kept)
        save_npy(workdir.file(GRID), cell_of_image)
        return results

    def update(self, coords, embeddings, options: AssignOptions, update, kin=None) -> dict:
        old_rows, old_cols, earlier_cell, removed_cells, basis = update
        rows, cols = options.grid or grown_shape(
            old_rows, old_cols, with_room(len(coords), options.room / 2), options.aspect or (1.0, 1.0)
        )
        # A grown grid keeps the earlier one in its middle: it grows at every edge alike.
        row_offset, col_offset = (rows - old_rows) // 2, (cols - old_cols) // 2
        old_row, old_col = np.divmod(earlier_cell, old_cols)
        home = np.where(earlier_cell >= 0, (old_row + row_offset) * cols + old_col + col_offset, -1)
        gone_row, gone_col = np.divmod(np.asarray(removed_cells, dtype=np.int64), old_cols)
        vacated = (gone_row + row_offset) * cols + gone_col + col_offset
        cell_of_image, results = update_layout(
            coords, embeddings, home, rows, cols, refine_grid=options.refine,
            stay_weight=STAY_WEIGHT if options.room else 1.0, unit_rows=True, vacated=vacated, basis=basis,
            kin=kin,
        )  # fmt: skip
        return {**results, "mode": "update", "removed": len(removed_cells), "grew_from": [old_rows, old_cols],
                "offset": [row_offset, col_offset], "cell_of_image": cell_of_image,
                "basis": basis}  # fmt: skip

    def fresh(self, workdir: Workdir, coords, embeddings, options: AssignOptions, context: Context) -> dict:
        cells_wanted = with_room(len(coords), options.room)
        rows, cols = options.grid or grid_shape(cells_wanted, options.aspect or (1.0, 1.0))
        cells = rows * cols
        if options.solver == "auto" and resolve_solver("auto", cells).name != "exact":
            context.on_message(
                f"assign: {cells} cells is above the {EXACT_MAX_CELLS} that exact assignment handles "
                "in seconds; using the scalable 'blocks' solver (--solver exact forces it)"
            )
        cell_of_image, results, basis = layout(
            coords, embeddings, rows, cols, solver=options.solver, subset=options.subset,
            refine_grid=options.refine, room=cells_wanted - len(coords), unit_rows=True, keep_basis=True,
            on_progress=lambda done: context.on_progress("assign", done),
        )  # fmt: skip
        if results["left_out"] and workdir.file(IMAGES).is_file():
            listing = workdir.load_images()["images"]
            if len(listing) == len(coords):
                results["left_out_paths"] = [listing[i]["path"] for i in results["left_out"]]
        return {**results, "mode": "fresh", "cell_of_image": cell_of_image, "basis": basis}

    @staticmethod
    def check_grid(n_images: int, options: AssignOptions) -> None:
        """A fixed grid too small for the photos (without subset), or with far too many cells."""
        if options.grid is None:
            return  # the grid made for the photos always fits them
        rows, cols = options.grid
        cells = rows * cols
        if n_images > cells and not options.subset:
            raise OptionMismatch(
                "grid",
                f"{n_images} images do not fit a {rows}x{cols} grid ({cells} cells): choose a larger "
                f"grid, leave it out, or add {{subset}} to keep a representative {cells} of them",
            )
        if cells > max(MAX_CELLS_ALWAYS, MAX_CELLS_PER_IMAGE * n_images):
            raise OptionMismatch(
                "grid",
                f"a {rows}x{cols} grid has {cells:,} cells for {n_images} images, more than "
                f"{MAX_CELLS_PER_IMAGE} a photo: choose a smaller grid, or leave it out",
            )

    def describe(self, summary: dict) -> str:
        if summary.get("mode") == "update":
            return (
                f"assign: grid updated, {summary['rows']}x{summary['cols']}: {update_text(summary)}, "
                + quality_text(summary["quality"])
            )
        left_out = f", {len(summary['left_out'])} left out" if summary.get("left_out") else ""
        return (
            f"assign: {summary['placed']} images on a {summary['rows']}x{summary['cols']} grid{left_out}, "
            f"{summary['empty_cells']} empty cells, solver {summary['solver']}, "
            + quality_text(summary["quality"])
        )


STAGE = AssignStage()


def run(
    workdir: Workdir,
    options: AssignOptions | dict | None = None,
    context: Context | None = None,
    *,
    skip_if_fresh: bool = False,
) -> dict:
    """Snap ``coords.npy`` onto a grid; returns a summary."""
    return STAGE.run(workdir, options, context, skip_if_fresh=skip_if_fresh)


def save_grid(workdir: Workdir, cell_of_image: np.ndarray, rows: int, cols: int) -> dict:
    """Record a grid made elsewhere (a notebook, another tool) as assign's output, so that
    render and export take it; ``coords.npy`` and ``embeddings.npy`` must be there."""
    started = time.perf_counter()
    options = AssignOptions(grid=(rows, cols), refine=False)  # not refined here: no upgrade makes it stale
    plan = STAGE.plan(workdir, options)
    cells = np.asarray(cell_of_image, dtype=np.int32)
    workdir.file(ASSIGN_STATE).unlink(missing_ok=True)  # an update must not start from a grid it replaced
    save_npy(workdir.file(GRID), cells)
    workdir.load_grid(len(cells), rows * cols)  # the same checks as render's
    results = {"rows": rows, "cols": cols, "placed": int((cells >= 0).sum()), "imported": True}
    return workdir.finish_stage(STAGE.name, plan.parameters, plan.inputs, {GRID: workdir.file(GRID)}, started,
                                results, options=options.to_dict())  # fmt: skip


def grid_of(workdir: Workdir, n_images: int) -> tuple[np.ndarray, int, int]:
    """Load ``grid.npy`` with its shape, checked against the number of images and the grid."""
    manifest = workdir.read_manifest(STAGE.name)
    if manifest is None:
        raise StageError(f"{workdir.manifest_path(STAGE.name)} is missing or damaged: "
                         f"run `gridtsne assign -w {workdir.path}`")  # fmt: skip
    rows, cols = manifest["results"].get("rows"), manifest["results"].get("cols")
    if not all(isinstance(n, int) and n > 0 for n in (rows, cols)):
        raise StageError(
            f"{workdir.manifest_path(STAGE.name)} is damaged: run `gridtsne assign -w {workdir.path}`"
        )
    return workdir.load_grid(n_images, rows * cols), rows, cols
