"""Improve a grid layout against the embedding itself, by exact swaps.

The assignment places images where the 2-D map puts them; the map is a
compression of the embedding, so neighbours on the grid are close in the map
but not always the closest in the embedding. Refinement works on the grid
directly, against the embeddings' first ``SWAP_DIMS`` principal components.

The objective (``neighbour_cost``, lower is better) is made of what DPQ_16
weighs. DPQ_16 as its authors compute it orders grid neighbours at equal
distance nearest first, and its p-norm then depends almost only on the
embedding distance from each image to the *nearest* of the four beside it:
that distance, with small weights for the other three in order
(``NEAREST_WEIGHTS``), is the first part. The second, at ``SMOOTH_SHARE``, is
the distance to every neighbour, the four beside at weight 1 and the rings at
distances sqrt 2, 2 and sqrt 5 at the weights DPQ_16 gives them when each
ring counts at its mean (``RING_WEIGHTS``): it keeps the whole neighbourhood
alike, not just one pair.

**Swaps**: every pair of images up to two cells apart is tried; a swap is
made only when it lowers the objective exactly, so refinement can only
improve it. Pairs far enough apart not to see each other are evaluated
together, so a sweep is a few hundred numpy operations at any N. The swaps'
order is seeded, and small grids are refined from ``starts_for(N)`` seeds,
the lowest objective kept (bounded so that N x starts stays within
``START_IMAGES``; large grids get one).

Until 0.2, sorting passes in the manner of LAS/FLAS (Barthel et al. 2023)
came first: they made the grid smoother but moved near-duplicates apart, and
scored lower in DPQ_16 on every real collection; long-range moves that bring
an image's embedding neighbours beside it from anywhere on the grid repaired
much of that, and add nothing once sorting is gone (docs/benchmarks.md).

Swaps exchange two images, so the layout stays complete and empty cells stay
where the assignment put them (at the map's sparse edges, not as holes among
the photos). Seeded: the same input gives the same layout.
"""

from __future__ import annotations

import numpy as np

from gridtsne.vectors import fixed_blas_threads, pca, project

#: Principal components the swaps work in: they keep the fine structure that decides
#: which of two similar images is nearer, at a fifth of 1,280 dimensions' cost.
SWAP_DIMS = 256
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
#: Bytes of vectors that filling the stencil gathers at once (a band of grid rows).
FILL_BAND_BYTES = 32 << 20
#: Up to this many images the swaps read distances from a matrix of every pair's
#: (``pair_distances``, 13 MB at 1,280) instead of computing them from the components as
#: they go: the same objective, and a whole layout took 0.92 of the time at 1,024 and 1,280
#: photos, but 1.14 at 1,500 and 1.03 at 2,048, with 21-27 MiB more at its peak
#: (docs/benchmarks.md).
PAIR_MATRIX_UP_TO = 1280
#: Sweeps over all pairs; they stop early when one makes no swap.
MAX_SWEEPS = 8
#: A sweep after one in which at most this many classes of pairs swapped evaluates every
#: class's pairs at once, and again only the pairs within reach of each swap
#: (``_PairsByOffset.sweep``); after more, each class at its turn is cheaper. Speed only:
#: the swaps are the same either way.
FEW_GAINING_CLASSES = 40
SEED = 0
#: Refinements from seeds SEED, SEED + 1, ... while N x starts stays within
#: START_IMAGES, at most MAX_STARTS (one at 1,001 images and above).
START_IMAGES = 2000
MAX_STARTS = 3


def settings() -> dict:
    """Every refinement setting, for assign.json."""
    return {
        "swap_dims": SWAP_DIMS,
        "ring_weights": {str(d2): w for d2, w in RING_WEIGHTS.items()},
        "swap_reach": SWAP_REACH,
        "smooth_share": SMOOTH_SHARE,
        "nearest_weights": list(NEAREST_WEIGHTS),
        "max_sweeps": MAX_SWEEPS,
        "seed": SEED,
        "start_images": START_IMAGES,
        "max_starts": MAX_STARTS,
    }


