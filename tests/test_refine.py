"""refine: swaps after the assignment keep the layout complete and only improve it."""

import numpy as np
import pytest

from gridtsne import assign, quality, refine


def test_refinement_keeps_a_complete_layout_and_improves_its_quality():

    rng = np.random.default_rng(6)
    centres = rng.normal(size=(6, 32))
    labels = rng.integers(0, 6, 144)
    vectors = centres[labels] + rng.normal(scale=0.3, size=(144, 32))
    coarse = np.argsort(labels, kind="stable")  # clusters in bands, unsorted within
    cell_of_image = np.empty(144, dtype=np.int64)
    cell_of_image[coarse] = np.arange(144)
    refined = refine.refine_layout(vectors, cell_of_image, 12, 12)
    assert sorted(refined.tolist()) == list(range(144))
    before = quality.layout_quality(vectors, cell_of_image, 12)["dpq"]
    assert quality.layout_quality(vectors, refined, 12)["dpq"] > before


def test_refinement_leaves_the_empty_cells_where_the_assignment_put_them():

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(130, 16))
    coords = rng.random((130, 2))
    cell_of_image, _, _ = assign.assign_to_grid(coords, 12, 12)
    refined = refine.refine_layout(vectors, cell_of_image, 12, 12)
    assert set(refined.tolist()) == set(cell_of_image.tolist())  # the same 130 cells, the same 14 empty
    assert not np.array_equal(refined, cell_of_image)  # yet the images did move


def neighbour_objective(vectors, cell_of_image, cols):
    """The swap step's objective from its definition: the ring-weighted embedding
    distance over every pair of grid neighbours, each pair once, times SMOOTH_SHARE; plus,
    for every image, the distances to the images beside it, sorted, times NEAREST_WEIGHTS."""

    placed = np.flatnonzero(cell_of_image >= 0)
    position = np.stack(np.divmod(cell_of_image[placed], cols), axis=1)
    squared = ((position[:, None, :] - position[None, :, :]) ** 2).sum(axis=2)
    weight = np.vectorize(lambda d2: refine.RING_WEIGHTS.get(int(d2), 0.0))(squared)
    placed_vectors = np.asarray(vectors, dtype=np.float64)[placed]
    distance = np.linalg.norm(placed_vectors[:, None, :] - placed_vectors[None, :, :], axis=2)
    total = refine.SMOOTH_SHARE * float(np.triu(weight * distance, 1).sum())
    for image in range(len(placed)):
        beside = np.sort(distance[image][squared[image] == 1])
        total += float((beside * np.asarray(refine.NEAREST_WEIGHTS)[: len(beside)]).sum())
    return total


def test_swaps_only_ever_lower_the_neighbour_distance_and_keep_empty_cells():

    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(100, 8)).astype(np.float32)
    cell_of_image = rng.permutation(120)[:100]  # 20 empty cells scattered over a 10 x 12 grid
    before = neighbour_objective(vectors, cell_of_image, 12)
    swapped = refine.swap_layout(vectors, cell_of_image, 10, 12)
    assert set(swapped.tolist()) == set(cell_of_image.tolist())
    after = neighbour_objective(vectors, swapped, 12)
    assert after < 0.9 * before
    # It stops at a local optimum: no single swap it tries lowers the objective further.
    assert np.array_equal(refine.swap_layout(vectors, swapped, 10, 12), swapped)


def test_at_the_swaps_optimum_no_swap_within_reach_lowers_the_objective():
    # Checks the swaps' incremental arithmetic against the objective from its definition:
    # every swap of two images up to SWAP_REACH apart, tried by brute force, costs more.
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(70, 6)).astype(np.float32)
    rows, cols = 8, 10
    cell_of_image = rng.permutation(rows * cols)[:70]  # 10 empty cells
    swapped = refine.swap_layout(vectors, cell_of_image, rows, cols, sweeps=50)
    best = neighbour_objective(vectors, swapped, cols)
    row, col = np.divmod(swapped, cols)
    for first in range(70):
        for second in range(first + 1, 70):
            if max(abs(row[first] - row[second]), abs(col[first] - col[second])) > refine.SWAP_REACH:
                continue
            trial = swapped.copy()
            trial[[first, second]] = trial[[second, first]]
            assert neighbour_objective(vectors, trial, cols) >= best - 1e-6, (first, second)


