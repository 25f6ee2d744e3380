"""Improve a grid layout against the embedding itself: sorting, then exact swaps.

The assignment places images where the 2-D map puts them; the map is a
compression of the embedding, so neighbours on the grid are close in the map
but not always the closest in the embedding, and t-SNE's global arrangement of
groups (bands, a group split in two) is often not the most compact one on a
grid. Refinement works on the grid directly, in two steps.

1. **Sorting**, in the manner of Linear Assignment Sorting and its fast
   variant FLAS (Barthel, Hezel, Jung and Schall, Computer Graphics Forum
   2023), started from the t-SNE assignment instead of from random. Each pass
   smooths the grid of embedding vectors with a box filter, so that every cell
   holds what its neighbourhood looks like, cuts the grid into sets of 8 x 8
   cells spaced ``radius / 4`` apart (so a set spans about twice the filter
   radius), and re-assigns the images of each set to its cells by exact
   linear assignment against the smoothed vectors. The radius descends from a
   third of the grid's longer side to 1: the first passes move whole groups
   into compact regions, the last ones order neighbours. A start at a third
   keeps t-SNE's arrangement as the frame: started from random, the same
   passes score lower; started at half the side, they forget the start and
   score the same from random as from t-SNE (benchmarks/refine_ablation.py).
2. **Swaps**: exact local search on the objective DPQ_16 weighs most, the
   embedding distance of every image to its grid neighbours, the four nearest
   at weight 1 and the rings at distances sqrt 2, 2 and sqrt 5 at the weights
   DPQ_16's p-norm gives them (``RING_WEIGHTS``). Every pair of images up to
   two cells apart is tried; a swap is made only when it lowers the objective
   exactly, so this step can only improve it. Pairs far enough apart not to
   see each other are evaluated together, so a sweep is a few hundred numpy
   operations at any N.

Sorting is randomised (where the sets of cells fall) and the swaps stop at a
local optimum, so different sorting seeds end in different layouts, a
percent or so of DPQ_16 apart. Small grids are therefore refined from
``starts_for(N)`` seeds and the layout with the lowest swap objective kept
(``neighbour_cost``); the number of starts is bounded so that N x starts
stays within ``START_IMAGES``, which keeps large grids at one start and
reduce + assign of 1,024 images within its time (docs/benchmarks.md).

Every set is a complete assignment of the images it holds to the cells they
hold, and swaps exchange two images, so the layout stays complete and empty
cells stay where the assignment put them (at the map's sparse edges, not as
holes among the photos). Seeded: the same input gives the same layout.
"""

from __future__ import annotations

import numpy as np

from gridtsne.vectors import pca

#: Principal components the sorting works in (the smoothing and matching cost
#: O(N x dims) a pass); the swaps work in ``SWAP_DIMS``, which keep more of the
#: fine structure that decides which of two similar images is nearer
#: (benchmarks/refine_ablation.py compares 64, 256 and all dimensions).
SORT_DIMS = 64
SWAP_DIMS = 256
#: First filter radius, as a share of the grid's longer side.
START_SHARE = 1 / 3
#: Each pass's radius is this times the last's, down to 1; then ``FINAL_PASSES`` at radius 1.
RADIUS_DECAY = 0.96
FINAL_PASSES = 3
#: Side of the sets of cells whose images are re-assigned together.
SET_SIDE = 8
#: Weight of a neighbour in the swap objective, by squared grid distance: how much
#: DPQ_16 moves with the mean embedding distance of that ring of grid neighbours.
#: With g_k the gain over random at rank k, rank i's share is sum_{k>=i} g_k^15 / k;
#: averaged over each ring's ranks on the 4,096 mixture's curve, relative to the
#: nearest ring, rounded. Farther rings weigh under 0.1 and are left out.
RING_WEIGHTS = {1: 1.0, 2: 0.41, 4: 0.23, 5: 0.12}
#: Weight of the linear (every neighbour) part of the swap objective against the nearest part.
SMOOTH_SHARE = 0.5
#: Weights of an image's four nearest grid neighbours (the cells beside it), sorted by their
#: embedding distance to it, nearest first. DPQ_16 as its authors compute it orders grid
#: neighbours at equal distance nearest first, and its p-norm then depends almost only on the
#: distance to the nearest of the four (rank i's share sum_{k>=i} g_k^15 / k, as above).
NEAREST_WEIGHTS = (1.0, 0.08, 0.012, 0.004)
#: Swaps are tried between images up to this many cells apart (in each axis).
SWAP_REACH = 2
#: Long-range moves: embedding neighbours (nearest first) each image tries to bring beside it,
#: and rounds of such moves.
REUNITE_NEIGHBOURS = 8
REUNITE_ROUNDS = 4
#: Principal components the embedding neighbours are searched in (their distances are then
#: taken in ``SWAP_DIMS``): 32 find the same moves as 256 at an eighth of the cost.
NEIGHBOUR_DIMS = 32
REUNITE_SLACK = 1.0
#: Sweeps over all pairs; they stop early when one makes no swap.
MAX_SWEEPS = 8
SEED = 0
#: Refinements from seeds SEED, SEED + 1, ... while N x starts stays within
#: START_IMAGES, at most MAX_STARTS (one at 1,001 images and above).
START_IMAGES = 2000
MAX_STARTS = 3