def pair_distances(vectors: np.ndarray) -> np.ndarray:
    """The distance between every two rows, (N + 1) x (N + 1), the last row and column
    standing for an empty cell (0), as the stencil reads them: one matrix product instead
    of a dot product for each pair that the swaps look at, from float32 dot products and
    float64 sums as ``_NeighbourDistances`` computes them from the vectors. Symmetric to the
    last bit, as the stencil is: a cell's row is filled from its own side and refreshed from
    its neighbour's."""
    vectors = np.asarray(vectors, dtype=np.float32)
    with fixed_blas_threads():
        dots = vectors @ vectors.T
    squares = (vectors.astype(np.float64) ** 2).sum(axis=1)
    distances = np.zeros((len(vectors) + 1, len(vectors) + 1))
    inner = distances[:-1, :-1]  # filled in place: no N x N temporary beside it but the products
    np.add(squares[:, None], squares[None, :], out=inner)
    inner -= 2.0 * dots
    del dots
    np.minimum(inner, inner.T, out=inner)  # the product's two halves may differ in the last bit
    np.sqrt(np.maximum(inner, 0.0, out=inner), out=inner)
    np.fill_diagonal(inner, 0.0)
    return distances


def projected(vectors: np.ndarray, dims: int, basis=None):
    """``vectors`` on their first ``dims`` principal components (as they are if narrower), and
    the basis that puts other rows on the same components (None where there is none); with
    ``basis``, on that basis's components instead, which an update keeps from its fresh layout."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[1] <= dims:
        return vectors, None
    if basis is not None:
        return project(vectors, basis, dims).astype(np.float32, copy=False), basis
    components, basis = pca(vectors, dims, with_basis=True)
    return components.astype(np.float32, copy=False), basis


class _NeighbourDistances:
    """The embedding distance from the image in every cell to the images in the cells
    around it (a (2R+1)^2 stencil), kept up to date as images swap.

    Cells are indexed on a grid padded by R on every side, so that a
    neighbour's index is the cell's plus a constant and needs no bounds check.
    """

    def __init__(
        self,
        vectors: np.ndarray | None,
        cell_of_image: np.ndarray,
        rows: int,
        cols: int,
        reach: int,
        all_pairs=None,
    ):
        """``all_pairs``: ``pair_distances``, read instead of computing distances from ``vectors``."""
        self.reach, self.width = reach, cols + 2 * reach
        self.side = 2 * reach + 1
        self.all_pairs = all_pairs
        if all_pairs is not None:
            n_images = len(all_pairs) - 1
        else:
            n_images = len(vectors)
            # Row n_images is a zero vector that stands for an empty cell.
            self.vectors = np.vstack(
                [np.asarray(vectors, dtype=np.float32), np.zeros((1, vectors.shape[1]), dtype=np.float32)]
            )
            # Chunk by chunk: no float64 copy of N x dims (1.2 GB at 300,000 photos), the same sums.
            self.squares = np.concatenate(
                [
                    (part.astype(np.float64) ** 2).sum(axis=1)
                    for part in np.array_split(self.vectors, len(self.vectors) // 8192 + 1)
                ]
            )
        self.empty = n_images
        self.occupant = np.full((rows + 2 * reach) * self.width, n_images, dtype=np.int64)
        placed = np.flatnonzero(cell_of_image >= 0)
        row, col = np.divmod(cell_of_image[placed], cols)
        self.occupant[self.padded(row, col)] = placed
        steps = np.arange(-reach, reach + 1)
        self.offsets = (steps[:, None] * self.width + steps[None, :]).ravel()
        self.inner = self.padded(*np.divmod(np.arange(rows * cols), cols))
        self.row_of, self.col_of = np.divmod(np.arange(len(self.occupant)), self.width)
        self.distance = np.zeros((len(self.occupant), self.side**2))
        self._fill(rows, cols)

    def _fill(self, rows: int, cols: int) -> None:
        """Every cell's stencil row, a band of grid rows at a time: for each offset, the dot
        products of the band's vectors with the band shifted by it, views of one gathered band
        instead of a gather per cell and neighbour. The same numbers as ``refresh`` (the same
        sums in the same order), a third of its time at 10,000 photos; at most
        ``FILL_BAND_BYTES`` of vectors gathered at once. Cells of the padding stay 0 (empty)."""
        if self.all_pairs is not None:  # every cell's row at once: a gather of N x side^2 numbers
            image, around = self.occupant[self.inner], self.occupant[self.inner[:, None] + self.offsets]
            self.distance[self.inner] = self.all_pairs[image[:, None], around]
            return
        reach, width = self.reach, self.width
        occupant = self.occupant.reshape(-1, width)
        distance = self.distance.reshape(len(occupant), width, self.side**2)
        band = max(1, FILL_BAND_BYTES // (width * self.vectors.shape[1] * 4) - 2 * reach)
        for row0 in range(0, rows, band):
            row1 = min(rows, row0 + band)
            held = occupant[row0 : row1 + 2 * reach]  # the band and the reach around it
            vectors, squares, empty = self.vectors[held], self.squares[held], held == self.empty
            here = (slice(reach, reach + row1 - row0), slice(reach, reach + cols))
            for d_row in range(-reach, reach + 1):
                for d_col in range(-reach, reach + 1):
                    there = (
                        slice(reach + d_row, reach + d_row + row1 - row0),
                        slice(reach + d_col, reach + d_col + cols),
                    )
                    dot = np.einsum("ijd,ijd->ij", vectors[here], vectors[there])
                    value = np.sqrt(np.maximum(squares[here] + squares[there] - 2.0 * dot, 0.0))
                    value[empty[here] | empty[there]] = 0.0
                    distance[reach + row0 : reach + row1, reach : reach + cols, self.slot(d_row, d_col)] = (
                        value
                    )

    def padded(self, row, col):
        return (np.asarray(row) + self.reach) * self.width + np.asarray(col) + self.reach

    def away(self, home: np.ndarray, cell: np.ndarray, leave: float = 0.0) -> np.ndarray:
        """Cells (euclidean) from each padded ``home`` to each padded ``cell``, plus ``leave``
        when they differ; 0 without a home."""
        # (The row and column of each padded cell, looked up: a home of -1 reads the last
        # cell's, and gets 0 below.)
        d_row = self.row_of[home] - self.row_of[cell]
        d_col = self.col_of[home] - self.col_of[cell]
        distance = np.sqrt(d_row * d_row + d_col * d_col)
        return np.where(home >= 0, distance + leave * (distance > 0), 0.0)

    def slot(self, d_row: int, d_col: int) -> int:
        return (d_row + self.reach) * self.side + d_col + self.reach

    def refresh(self, cells: np.ndarray, chunk: int = 512) -> None:
        """Recompute the stencil rows of ``cells`` and the mirrored entries that see them."""
        mirror = self.side**2 - 1 - np.arange(self.side**2)
        for start in range(0, len(cells), chunk):
            part = cells[start : start + chunk]
            image = self.occupant[part]
            around = self.occupant[part[:, None] + self.offsets[None, :]]
            if self.all_pairs is not None:
                rows = self.all_pairs[image[:, None], around]  # an empty cell's row and column are 0
            else:
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
    ordered = np.where(missing, np.inf, values)
    if ordered.shape[-1] == 4 and ordered.size >= NETWORK_FROM:
        # The four cells beside: a sorting network, elementwise, is up to three times as fast
        # as sorting rows of four, except on a few pairs, where its dozen numpy calls cost
        # more than the sort. Both give the same four in the same order.
        a, b, c, d = (ordered[..., i] for i in range(4))
        a, b = np.minimum(a, b), np.maximum(a, b)
        c, d = np.minimum(c, d), np.maximum(c, d)
        a, c = np.minimum(a, c), np.maximum(a, c)
        b, d = np.minimum(b, d), np.maximum(b, d)
        b, c = np.minimum(b, c), np.maximum(b, c)
        # In order, the missing as 0, each times its weight, summed one after the other (on
        # many pairs a running total beats a sum over an axis of four).
        total = np.where(np.isfinite(a), a, 0.0) * weights[0]
        for value, weight in zip((b, c, d), weights[1:], strict=True):
            total += np.where(np.isfinite(value), value, 0.0) * weight
        return total
    # The same sum in fewer calls: a sum over four runs from the first to the last.
    ordered = np.sort(ordered, axis=-1)
    return (np.where(np.isfinite(ordered), ordered, 0.0) * weights).sum(axis=-1)


#: Values from which ``_nearest_cost`` sorts fours by a network, not ``np.sort``: 60 pairs'
#: worth of a swap's ten cells (timed alone, best of seven: below, the sort is faster).
NETWORK_FROM = 2_400


def _nearest_gathers(d_row: int, d_col: int, stencil) -> tuple:
    """For a swap of the cells at 0 and (d_row, d_col): where each of the four distances of
    each cell whose four nearest change is read in the flattened stencil after the swap
    (cell x side^2 + slot, relative, (cells, 4)), and those cells (relative padded offsets),
    whose cost before the swap is kept."""
    pair = [(0, 0), (d_row, d_col)]
    affected = sorted({(r + e_r, c + e_c) for r, c in pair for e_r, e_c in _BESIDE} | set(pair))

    def holder(cell):  # the cell whose image is in ``cell`` once the pair has swapped
        return pair[1] if cell == pair[0] else pair[0] if cell == pair[1] else cell

    def offset(cell):
        return cell[0] * stencil.width + cell[1]

    after_at, after_slot = [], []
    for cell in affected:
        for e_r, e_c in _BESIDE:
            other = (cell[0] + e_r, cell[1] + e_c)
            x, y = holder(cell), holder(other)
            after_at.append(offset(x))
            after_slot.append(stencil.slot(y[0] - x[0], y[1] - x[1]))
    shape = (len(affected), len(_BESIDE))
    at, slot = (np.reshape(after, shape) for after in (after_at, after_slot))
    return at * stencil.side**2 + slot, np.array([offset(cell) for cell in affected])


def swap_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    sweeps: int = MAX_SWEEPS,
    seed: int = SEED,
    movable: np.ndarray | None = None,
    home: np.ndarray | None = None,
    stay_cost: float = 0.0,
    leave: float = 0.0,
    all_pairs: np.ndarray | None = None,
) -> np.ndarray:
    """Exact pair swaps that lower the objective (see the module docstring); with
    ``movable`` (a bool per cell), only between two movable cells. With ``home`` (a cell per
    image, -1 for none), an image adds ``stay_cost`` times its distance in cells from its home
    cell (plus ``leave`` when it is not there) to the objective: a photo the user knows
    leaves its cell only for a clear gain, and goes no further than that gain pays for.
    ``all_pairs``: ``pair_distances(vectors)``, read instead of ``vectors`` (then None)."""
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
        vectors, np.asarray(cell_of_image, dtype=np.int64), rows, cols, ring + SWAP_REACH, all_pairs
    )
    occupant, distance, empty = stencil.occupant, stencil.distance, stencil.empty
    hollow = occupant == empty  # the empty cells: swaps never move them
    flat_distance = distance.ravel()  # a view: entry (cell, slot) at cell * side^2 + slot
    # Whether the stencil's entry (cell, slot) stands for no pair of images (either cell is
    # empty): the nearest part leaves those out. Empty cells never move, so it never changes,
    # and it is read at the same entries as the distances. (The padding's outer edge has no
    # cells beyond it, but is empty itself: clipped.)
    every_cell = np.arange(len(occupant))
    missing = np.empty(distance.shape, dtype=bool)
    for slot, offset in enumerate(stencil.offsets):  # a column at a time: no cells x slots of indices
        missing[:, slot] = hollow | hollow[np.clip(every_cell + offset, 0, len(occupant) - 1)]
    flat_missing = missing.ravel()
    with_nearest = bool(nearest.any())
    # The padded home cell of each image (and of the empty stand-in): -1 where none is kept.
    home_at = np.full(empty + 1, -1, dtype=np.int64)
    if home is not None and stay_cost > 0:
        with_home = np.flatnonzero(np.asarray(home) >= 0)
        home_at[with_home] = stencil.padded(*np.divmod(np.asarray(home)[with_home], cols))
    # Each cell's part of the objective as the grid stands, kept as swaps change it: a pair's
    # change needs the nearest part of the cells around it and the staying cost of its two
    # images before the swap, the same numbers for every pair that reaches them.
    beside_slots = np.array([stencil.slot(e_row, e_col) for e_row, e_col in _BESIDE])
    beside_offsets = np.array([e_row * stencil.width + e_col for e_row, e_col in _BESIDE])
    nearest_now = np.zeros(len(occupant))
    away_now = np.zeros(len(occupant))

    def settle(cells: np.ndarray) -> None:
        """``nearest_now`` and ``away_now`` of these cells (inner or padding; a cell twice is
        the same number twice) as they stand."""
        if with_nearest:
            entry = (cells[:, None], beside_slots[None, :])
            nearest_now[cells] = _nearest_cost(distance[entry], missing[entry], nearest)
        if stay_cost > 0:
            away_now[cells] = stencil.away(home_at[occupant[cells]], cells, leave)

    allowed = np.ones(len(occupant), dtype=bool)
    if movable is not None:
        allowed[:] = False
        allowed[stencil.inner[np.asarray(movable, dtype=bool)]] = True
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
                    second = first + d_row * stencil.width + d_col
                    if movable is not None:  # an update: only the pairs it may swap, once for all sweeps
                        pairs = allowed[first] & allowed[second]
                        first, second = first[pairs], second[pairs]
                    if len(first):
                        # Swaps trade two photos, never a photo and an empty cell, so which
                        # cells are empty never changes: pairs with one are left out here.
                        held = (occupant[first] != empty) & (occupant[second] != empty)
                        classes.append((first[held], second[held], first_weights, second_weights, gathers))
    # A pair's change of the objective depends only on the images within ``ring`` cells of its
    # two cells. ``changed_at[cell]`` is when an image within ``ring`` of the cell last moved
    # (a count of the classes tried), ``tried_at[class]`` when that class was last tried: a
    # pair whose surroundings have not changed since gave no gain then and gives none now, so
    # it is left out. The result is the same as trying every pair. Sweeps that make a few swaps
    # evaluate every class's pairs at once (``_PairsByOffset``): at 1,024 photos refinement
    # took 0.13 s instead of 0.18 s, the same grid.
    # (The four cells beside each of them and theirs are within two cells too.)
    steps = np.arange(-max(ring, 2), max(ring, 2) + 1)
    around = (steps[:, None] * stencil.width + steps[None, :]).ravel()
    changed_at = np.zeros(len(occupant), dtype=np.int64)
    tried_at = np.full(len(classes), -1, dtype=np.int64)
    clock = 0

    def change_of(first, second, first_weights, second_weights, gathers) -> np.ndarray:
        """The objective's change if each pair swapped, pair by pair: a pair's number does not
        depend on the pairs evaluated with it."""
        change = distance[first] @ first_weights + distance[second] @ second_weights
        if with_nearest:
            # Each affected cell's four beside after the swap, less its cost now.
            at_entry, affected = gathers
            entry = first[:, None, None] * stencil.side**2 + at_entry
            change += _nearest_cost(flat_distance[entry], flat_missing[entry], nearest).sum(axis=1)
            change -= nearest_now[first[:, None] + affected[None, :]].sum(axis=1)
        if stay_cost > 0:
            # Each image away from home where the swap puts it, less where it is now.
            home_first, home_second = home_at[occupant[first]], home_at[occupant[second]]
            put = stencil.away(home_first, second, leave) + stencil.away(home_second, first, leave)
            change += stay_cost * (put - away_now[first] - away_now[second])
        return change

    def swap(first, second, now) -> np.ndarray:
        """Swap these pairs; returns the cells within reach of them, marked changed ``now``."""
        occupant[first], occupant[second] = occupant[second], occupant[first].copy()
        moved = np.concatenate([first, second])
        stencil.refresh(moved)
        settle(np.concatenate([moved, (moved[:, None] + beside_offsets[None, :]).ravel()]))
        region = (moved[:, None] + around[None, :]).ravel()
        changed_at[region] = now
        return region

    if not classes:  # no two movable photos within reach of each other
        return stencil.cell_of_image()
    settle(every_cell)
    # Made for the first quiet sweep: made before the first sweeps, its arrays stayed under
    # their temporaries, and a fresh 10,000's peak rose by 14 MiB.
    pairs = None
    gaining_classes = len(classes)
    for _ in range(sweeps):
        order = rng.permutation(len(classes))
        if gaining_classes > FEW_GAINING_CLASSES:
            # Class by class, each evaluated at its turn.
            swapped = gaining_classes = 0
            for index in order:
                first, second, first_weights, second_weights, gathers = classes[index]
                clock += 1
                since, tried_at[index] = tried_at[index], clock
                if since >= 0:
                    fresh = (changed_at[first] > since) | (changed_at[second] > since)
                    first, second = first[fresh], second[fresh]
                if not len(first):
                    continue
                better = change_of(first, second, first_weights, second_weights, gathers) < -1e-9
                if not better.any():
                    continue
                gaining_classes += 1
                swap(first[better], second[better], clock)
                swapped += int(better.sum())
        else:
            if pairs is None:
                pairs = _PairsByOffset(classes, len(occupant))
            swapped, gaining_classes = pairs.sweep(order, clock, tried_at, changed_at, change_of, swap)
            clock += len(classes)
        if not swapped:
            break
    return stencil.cell_of_image()


class _PairsByOffset:
    """The pairs of every class of ``swap_layout`` in one array, class after class (the classes
    of one partner offset share their weights and lie together), for sweeps that make a few
    swaps: one evaluation of every pair that each class would try, then, after each class
    that swaps, one of the pairs of the classes still to come within reach of its swaps."""

    def __init__(self, classes: list, n_cells: int):
        sizes = [len(first) for first, *_ in classes]
        self.start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.first = np.concatenate([first for first, *_ in classes]).astype(np.int64)
        self.second = np.concatenate([second for _, second, *_ in classes]).astype(np.int64)
        self.owner = np.repeat(np.arange(len(classes)), sizes)
        # The runs of classes that share an offset (their gathers): pairs [begin, end).
        self.offsets = []
        begin = 0
        for index, (_, _, first_weights, second_weights, gathers) in enumerate(classes):
            last = index + 1 == len(classes) or classes[index + 1][4] is not gathers
            if last:
                end = int(self.start[index + 1])
                # A cell is the first cell of at most one pair of an offset: the pair, or -1.
                pair_at = np.full(n_cells, -1, dtype=np.int64)
                pair_at[self.first[begin:end]] = np.arange(begin, end)
                offset = self.second[begin] - self.first[begin] if end > begin else 0
                self.offsets.append((begin, end, first_weights, second_weights, gathers, pair_at, offset))
                begin = end

    def gains(self, which: np.ndarray, change_of) -> np.ndarray:
        """Whether each of these pairs (sorted indices) would lower the objective now."""
        better = np.zeros(len(which), dtype=bool)
        bounds = np.searchsorted(which, [(begin, end) for begin, end, *_ in self.offsets])
        for (a, b), (_, _, first_weights, second_weights, gathers, _, _) in zip(
            bounds, self.offsets, strict=True
        ):
            if b > a:
                chosen = which[a:b]
                change = change_of(
                    self.first[chosen], self.second[chosen], first_weights, second_weights, gathers
                )
                better[a:b] = change < -1e-9
        return better

    def sweep(self, order, clock, tried_at, changed_at, change_of, swap) -> tuple[int, int]:
        """One sweep of the classes in ``order`` from ``clock`` on, with the same swaps, and the
        same ``tried_at`` and ``changed_at`` after it, as trying each class at its turn: a
        pair's change depends only on the images within reach of its cells, so its number
        stays what it was until a swap within reach, which evaluates it again. Returns the
        pairs swapped and the classes that swapped."""
        turn_of = np.empty(len(order), dtype=np.int64)
        turn_of[order] = np.arange(len(order))
        since = tried_at[self.owner]
        fresh = np.flatnonzero(
            (since < 0) | (changed_at[self.first] > since) | (changed_at[self.second] > since)
        )
        gain = np.zeros(len(self.first), dtype=bool)
        gain[fresh] = self.gains(fresh, change_of)
        gaining = np.bincount(self.owner[gain], minlength=len(order))
        done, swapped, classes_swapped = -1, 0, 0
        while True:
            turns = turn_of[gaining > 0]
            turns = turns[turns > done]
            if not len(turns):
                break
            turn = int(turns.min())
            index = order[turn]
            tried_at[order[done + 1 : turn + 1]] = clock + 1 + np.arange(done + 1, turn + 1)
            now = clock + 1 + turn
            mine = self.start[index] + np.flatnonzero(gain[self.start[index] : self.start[index + 1]])
            region = swap(self.first[mine], self.second[mine], now)
            swapped += len(mine)
            classes_swapped += 1
            # The pairs of the classes still to come that the swaps reach: evaluated again.
            near = [
                pair_at[np.concatenate([region, region - offset])] for *_, pair_at, offset in self.offsets
            ]
            near = np.unique(np.concatenate(near))
            near = near[near >= 0]
            near = near[turn_of[self.owner[near]] > turn]
            before = gain[near]
            gain[near] = self.gains(near, change_of)
            gaining += np.bincount(
                self.owner[near], weights=gain[near].astype(np.int64) - before, minlength=len(order)
            ).astype(np.int64)
            done = turn
        tried_at[order[done + 1 :]] = clock + 1 + np.arange(done + 1, len(order))
        return swapped, classes_swapped


def _within(cells: np.ndarray, rows: int, cols: int, reach: int) -> np.ndarray:
    """Every cell within ``reach`` cells (in each axis) of one of ``cells`` (a bool per cell)."""
    from scipy.ndimage import maximum_filter

    return maximum_filter(cells.reshape(rows, cols), size=2 * reach + 1, mode="constant").ravel()


def starts_for(n_images: int) -> int:
    """How many seeds a grid of ``n_images`` is refined from."""
    return max(1, min(MAX_STARTS, START_IMAGES // max(1, n_images)))


def neighbour_cost(
    vectors: np.ndarray | None, cell_of_image: np.ndarray, rows: int, cols: int, all_pairs=None
) -> float:
    """The swap step's objective (lower is better): ``SMOOTH_SHARE`` times the
    ``RING_WEIGHTS``-weighted embedding distance over every pair of occupied grid neighbours,
    each pair once, plus for every image its ``NEAREST_WEIGHTS``-weighted distances to the
    images beside it, nearest first. ``all_pairs``: ``pair_distances(vectors)``, read instead."""
    if all_pairs is None:
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
            if all_pairs is None:
                difference = vectors[first[both]] - vectors[second[both]]
                distance = np.sqrt((difference**2).sum(axis=1))
            else:
                distance = all_pairs[first[both], second[both]]
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
    movable: np.ndarray | None = None,
    home: np.ndarray | None = None,
    stay_cost: float = 0.0,
    leave: float = 0.0,
    basis=None,
    return_basis: bool = False,
    on_progress=lambda fraction: None,
):
    """A new cell for every image (-1 stays -1): swapped against ``vectors`` from ``starts``
    seeds (default ``starts_for(N)``), the lowest ``neighbour_cost`` kept. With ``movable``
    (a bool per cell) only the images in those cells move: an update refines around what
    changed and leaves the rest of the map as the user knows it. ``basis``: the components to
    swap on (``vectors.pca(with_basis=True)``'s), kept from the fresh layout by an update
    instead of a PCA of its own; ``return_basis``: (cells, the basis used or made).
    ``on_progress(fraction)`` is told as each start ends."""
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64)
    n_placed = np.count_nonzero(cell_of_image >= 0)

    def result(cells, basis):
        return (cells.astype(np.int32), basis) if return_basis else cells.astype(np.int32)

    if n_placed < 2:
        return result(cell_of_image, basis)
    placed = cell_of_image >= 0
    if movable is not None:
        # Only the images that a swap among movable cells can see (one beside a neighbour of a
        # cell a swap reaches) enter the objective: projected alone, the rest left at zero.
        reach = int(np.sqrt(max(RING_WEIGHTS))) + SWAP_REACH + 1
        seen = _within(np.asarray(movable, dtype=bool), rows, cols, reach)
        placed &= seen[np.maximum(cell_of_image, 0)]
    if placed.all():  # the usual case: no copy of N x D to pick them out, nor of the components
        components, basis = projected(vectors, SWAP_DIMS, basis)
    else:
        components = np.zeros((len(vectors), min(SWAP_DIMS, np.shape(vectors)[1])), dtype=np.float32)
        components[placed], basis = projected(np.asarray(vectors)[placed], SWAP_DIMS, basis)
    components, all_pairs = swap_inputs(components)
    best = best_of_starts(
        components, cell_of_image, rows, cols, starts_for(n_placed) if starts is None else starts,
        all_pairs=all_pairs, seed=seed, movable=movable, home=home, stay_cost=stay_cost, leave=leave,
        on_progress=on_progress,
    )  # fmt: skip
    return result(best, basis)


def swap_inputs(components: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What the swaps read: (components, None), or up to ``PAIR_MATRIX_UP_TO`` images
    (None, ``pair_distances(components)``)."""
    if len(components) <= PAIR_MATRIX_UP_TO:
        return None, pair_distances(components)
    return components, None


def best_of_starts(
    components: np.ndarray | None,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    starts: int,
    *,
    all_pairs: np.ndarray | None = None,
    seed: int = SEED,
    movable: np.ndarray | None = None,
    home: np.ndarray | None = None,
    stay_cost: float = 0.0,
    leave: float = 0.0,
    on_progress=lambda fraction: None,
) -> np.ndarray:
    """``swap_layout`` from ``starts`` seeds (``seed``, ``seed + 1``, ...) with the same
    options, and the grid of the lowest ``neighbour_cost`` (the first of equals: the result
    does not depend on timing). ``on_progress(fraction)`` is told as each start ends."""
    best_cost, best = np.inf, cell_of_image
    for start in range(starts):
        cells = swap_layout(
            components, cell_of_image, rows, cols, seed=seed + start, movable=movable, home=home,
            stay_cost=stay_cost, leave=leave, all_pairs=all_pairs,
        )  # fmt: skip
        # One start has nothing to choose between: the whole grid's objective is not needed.
        cost = neighbour_cost(components, cells, rows, cols, all_pairs) if starts > 1 else 0.0
        if cost < best_cost:
            best_cost, best = cost, cells
        on_progress((start + 1) / starts)
    return best
