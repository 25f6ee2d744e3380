"""assign: grid shape, aspect, solvers, empty cells and subsets."""

import numpy as np
import pytest

from gridtsne import assign
from gridtsne.workdir import StageError


def blobs(n, seed=0):
    """t-SNE-like 2-D input: points around 12 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.random((12, 2))
    return centres[rng.integers(0, 12, n)] + rng.normal(scale=0.05, size=(n, 2))


@pytest.mark.parametrize(
    "n, shape", [(1, (1, 1)), (12, (3, 4)), (16, (4, 4)), (17, (4, 5)), (110, (10, 11)), (1000, (32, 32))]
)
def test_default_grid_is_the_smallest_near_square_that_holds_every_image(n, shape):
    rows, cols = assign.grid_shape(n)
    assert (rows, cols) == shape and rows * cols >= n and cols - rows <= 1


@pytest.mark.parametrize(
    "n, aspect, shape",
    [(144, (16, 9), (9, 16)), (1000, (16, 9), (24, 43)), (100, (1, 4), (20, 5)), (7, (3, 1), (2, 5))],
)
def test_an_aspect_gives_the_smallest_grid_of_about_that_shape(n, aspect, shape):
    rows, cols = assign.grid_shape(n, aspect)
    assert (rows, cols) == shape and rows * cols >= n
    assert (rows - 1) * cols < n  # one row fewer would not hold them


def test_points_on_the_cell_centres_go_to_exactly_those_cells():
    rows, cols = 4, 6
    centres = assign.cell_centres(rows, cols)  # (x = col, y = row)
    order = np.random.default_rng(0).permutation(rows * cols)
    for solver in ("exact", "blocks"):
        cell_of_image, cost, used = assign.assign_to_grid(centres[order] * 0.1, rows, cols, solver=solver)
        assert used == solver
        assert cell_of_image.tolist() == order.tolist()
        assert cost == pytest.approx(0.0, abs=1e-9)


def test_the_map_is_scaled_the_same_on_both_axes_whatever_the_grid():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    for rows, cols in ((4, 4), (9, 16), (16, 9)):
        fitted = assign.fit_to_grid(np.repeat(square, rows * cols // 4, axis=0), rows, cols)
        width, height = np.ptp(fitted, axis=0)
        assert width == pytest.approx(height)
        assert fitted.mean(axis=0) == pytest.approx([(cols - 1) / 2, (rows - 1) / 2])


def test_a_wide_grid_with_room_to_spare_keeps_a_round_map_round():
    # 100 points in a disc on a 12x40 grid: stretched per axis the disc would
    # become an ellipse 40/12 times wider than tall; scaled as one it stays round.
    rng = np.random.default_rng(4)
    angle, radius = rng.random(100) * 2 * np.pi, np.sqrt(rng.random(100))
    disc = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    cell_of_image, _, _ = assign.assign_to_grid(disc, 12, 40, solver="exact")
    row, col = np.divmod(cell_of_image, 40)
    assert 0.8 < col.std() / row.std() < 1.25


def test_fewer_images_than_cells_gives_each_a_distinct_cell_and_the_empty_ones_at_the_edges():
    coords = blobs(90, seed=1)
    for solver in ("exact", "blocks"):
        cell_of_image, _, _ = assign.assign_to_grid(coords, 10, 10, solver=solver)
        assert len(set(cell_of_image.tolist())) == 90
        assert 0 <= cell_of_image.min() and cell_of_image.max() < 100


def test_the_exact_assignment_is_optimal_on_a_small_case():
    from itertools import permutations

    coords = np.random.default_rng(2).random((6, 2))
    cell_of_image, cost, _ = assign.assign_to_grid(coords, 2, 3, solver="exact")
    points = assign.fit_to_grid(coords, 2, 3)
    centres = assign.cell_centres(2, 3)
    best = min(((points - centres[list(p)]) ** 2).sum() for p in permutations(range(6)))
    assert cost == pytest.approx(best)


def test_the_blocks_solver_is_complete_and_close_to_exact():
    coords = blobs(900, seed=3)
    exact_cells, exact_cost, _ = assign.assign_to_grid(coords, 30, 30, solver="exact")
    block_cells, block_cost, _ = assign.assign_to_grid(coords, 30, 30, solver="blocks")
    assert sorted(block_cells.tolist()) == list(range(900))
    assert exact_cost <= block_cost < exact_cost * 1.05


def test_auto_is_exact_for_small_grids_and_blocks_for_large_ones():
    assert assign.resolve_solver("auto", 1024).name == "exact"
    assert assign.resolve_solver("auto", assign.EXACT_MAX_CELLS + 1).name == "blocks"
    with pytest.raises(ValueError):
        assign.resolve_solver("magic", 10)


def test_too_many_images_for_the_grid_is_a_clear_error():
    with pytest.raises(StageError, match="do not fit a 2x2 grid.*--subset"):
        assign.assign_to_grid(np.random.default_rng(3).random((5, 2)), 2, 2)


def test_a_subset_keeps_every_region_of_the_map_and_leaves_the_rest_out():
    # Two clusters, 300 and 100 points, on 100 cells: both keep their share.
    rng = np.random.default_rng(5)
    coords = np.concatenate([rng.normal(0, 0.1, (300, 2)), rng.normal(3, 0.1, (100, 2))])
    cell_of_image, _, _ = assign.assign_to_grid(coords, 10, 10, subset=True)
    kept = cell_of_image >= 0
    assert kept.sum() == 100 and len(set(cell_of_image[kept].tolist())) == 100
    assert 70 <= kept[:300].sum() <= 80 and 20 <= kept[300:].sum() <= 30
    assert not kept[:100].all()  # not simply the first files


def test_parse_grid_and_aspect():
    assert assign.parse_grid("12x16") == (12, 16)
    assert assign.parse_aspect("16:9") == (16, 9)
    for bad in ("12", "0x4", "axb"):
        with pytest.raises(ValueError):
            assign.parse_grid(bad)
    for bad in ("16", "0:9", "wide"):
        with pytest.raises(ValueError):
            assign.parse_aspect(bad)


def test_refinement_keeps_a_complete_layout_and_improves_its_quality():
    from gridtsne import quality, refine

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
    from gridtsne import refine

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(130, 16))
    coords = rng.random((130, 2))
    cell_of_image, _, _ = assign.assign_to_grid(coords, 12, 12)
    refined = refine.refine_layout(vectors, cell_of_image, 12, 12)
    assert set(refined.tolist()) == set(cell_of_image.tolist())  # the same 130 cells, the same 14 empty
    assert not np.array_equal(refined, cell_of_image)  # yet the images did move


def neighbour_objective(vectors, cell_of_image, cols):
    """The swap step's objective from its definition: the ring-weighted embedding
    distance over every pair of grid neighbours, each pair once."""
    from gridtsne import refine

    placed = np.flatnonzero(cell_of_image >= 0)
    position = np.stack(np.divmod(cell_of_image[placed], cols), axis=1)
    squared = ((position[:, None, :] - position[None, :, :]) ** 2).sum(axis=2)
    weight = np.vectorize(lambda d2: refine.RING_WEIGHTS.get(int(d2), 0.0))(squared)
    distance = np.linalg.norm(vectors[placed][:, None, :] - vectors[placed][None, :, :], axis=2)
    return float(np.triu(weight * distance, 1).sum())


def test_swaps_only_ever_lower_the_neighbour_distance_and_keep_empty_cells():
    from gridtsne import refine

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


def test_swaps_undo_a_trade_of_two_neighbouring_images_in_a_perfect_layout():
    from gridtsne import refine

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


def test_sorting_sets_hold_at_most_set_side_squared_cells_spaced_apart():
    from gridtsne import refine

    rng = np.random.default_rng(9)
    for spacing in (1, 3):
        set_ids = refine.set_of_cell(50, 37, spacing, rng)
        row, col = np.divmod(np.arange(50 * 37), 37)
        for members in np.unique(set_ids):
            held = set_ids == members
            assert held.sum() <= refine.SET_SIDE**2
            assert len(set(row[held] % spacing)) == 1 and len(set(col[held] % spacing)) == 1
            assert np.ptp(row[held]) < refine.SET_SIDE * spacing


def test_refinement_is_deterministic():
    from gridtsne import refine

    rng = np.random.default_rng(10)
    vectors = rng.normal(size=(200, 300))
    cell_of_image = rng.permutation(225)[:200]
    first = refine.refine_layout(vectors, cell_of_image, 15, 15)
    assert np.array_equal(first, refine.refine_layout(vectors, cell_of_image, 15, 15))


def test_an_aspect_beside_an_explicit_grid_does_not_make_assign_stale():
    assert assign.parameters((4, 5), aspect=(16, 9)) == assign.parameters((4, 5))
    assert assign.parameters(None, aspect=(16, 9)) != assign.parameters(None)