def test_an_update_s_swaps_stop_where_no_allowed_swap_pays_for_leaving_home():
    # As above for an update: only movable cells swap, and each image pays stay_cost a cell
    # (plus leave) away from its home. Later sweeps try only pairs whose surroundings changed;
    # the optimum must still be one that no allowed swap, tried by brute force, improves.
    rng = np.random.default_rng(12)
    rows, cols = 12, 14
    vectors = rng.normal(size=(150, 6)).astype(np.float32)
    home = rng.permutation(rows * cols)[:150]
    movable = np.zeros(rows * cols, dtype=bool)
    movable[rng.choice(rows * cols, 120, replace=False)] = True
    stay_cost, leave = 0.05, 1.0

    def objective(cells):
        away = np.hypot(*(np.divmod(cells, cols)[axis] - np.divmod(home, cols)[axis] for axis in (0, 1)))
        return neighbour_objective(vectors, cells, cols) + stay_cost * float(
            (away + leave * (away > 0)).sum()
        )

    swapped = refine.swap_layout(
        vectors, home, rows, cols, sweeps=50, movable=movable, home=home, stay_cost=stay_cost, leave=leave
    )
    assert (swapped != home).any()
    assert (swapped[~movable[home]] == home[~movable[home]]).all()
    best = objective(swapped)
    row, col = np.divmod(swapped, cols)
    for first in np.flatnonzero(movable[swapped]):
        for second in np.flatnonzero(movable[swapped]):
            if (
                second <= first
                or max(abs(row[first] - row[second]), abs(col[first] - col[second])) > refine.SWAP_REACH
            ):
                continue
            trial = swapped.copy()
            trial[[first, second]] = trial[[second, first]]
            assert objective(trial) >= best - 1e-6, (first, second)


def test_swaps_undo_a_trade_of_two_neighbouring_images_in_a_perfect_layout():

    # The embedding is the grid itself, so the identity layout is perfect.
    rows, cols = 6, 7
    vectors = np.stack(np.divmod(np.arange(rows * cols), cols), axis=1).astype(np.float32)
    # A corner, an edge and the middle, with each kind of neighbour.
    trades = [
        ((0, 0), (0, 1)),
        ((0, 0), (1, 1)),
        ((0, 3), (1, 0)),
        ((0, 6), (1, -1)),
        ((2, 3), (0, 1)),
        ((2, 3), (1, 0)),
        ((2, 3), (1, 1)),
        ((2, 3), (1, -1)),
        ((4, 6), (1, 0)),
        ((5, 2), (0, 1)),
    ]
    for (row, col), (d_row, d_col) in trades:
        first, second = row * cols + col, (row + d_row) * cols + col + d_col
        cell_of_image = np.arange(rows * cols)
        cell_of_image[[first, second]] = cell_of_image[[second, first]]
        restored = refine.swap_layout(vectors, cell_of_image, rows, cols)
        assert np.array_equal(restored, np.arange(rows * cols)), (first, second)


def test_refinement_is_deterministic():

    rng = np.random.default_rng(10)
    vectors = rng.normal(size=(200, 300))
    cell_of_image = rng.permutation(225)[:200]
    first = refine.refine_layout(vectors, cell_of_image, 15, 15)
    assert np.array_equal(first, refine.refine_layout(vectors, cell_of_image, 15, 15))


def test_neighbour_cost_is_the_swap_objective_from_its_definition():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(100, 8)).astype(np.float32)
    cell_of_image = rng.permutation(120)[:100]  # 20 empty cells on a 10 x 12 grid
    expected = neighbour_objective(vectors, cell_of_image, 12)
    assert np.isclose(refine.neighbour_cost(vectors, cell_of_image, 10, 12), expected)


def test_small_grids_keep_the_best_of_several_seeds():
    assert refine.starts_for(200) == refine.MAX_STARTS
    assert refine.starts_for(1024) == 1  # large grids: one start, as before
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(144, 16)).astype(np.float32)
    cell_of_image = rng.permutation(144)
    costs = [
        refine.neighbour_cost(vectors, refine.refine_layout(vectors, cell_of_image, 12, 12, starts=n), 12, 12)
        for n in (1, 3)
    ]
    assert costs[1] <= costs[0]
    assert np.array_equal(
        refine.refine_layout(vectors, cell_of_image, 12, 12),
        refine.refine_layout(vectors, cell_of_image, 12, 12, starts=refine.MAX_STARTS),
    )


def test_images_left_out_of_the_grid_are_never_moved_onto_it():
    # With --subset some images have cell -1: refinement neither places them nor
    # counts them as anyone's neighbour.
    rng = np.random.default_rng(14)
    vectors = rng.normal(size=(120, 10)).astype(np.float32)
    cell_of_image = np.full(120, -1)
    cell_of_image[:100] = rng.permutation(100)
    refined = refine.refine_layout(vectors, cell_of_image, 10, 10)
    assert (refined[100:] == -1).all() and sorted(refined[:100].tolist()) == list(range(100))


