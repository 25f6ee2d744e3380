"""assign: grid shape and the exact assignment of 2-D points to cells."""

import numpy as np
import pytest

from gridtsne import assign
from gridtsne.workdir import StageError


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (12, (3, 4)), (16, (4, 4)), (17, (4, 5)),
                                      (110, (10, 11)), (1000, (32, 32))])
def test_default_grid_is_the_smallest_near_square_that_holds_every_image(n, shape):
    rows, cols = assign.grid_shape(n)
    assert (rows, cols) == shape and rows * cols >= n and cols - rows <= 1


def test_points_on_the_cell_centres_go_to_exactly_those_cells():
    rows, cols = 4, 6
    centres = assign.cell_centres(rows, cols)  # (x = col, y = row)
    order = np.random.default_rng(0).permutation(rows * cols)
    coords = centres[order] / [cols - 1, rows - 1]
    cell_of_image, cost = assign.assign_to_grid(coords, rows, cols)
    assert cell_of_image.tolist() == order.tolist()
    assert cost == pytest.approx(0.0, abs=1e-9)


def test_fewer_images_than_cells_gives_each_a_distinct_cell():
    coords = np.random.default_rng(1).random((10, 2))
    cell_of_image, _ = assign.assign_to_grid(coords, 3, 4)
    assert len(set(cell_of_image.tolist())) == 10 and cell_of_image.max() < 12


def test_the_assignment_is_optimal_on_a_small_case():
    from itertools import permutations

    coords = np.random.default_rng(2).random((6, 2))
    cell_of_image, cost = assign.assign_to_grid(coords, 2, 3)
    points = assign.fit_to_grid(coords, 2, 3)
    centres = assign.cell_centres(2, 3)
    best = min(((points - centres[list(p)]) ** 2).sum() for p in permutations(range(6)))
    assert cost == pytest.approx(best)


def test_too_many_images_for_the_grid_is_a_clear_error():
    with pytest.raises(StageError, match="do not fit a 2x2 grid"):
        assign.assign_to_grid(np.random.default_rng(3).random((5, 2)), 2, 2)


def test_parse_grid():
    assert assign.parse_grid("12x16") == (12, 16)
    for bad in ("12", "0x4", "axb"):
        with pytest.raises(ValueError):
            assign.parse_grid(bad)
