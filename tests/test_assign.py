"""assign: grid shape, aspect, solvers, empty cells and subsets."""

import numpy as np
import pytest

from gridtsne import assign
from gridtsne.options import AssignOptions, parse_aspect, parse_grid


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


def test_the_exact_solver_started_from_prices_finds_the_same_assignment():
    points = assign.fit_to_grid(np.random.default_rng(3).normal(size=(400, 2)), 20, 20)
    centres = assign.cell_centres(20, 20)
    priced = assign._exact_lap(points, centres, priced=True)
    assert np.array_equal(priced, assign._exact_lap(points, centres))
    assert len(set(priced.tolist())) == 400


def test_the_exact_solvers_cost_matrix_is_the_squared_distance_built_in_one_array():
    """The cost of every point at every cell, as the definition gives it, made without a second
    points x cells array beside it: an update of 1,873 photos on 1,980 cells peaked at twice
    the matrix (57 MB) above a fresh layout of the same photos."""
    import tracemalloc

    rng = np.random.default_rng(0)
    points = rng.random((900, 2)) * 30
    centres = assign.cell_centres(30, 31)
    expected = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    tracemalloc.start()
    try:
        cost = assign.squared_distances(points, centres)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.allclose(cost, expected, rtol=1e-12, atol=0)
    assert peak < 1.2 * cost.nbytes, (peak, cost.nbytes)


def test_the_blocks_solver_is_complete_and_close_to_exact():
    coords = blobs(900, seed=3)
    exact_cells, exact_cost, _ = assign.assign_to_grid(coords, 30, 30, solver="exact")
    block_cells, block_cost, _ = assign.assign_to_grid(coords, 30, 30, solver="blocks")
    assert sorted(block_cells.tolist()) == list(range(900))
    assert exact_cost <= block_cost < exact_cost * 1.05


def test_the_blocks_solver_gives_the_same_grid_on_one_thread_or_two(monkeypatch):
    """A pass's windows are solved on two threads: the grid, and an update's from a weighted
    start, are those of one thread."""
    coords = blobs(1500, seed=4)
    points = assign.fit_to_grid(coords, 40, 40)
    weights = np.where(np.arange(1500) % 10 == 0, 1.0, 4.0)
    start = np.random.default_rng(4).permutation(1600)[:1500]
    grids = {}
    for threads in (1, 2):
        monkeypatch.setattr(assign, "WINDOW_THREADS", threads)
        solver = assign.BlocksSolver()
        grids[threads] = solver.solve(points, 40, 40), solver.improve(points, start, 40, 40, weights)
    for one, two in zip(grids[1], grids[2], strict=True):
        assert np.array_equal(one, two)
    assert len(set(grids[2][1].tolist())) == 1500  # every photo in a cell of its own


def test_auto_is_exact_for_small_grids_and_blocks_for_large_ones():
    assert assign.resolve_solver("auto", 1024).name == "exact"
    assert assign.resolve_solver("auto", assign.EXACT_MAX_CELLS + 1).name == "blocks"
    with pytest.raises(ValueError):
        assign.resolve_solver("magic", 10)


def test_too_many_points_for_the_grid_is_a_value_error_naming_subset():
    with pytest.raises(ValueError, match="do not fit 4 cells.*subset"):
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
    assert parse_grid("12x16") == (12, 16)
    assert parse_aspect("16:9") == (16, 9)
    for bad in ("12", "0x4", "axb"):
        with pytest.raises(ValueError):
            parse_grid(bad)
    for bad in ("16", "0:9", "wide"):
        with pytest.raises(ValueError):
            parse_aspect(bad)


def test_an_aspect_beside_an_explicit_grid_does_not_make_assign_stale():
    freshness = AssignOptions(grid=(4, 5)).freshness()
    assert AssignOptions(grid=(4, 5), aspect=(16, 9)).freshness() == freshness
    assert AssignOptions(aspect=(16, 9)).freshness() != AssignOptions().freshness()


def test_a_grid_refined_by_other_refinement_code_is_stale(tmp_path, monkeypatch):
    # After an upgrade that changes refinement, `all` must not keep the old grid.
    from gridtsne import refine
    from gridtsne.workdir import COORDS, EMBEDDINGS, Workdir, save_npy

    work = Workdir(tmp_path / "work")
    rng = np.random.default_rng(4)
    save_npy(work.file(EMBEDDINGS), rng.random((30, 16)).astype(np.float32))
    save_npy(work.file(COORDS), blobs(30).astype(np.float32))
    assert assign.STAGE.run(work, AssignOptions(), skip_if_fresh=True)["ran"]
    assert assign.STAGE.run(work, AssignOptions(), skip_if_fresh=True)["ran"] is False
    monkeypatch.setattr(refine, "SMOOTH_SHARE", 0.25)
    assert "refinement" in assign.STAGE.staleness(work)  # `status` says so too
    assert assign.STAGE.run(work, AssignOptions(), skip_if_fresh=True)["ran"]
    # Without refinement its settings do not matter.
    assert assign.STAGE.run(work, AssignOptions(refine=False), skip_if_fresh=True)["ran"]
    monkeypatch.setattr(refine, "SMOOTH_SHARE", 0.5)
    assert assign.STAGE.run(work, AssignOptions(refine=False), skip_if_fresh=True)["ran"] is False