@pytest.mark.parametrize("band_bytes, matrix", [(1, False), (1 << 30, False), (None, True)])
def test_the_stencil_filled_band_by_band_is_the_one_refreshed_cell_by_cell(monkeypatch, band_bytes, matrix):
    # The distances swaps start from are filled a band of grid rows at a time (one row, or
    # the whole grid at once here), or read from the matrix of every pair; after swaps, cells
    # are refreshed one by one. The two must agree to the last bit, or a swap and its reverse
    # could both look like gains.
    monkeypatch.setattr(refine, "FILL_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(13)
    rows, cols = 9, 11
    vectors = rng.normal(size=(80, 300)).astype(np.float32)
    cells = rng.permutation(rows * cols)[:80]  # 19 empty cells
    if matrix:
        stencil = refine._NeighbourDistances(None, cells, rows, cols, 4, refine.pair_distances(vectors))
    else:
        stencil = refine._NeighbourDistances(vectors, cells, rows, cols, reach=4)
    filled = stencil.distance.copy()
    stencil.distance[:] = 0.0
    stencil.refresh(stencil.inner)
    occupied = stencil.inner[stencil.occupant[stencil.inner] != stencil.empty]
    assert (filled[occupied] > 0).any(axis=1).all()  # every photo's row was filled
    assert np.array_equal(filled, stencil.distance)


def _scattered(seed: int, rows: int, cols: int, n_images: int, dims: int, n_movable: int):
    """Random vectors scattered over a grid with empty cells, and, with ``n_movable`` cells
    that may move, the settings of an update that keeps the scatter as the photos' homes."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_images, dims)).astype(np.float32)
    cells = rng.permutation(rows * cols)[:n_images]  # with empty cells: missing neighbours
    if not n_movable:
        return vectors, cells, {}
    movable = np.zeros(rows * cols, dtype=bool)
    movable[rng.choice(rows * cols, n_movable, replace=False)] = True
    return vectors, cells, {"movable": movable, "home": cells, "stay_cost": 0.05, "leave": 1.0}


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize(
    "setting, values",
    [
        ("FEW_GAINING_CLASSES", (-1, refine.FEW_GAINING_CLASSES, 10**6)),
        ("NETWORK_FROM", (0, refine.NETWORK_FROM, 10**12)),
    ],
)
def test_how_swaps_are_evaluated_never_changes_the_grid(monkeypatch, update, setting, values):
    """Settings that only choose how pairs are evaluated give the same grid, bit for bit, at
    any value: sweeps with few swaps evaluate all pairs at once and again only near each swap
    (FEW_GAINING_CLASSES: in no sweep, the later ones, all), and each cell's four nearest are
    sorted by a network on many pairs and by numpy's sort on a few (NETWORK_FROM: always, as
    set, never)."""
    rows, cols = 24, 26
    vectors, cells, extra = _scattered(21, rows, cols, 600, 12, 400 if update else 0)
    grids = []
    for value in values:
        monkeypatch.setattr(refine, setting, value)
        grids.append(refine.swap_layout(vectors, cells, rows, cols, **extra))
    assert (grids[0] != cells).any()
    assert all(np.array_equal(grids[0], grid) for grid in grids[1:])


def test_the_distances_of_every_pair_are_the_embedding_s_and_an_empty_cell_s_are_zero():
    vectors = np.random.default_rng(30).normal(size=(90, 40)).astype(np.float32)
    pairs = refine.pair_distances(vectors)
    assert pairs.shape == (91, 91) and np.array_equal(pairs, pairs.T)
    expected = np.linalg.norm(vectors[:, None, :].astype(np.float64) - vectors[None, :, :], axis=2)
    assert np.allclose(pairs[:-1, :-1], expected, atol=1e-5)
    assert not pairs[-1].any() and not np.diag(pairs).any()


@pytest.mark.parametrize("update", [False, True])
def test_swaps_on_the_matrix_of_every_pair_make_the_grid_the_vectors_make(monkeypatch, update):
    """Small grids swap on ``pair_distances`` (PAIR_MATRIX_UP_TO); the swaps and the best of
    several starts are the same as from the vectors, for a fresh grid and for an update."""
    rows, cols = 20, 22
    # 300 dimensions: a PCA to SWAP_DIMS first, as for photos.
    vectors, cells, extra = _scattered(23, rows, cols, 400, 300, 300 if update else 0)
    grids = []
    for up_to in (0, refine.PAIR_MATRIX_UP_TO):
        monkeypatch.setattr(refine, "PAIR_MATRIX_UP_TO", up_to)
        grids.append(refine.refine_layout(vectors, cells, rows, cols, starts=2, **extra))
    assert (grids[0] != cells).any()
    assert np.array_equal(grids[0], grids[1])


def test_an_update_with_no_two_movable_photos_within_reach_moves_nothing():
    vectors = np.random.default_rng(22).normal(size=(20, 4)).astype(np.float32)
    cells = np.arange(20)
    for movable_cells in ([], [0], [0, 19]):
        movable = np.zeros(20, dtype=bool)
        movable[movable_cells] = True
        assert np.array_equal(refine.swap_layout(vectors, cells, 4, 5, movable=movable), cells)