def settings() -> dict:
    """Every refinement setting, for assign.json."""
    return {
        "sort_dims": SORT_DIMS,
        "start_share": round(START_SHARE, 4),
        "radius_decay": RADIUS_DECAY,
        "final_passes": FINAL_PASSES,
        "set_side": SET_SIDE,
        "swap_dims": SWAP_DIMS,
        "ring_weights": {str(d2): w for d2, w in RING_WEIGHTS.items()},
        "swap_reach": SWAP_REACH,
        "max_sweeps": MAX_SWEEPS,
        "seed": SEED,
        "start_images": START_IMAGES,
        "max_starts": MAX_STARTS,
    }


def radius_schedule(rows: int, cols: int, start_share: float = START_SHARE) -> tuple[int, ...]:
    """Filter radii of the sorting passes, coarse to fine."""
    radius, radii = max(1.0, max(rows, cols) * start_share), []
    while radius >= 1:
        radii.append(int(round(radius)))
        radius *= RADIUS_DECAY
    return tuple(radii + [1] * FINAL_PASSES)


def box_sum(grid: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 box around every cell (clipped at the edges): a running
    sum down the rows, then across the columns (float64, so large grids keep precision)."""
    summed = np.asarray(grid, dtype=np.float64)
    for axis in (0, 1):
        length = summed.shape[axis]
        running = np.concatenate(
            [np.zeros_like(summed.take([0], axis=axis)), summed.cumsum(axis=axis)], axis=axis
        )
        high = np.minimum(np.arange(length) + radius + 1, length)
        low = np.maximum(np.arange(length) - radius, 0)
        summed = running.take(high, axis=axis) - running.take(low, axis=axis)
    return summed


def box_mean(grid: np.ndarray, weight: np.ndarray, radius: int) -> np.ndarray:
    """Mean of the occupied cells in a (2r+1)^2 box around every cell (rows x cols x D)."""
    total = box_sum(grid * weight[..., None], radius)
    count = box_sum(weight, radius)
    return (total / np.maximum(count, 1e-12)[..., None]).astype(np.float32)


def projected(vectors: np.ndarray, dims: int) -> np.ndarray:
    """``vectors`` on their first ``dims`` principal components (as they are if narrower)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[1] <= dims:
        return vectors
    return pca(vectors, dims).astype(np.float32)


def set_of_cell(rows: int, cols: int, spacing: int, rng: np.random.Generator) -> np.ndarray:
    """A set number for every cell (row-major): sets of up to SET_SIDE x SET_SIDE cells,
    ``spacing`` apart, tiling the grid from a random offset."""
    span = SET_SIDE * spacing
    row = np.arange(rows) + rng.integers(span)
    col = np.arange(cols) + rng.integers(span)
    # A cell's set: the block of span x span it lies in, and its phase in that block's lattice.
    row_key = (row // span) * spacing + row % spacing
    col_key = (col // span) * spacing + col % spacing
    return (row_key[:, None] * (col_key.max() + 1) + col_key[None, :]).ravel()


def sort_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    radii: tuple[int, ...] | None = None,
    seed: int = SEED,
) -> np.ndarray:
    """Step 1: LAS-style sorting passes over sets of cells (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    radii = radius_schedule(rows, cols) if radii is None else radii
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, dtype=np.float32)
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64).copy()
    placed = np.flatnonzero(cell_of_image >= 0)
    dimension = vectors.shape[1]
    weight = np.zeros(rows * cols, dtype=np.float32)
    weight[cell_of_image[placed]] = 1.0  # empty cells never move, so this stays
    for radius in radii:
        grid = np.zeros((rows * cols, dimension), dtype=np.float32)
        grid[cell_of_image[placed]] = vectors[placed]
        target = box_mean(grid.reshape(rows, cols, dimension), weight.reshape(rows, cols), radius)
        target = target.reshape(rows * cols, dimension)
        target_sq = (target**2).sum(axis=1)
        occupant = np.full(rows * cols, -1, dtype=np.int64)
        occupant[cell_of_image[placed]] = placed
        cells = np.flatnonzero(occupant >= 0)  # images trade only the cells they hold
        set_ids = set_of_cell(rows, cols, max(1, round(2 * radius / SET_SIDE)), rng)[cells]
        order = np.argsort(set_ids, kind="stable")
        cells, set_ids = cells[order], set_ids[order]
        for members in np.split(cells, np.flatnonzero(np.diff(set_ids)) + 1):
            if len(members) < 2:
                continue
            images = occupant[members]
            # ||x - t||^2 without the ||x||^2 that every cell shares.
            cost = target_sq[members][None, :] - 2.0 * (vectors[images] @ target[members].T)
            image_index, cell_index = linear_sum_assignment(cost)
            cell_of_image[images[image_index]] = members[cell_index]
    return cell_of_image


class _NeighbourDistances:
    """The embedding distance from the image in every cell to the images in the cells
    around it (a (2R+1)^2 stencil), kept up to date as images swap.

    Cells are indexed on a grid padded by R on every side, so that a
    neighbour's index is the cell's plus a constant and needs no bounds check.
    """

    def __init__(self, vectors: np.ndarray, cell_of_image: np.ndarray, rows: int, cols: int, reach: int):
        self.reach, self.width = reach, cols + 2 * reach
        self.side = 2 * reach + 1
        n_images = len(vectors)
        # Row n_images is a zero vector that stands for an empty cell.
        self.vectors = np.vstack(
            [np.asarray(vectors, dtype=np.float32), np.zeros((1, vectors.shape[1]), dtype=np.float32)]
        )
        self.squares = (self.vectors.astype(np.float64) ** 2).sum(axis=1)
        self.empty = n_images
        self.occupant = np.full((rows + 2 * reach) * self.width, n_images, dtype=np.int64)
        placed = np.flatnonzero(cell_of_image >= 0)
        row, col = np.divmod(cell_of_image[placed], cols)
        self.occupant[self.padded(row, col)] = placed
        steps = np.arange(-reach, reach + 1)
        self.offsets = (steps[:, None] * self.width + steps[None, :]).ravel()
        self.inner = self.padded(*np.divmod(np.arange(rows * cols), cols))
        self.distance = np.zeros((len(self.occupant), self.side**2))
        self.refresh(self.inner)

    def padded(self, row, col):
        return (np.asarray(row) + self.reach) * self.width + np.asarray(col) + self.reach

    def slot(self, d_row: int, d_col: int) -> int:
        return (d_row + self.reach) * self.side + d_col + self.reach

    def refresh(self, cells: np.ndarray, chunk: int = 512) -> None:
        """Recompute the stencil rows of ``cells`` and the mirrored entries that see them."""
        mirror = self.side**2 - 1 - np.arange(self.side**2)
        for start in range(0, len(cells), chunk):
            part = cells[start : start + chunk]
            image = self.occupant[part]
            around = self.occupant[part[:, None] + self.offsets[None, :]]
            squared = (
                self.squares[image][:, None]
                + self.squares[around]
                - 2.0 * np.einsum("bd,bkd->bk", self.vectors[image], self.vectors[around])
            )
            rows = np.sqrt(np.maximum(squared, 0.0))
            rows[(image == self.empty)[:, None] | (around == self.empty)] = 0.0
            self.distance[part] = rows
            self.distance[part[:, None] + self.offsets[None, :], mirror[None, :]] = rows

    def cell_of_image(self) -> np.ndarray:
        cells = np.full(self.empty, -1, dtype=np.int64)
        image = self.occupant[self.inner]
        held = image != self.empty
        cells[image[held]] = np.flatnonzero(held)
        return cells


_BESIDE = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _nearest_cost(values: np.ndarray, missing: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum over the last axis of ``weights`` times ``values`` sorted ascending, the missing left out."""
    ordered = np.sort(np.where(missing, np.inf, values), axis=-1)
    return (np.where(np.isfinite(ordered), ordered, 0.0) * weights).sum(axis=-1)


def _nearest_gathers(d_row: int, d_col: int, stencil) -> tuple:
    """For a swap of the cells at 0 and (d_row, d_col): the cells whose four nearest change
    (relative padded offsets), and where each of their four distances is read in the
    stencil before the swap and after it."""
    pair = [(0, 0), (d_row, d_col)]
    affected = sorted({(r + e_r, c + e_c) for r, c in pair for e_r, e_c in _BESIDE} | set(pair))

    def holder(cell):  # the cell whose image is in ``cell`` once the pair has swapped
        return pair[1] if cell == pair[0] else pair[0] if cell == pair[1] else cell

    def offset(cell):
        return cell[0] * stencil.width + cell[1]

    before_at, before_slot, before_other, after_at, after_slot, after_other = ([] for _ in range(6))
    for cell in affected:
        for e_r, e_c in _BESIDE:
            other = (cell[0] + e_r, cell[1] + e_c)
            before_at.append(offset(cell))
            before_slot.append(stencil.slot(e_r, e_c))
            before_other.append(offset(other))
            x, y = holder(cell), holder(other)
            after_at.append(offset(x))
            after_slot.append(stencil.slot(y[0] - x[0], y[1] - x[1]))
            after_other.append(offset(y))
    shape = (len(affected), len(_BESIDE))
    return tuple(
        np.reshape(a, shape)
        for a in (before_at, before_slot, before_other, after_at, after_slot, after_other)
    )


def swap_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    sweeps: int = MAX_SWEEPS,
    seed: int = SEED,
) -> np.ndarray:
    """Step 2: exact pair swaps that lower the weighted neighbour distance (see the module docstring)."""
    rng = np.random.default_rng(seed)
    nearest = np.asarray(NEAREST_WEIGHTS, dtype=np.float64)
    ring = int(np.sqrt(max(RING_WEIGHTS)))
    kernel = [
        (d_row, d_col, weight)
        for d_row in range(-ring, ring + 1)
        for d_col in range(-ring, ring + 1)
        if (weight := RING_WEIGHTS.get(d_row * d_row + d_col * d_col))
    ]
    stencil = _NeighbourDistances(
        vectors, np.asarray(cell_of_image, dtype=np.int64), rows, cols, ring + SWAP_REACH
    )
    occupant, distance, empty = stencil.occupant, stencil.distance, stencil.empty
    # The pairs of one class (a partner offset, a phase on a lattice this coarse) lie
    # farther apart than a neighbour ring reaches, so their swaps are independent
    # and are tried at once.
    spacing = SWAP_REACH + ring + 1
    classes = []
    for d_row in range(SWAP_REACH + 1):
        for d_col in range(-SWAP_REACH, SWAP_REACH + 1):
            if d_row == 0 and d_col <= 0:
                continue
            # Change of the objective if the images in the first and second cell trade
            # places: stencil rows of the two cells times these weights. The pair's
            # own distance is the same either way and left out.
            first_weights, second_weights = np.zeros(stencil.side**2), np.zeros(stencil.side**2)
            for k_row, k_col, weight in kernel:
                if (k_row, k_col) != (d_row, d_col):  # the first cell's neighbours
                    second_weights[stencil.slot(k_row - d_row, k_col - d_col)] += weight
                    first_weights[stencil.slot(k_row, k_col)] -= weight
                if (k_row, k_col) != (-d_row, -d_col):  # the second cell's neighbours
                    first_weights[stencil.slot(k_row + d_row, k_col + d_col)] += weight
                    second_weights[stencil.slot(k_row, k_col)] -= weight
            first_weights *= SMOOTH_SHARE
            second_weights *= SMOOTH_SHARE
            gathers = _nearest_gathers(d_row, d_col, stencil)
            for r0 in range(spacing):
                for c0 in range(spacing):
                    row = np.arange(r0, rows - d_row, spacing)
                    col = np.arange(c0, cols, spacing)
                    col = col[(col + d_col >= 0) & (col + d_col < cols)]
                    first = stencil.padded(*[a.ravel() for a in np.meshgrid(row, col, indexing="ij")])
                    if len(first):
                        classes.append(
                            (
                                first,
                                first + d_row * stencil.width + d_col,
                                first_weights,
                                second_weights,
                                gathers,
                            )
                        )
    for _ in range(sweeps):
        swapped = 0
        for index in rng.permutation(len(classes)):
            first, second, first_weights, second_weights, gathers = classes[index]
            both = (occupant[first] != empty) & (occupant[second] != empty)
            first, second = first[both], second[both]
            change = distance[first] @ first_weights + distance[second] @ second_weights
            if nearest.any():
                at_offset, slot, other_offset, new_at_offset, new_slot, new_other_offset = gathers
                base = first[:, None, None]
                at, other = base + at_offset, base + other_offset
                new_at, new_other = base + new_at_offset, base + new_other_offset
                missing = (occupant[at] == empty) | (occupant[other] == empty)
                new_missing = (occupant[new_at] == empty) | (occupant[new_other] == empty)
                change += _nearest_cost(distance[new_at, new_slot], new_missing, nearest).sum(axis=1)
                change -= _nearest_cost(distance[at, slot], missing, nearest).sum(axis=1)
            better = change < -1e-9
            if not better.any():
                continue
            first, second = first[better], second[better]
            occupant[first], occupant[second] = occupant[second], occupant[first].copy()
            stencil.refresh(np.concatenate([first, second]))
            swapped += len(first)
        if not swapped:
            break
    return stencil.cell_of_image()


def embedding_neighbours(vectors: np.ndarray, k: int, search_dims: int = NEIGHBOUR_DIMS) -> tuple:
    """Each row's k nearest other rows, nearest first, and their euclidean distances.

    Found exactly among the first ``search_dims`` columns (principal components: a
    candidate list, so a cheap search does), in chunks of rows that keep the working
    memory near 64 MB; the distances returned are in all the columns."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n_rows = len(vectors)
    k = min(k, n_rows - 1)
    search = np.ascontiguousarray(vectors[:, :search_dims])
    squares = (search**2).sum(axis=1)
    index = np.empty((n_rows, k), dtype=np.int64)
    chunk = max(1, (64 << 20) // (4 * n_rows))
    for start in range(0, n_rows, chunk):
        rows = np.arange(start, min(start + chunk, n_rows))
        squared = squares[rows, None] - 2.0 * (search[rows] @ search.T) + squares[None, :]
        squared[np.arange(len(rows)), rows] = np.inf
        nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
        index[rows] = nearest
    difference = vectors[index] - vectors[:, None, :] if n_rows * k * vectors.shape[1] < (16 << 20) else None
    if difference is not None:
        distance = np.sqrt((difference.astype(np.float64) ** 2).sum(axis=2))
    else:
        distance = np.empty((n_rows, k))
        for start in range(0, n_rows, 4096):
            part = slice(start, start + 4096)
            difference = vectors[index[part]] - vectors[part, None, :]
            distance[part] = np.sqrt((difference.astype(np.float64) ** 2).sum(axis=2))
    order = np.argsort(distance, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(distance, order, axis=1)


class _Grid:
    """Who is where, on a grid padded by two empty cells on every side, for the long-range moves."""

    PAD = 2

    def __init__(self, vectors: np.ndarray, cell_of_image: np.ndarray, rows: int, cols: int):
        self.rows, self.cols, self.width = rows, cols, cols + 2 * self.PAD
        self.empty = len(vectors)
        self.vectors = np.vstack([np.asarray(vectors, dtype=np.float32), np.zeros((1, vectors.shape[1]), np.float32)])
        self.occupant = np.full((rows + 2 * self.PAD) * self.width, self.empty, dtype=np.int64)
        self.cell = np.full(len(vectors), -1, dtype=np.int64)  # padded cell of each image
        placed = np.flatnonzero(cell_of_image >= 0)
        row, col = np.divmod(cell_of_image[placed], cols)
        self.cell[placed] = (row + self.PAD) * self.width + col + self.PAD
        self.occupant[self.cell[placed]] = placed
        ring = [(r, c) for r in range(-2, 3) for c in range(-2, 3) if (r * r + c * c) in RING_WEIGHTS]
        ring.sort(key=lambda rc: (rc[0] ** 2 + rc[1] ** 2, rc))  # the four beside first, as _BESIDE
        ring[:4] = _BESIDE
        self.ring = np.array([r * self.width + c for r, c in ring])
        self.ring_weight = np.array([RING_WEIGHTS[r * r + c * c] for r, c in ring])
        self.beside = self.ring[:4]

    def distance(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        difference = self.vectors[first] - self.vectors[second]
        return np.sqrt((difference.astype(np.float64) ** 2).sum(axis=-1))

    def replace_change(self, cell: np.ndarray, new: np.ndarray, old: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """Change of the objective if image ``new`` took the place of ``old`` in ``cell``, all else kept."""
        around = self.occupant[cell[:, None] + self.ring[None, :]]
        present = around != self.empty
        to_new = self.distance(new[:, None], around)
        to_old = self.distance(old[:, None], around)
        change = SMOOTH_SHARE * ((to_new - to_old) * present * self.ring_weight).sum(axis=1)
        change += _nearest_cost(to_new[:, :4], ~present[:, :4], nearest)
        change -= _nearest_cost(to_old[:, :4], ~present[:, :4], nearest)
        # The images beside: their own nearest four, with the entry for ``cell`` changed.
        for side in range(4):
            neighbour = around[:, side]
            their = self.occupant[(cell + self.beside[side])[:, None] + self.beside[None, :]]
            missing = (their == self.empty) | (neighbour == self.empty)[:, None]
            values = self.distance(neighbour[:, None], their)
            back = {0: 1, 1: 0, 2: 3, 3: 2}[side]  # _BESIDE's opposite: up/down, left/right
            after = values.copy()
            after[:, back] = to_new[:, side]
            values[:, back] = to_old[:, side]
            gain = _nearest_cost(after, missing, nearest) - _nearest_cost(values, missing, nearest)
            change += np.where(neighbour == self.empty, 0.0, gain)
        return change

    def cell_of_image(self) -> np.ndarray:
        cells = np.full(self.empty, -1, dtype=np.int64)
        placed = self.cell >= 0
        row, col = np.divmod(self.cell[placed], self.width)
        cells[placed] = (row - self.PAD) * self.cols + col - self.PAD
        return cells


def reunite_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    rounds: int = REUNITE_ROUNDS,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Long-range moves: bring an image's embedding neighbour, wherever it lies on the grid,
    into a cell beside it, the image there going to the neighbour's old cell, when that
    lowers the swap objective exactly. Moves whose cells lie more than two apart from every
    other move's are made together."""
    nearest = np.asarray(NEAREST_WEIGHTS, dtype=np.float64)
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64)
    grid = _Grid(vectors, cell_of_image, rows, cols)
    if neighbours is None:
        neighbours = embedding_neighbours(grid.vectors[:-1], REUNITE_NEIGHBOURS)
    index, distance = neighbours
    for _ in range(rounds):
        placed = np.flatnonzero(grid.cell >= 0)
        beside = grid.occupant[grid.cell[placed][:, None] + grid.beside[None, :]]
        closest = np.where(beside != grid.empty, grid.distance(placed[:, None], beside), np.inf).min(axis=1)
        # Candidates: image i, its neighbour j nearer than any image beside i now, a cell beside i.
        image, rank = np.nonzero(distance[placed] < REUNITE_SLACK * closest[:, None] - 1e-12)
        image = placed[image]
        partner = index[image, rank]
        image = np.repeat(image, 4)
        partner = np.repeat(partner, 4)
        target = grid.cell[image] + np.tile(grid.beside, len(image) // 4)
        source = grid.cell[partner]
        there = grid.occupant[target]
        target_row, target_col = np.divmod(target, grid.width)
        source_row, source_col = np.divmod(source, grid.width)
        apart = np.maximum(np.abs(target_row - source_row), np.abs(target_col - source_col)) > 2
        keep = (source >= 0) & (there != grid.empty) & apart
        target, source, there, partner = target[keep], source[keep], there[keep], partner[keep]
        if not len(target):
            break
        change = np.empty(len(target))
        for start in range(0, len(target), 4096):  # bounds the gathered vectors to ~100 MB
            part = slice(start, start + 4096)
            change[part] = grid.replace_change(target[part], partner[part], there[part], nearest)
            change[part] += grid.replace_change(source[part], there[part], partner[part], nearest)
        better = np.flatnonzero(change < -1e-9)
        if not len(better):
            break
        locked = np.zeros(len(grid.occupant), dtype=bool)
        box = np.array([r * grid.width + c for r in range(-2, 3) for c in range(-2, 3)])
        moved = 0
        for move in better[np.argsort(change[better], kind="stable")]:
            a, b = target[move], source[move]
            if locked[a] or locked[b]:
                continue
            locked[a + box] = True
            locked[b + box] = True
            j, m = partner[move], there[move]
            grid.occupant[a], grid.occupant[b] = j, m
            grid.cell[j], grid.cell[m] = a, b
            moved += 1
        if not moved:
            break
    return grid.cell_of_image()


def starts_for(n_images: int) -> int:
    """How many sorting seeds a grid of ``n_images`` is refined from."""
    return max(1, min(MAX_STARTS, START_IMAGES // max(1, n_images)))


def neighbour_cost(vectors: np.ndarray, cell_of_image: np.ndarray, rows: int, cols: int) -> float:
    """The swap step's objective (lower is better): ``SMOOTH_SHARE`` times the
    ``RING_WEIGHTS``-weighted embedding distance over every pair of occupied grid neighbours,
    each pair once, plus for every image its ``NEAREST_WEIGHTS``-weighted distances to the
    images beside it, nearest first."""
    vectors = np.asarray(vectors, dtype=np.float64)
    placed = np.flatnonzero(np.asarray(cell_of_image) >= 0)
    occupant = np.full(rows * cols, -1, dtype=np.int64)
    occupant[np.asarray(cell_of_image)[placed]] = placed
    occupant = occupant.reshape(rows, cols)
    ring = int(np.sqrt(max(RING_WEIGHTS)))
    total = 0.0
    beside = np.full((rows, cols, 4), np.nan)
    for d_row in range(ring + 1):
        for d_col in range(-ring, ring + 1):
            weight = RING_WEIGHTS.get(d_row * d_row + d_col * d_col)
            if not weight or (d_row == 0 and d_col <= 0) or d_row >= rows or abs(d_col) >= cols:
                continue
            rows_first = slice(0, rows - d_row)
            cols_first = slice(max(0, -d_col), cols - max(0, d_col))
            rows_second = slice(d_row, rows)
            cols_second = slice(max(0, d_col), cols - max(0, -d_col))
            first, second = occupant[rows_first, cols_first], occupant[rows_second, cols_second]
            both = (first >= 0) & (second >= 0)
            difference = vectors[first[both]] - vectors[second[both]]
            distance = np.sqrt((difference**2).sum(axis=1))
            total += SMOOTH_SHARE * weight * float(distance.sum())
            if d_row * d_row + d_col * d_col == 1:  # the cells beside: one slot at each end
                slot = 1 if d_row else 3  # the second is below / right of the first
                values = np.full(first.shape, np.nan)
                values[both] = distance
                beside[rows_first, cols_first, slot] = values
                beside[rows_second, cols_second, slot - 1] = values
    missing = np.isnan(beside)
    costs = _nearest_cost(np.nan_to_num(beside), missing, np.asarray(NEAREST_WEIGHTS, dtype=np.float64))
    return total + float(costs[occupant >= 0].sum())


def refine_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    seed: int = SEED,
    starts: int | None = None,
) -> np.ndarray:
    """A new cell for every image (-1 stays -1): sorted, then swapped, against ``vectors``,
    from ``starts`` sorting seeds (default ``starts_for(N)``), the lowest ``neighbour_cost`` kept."""
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64)
    n_placed = np.count_nonzero(cell_of_image >= 0)
    if n_placed < 2:
        return cell_of_image.astype(np.int32)
    placed = cell_of_image >= 0
    components = np.zeros((len(vectors), min(SWAP_DIMS, np.shape(vectors)[1])), dtype=np.float32)
    # Every image placed (the usual case): no copy of N x D to pick them out.
    components[placed] = projected(vectors if placed.all() else np.asarray(vectors)[placed], SWAP_DIMS)
    best_cost, best = np.inf, cell_of_image
    neighbours = embedding_neighbours(components, REUNITE_NEIGHBOURS) if REUNITE_ROUNDS else None
    for start in range(starts_for(n_placed) if starts is None else starts):
        sorted_cells = sort_layout(components[:, :SORT_DIMS], cell_of_image, rows, cols, seed=seed + start)
        cells = swap_layout(components, sorted_cells, rows, cols, seed=seed + start)
        if REUNITE_ROUNDS:
            cells = reunite_layout(components, cells, rows, cols, neighbours=neighbours)
            cells = swap_layout(components, cells, rows, cols, seed=seed + start)
        cost = neighbour_cost(components, cells, rows, cols)
        if cost < best_cost:  # the first of equals: the result does not depend on timing
            best_cost, best = cost, cells
    return best.astype(np.int32)
