"""Improve a grid layout against the embedding itself (LAS-style local sorting).

The assignment places images where the 2-D map puts them; the map is a
compression of the embedding, so neighbours on the grid are close in the map
but not always the closest in the embedding. Refinement works on the grid
directly, in the manner of Linear Assignment Sorting (Barthel et al. 2023):
smooth the grid of embedding vectors (their first ``REFINE_DIMS`` principal
components) with a small box filter, so that every
cell holds what its neighbourhood looks like, then re-assign the images of
each window of cells to that window's cells by an exact linear assignment
that puts each image where the smoothed grid is most like it. Windows are
small and shifted between passes, so images move only locally: the global
arrangement of the t-SNE map stays, and the local order becomes that of the
embedding. Every window is a complete assignment of the images it holds to
the cells they hold, so the layout stays complete and empty cells stay put.
"""

from __future__ import annotations

import numpy as np

from gridtsne.assign import occupants, windows

#: Principal components the refinement works in: the smoothing and matching cost
#: O(N x dims) per pass, and 64 keep DPQ_16 within 0.003 of the full 1280 on the
#: benchmark sets (benchmarks/layout_quality.py), at a twentieth of the time.
REFINE_DIMS = 64
#: The largest filter radius, in cells, and at most a quarter of the grid's longer side.
MAX_RADIUS = 8
#: Each pass's radius is this times the last's, down to 1; the whole descent runs twice.
RADIUS_DECAY = 0.85
CYCLES = 2
#: Side of the windows whose images are re-assigned together, in cells.
DEFAULT_WINDOW = 16


def radius_schedule(rows: int, cols: int) -> tuple[int, ...]:
    """Filter radii of the passes: coarse to fine, twice, then three passes at radius 1.

    Measured on benchmarks/layout_quality.py's sets (DPQ_16 of the mixture of
    4,096: 0.791 assigned, 0.806 with six passes at radii 2-1, 0.816 with this).
    """
    radius, descent = min(MAX_RADIUS, max(rows, cols) / 4), []
    while radius >= 1:
        descent.append(int(round(radius)))
        radius *= RADIUS_DECAY
    return tuple(descent + [1, 1, 1]) * CYCLES


def box_sum(grid: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 box around every cell (clipped at the edges), by summed-area table."""
    rows, cols = grid.shape[:2]
    table = np.zeros((rows + 1, cols + 1, *grid.shape[2:]), dtype=np.float64)
    table[1:, 1:] = grid.cumsum(axis=0, dtype=np.float64).cumsum(axis=1)
    low_r = np.clip(np.arange(rows) - radius, 0, rows)
    high_r = np.clip(np.arange(rows) + radius + 1, 0, rows)
    low_c = np.clip(np.arange(cols) - radius, 0, cols)
    high_c = np.clip(np.arange(cols) + radius + 1, 0, cols)
    return (table[high_r][:, high_c] - table[low_r][:, high_c]
            - table[high_r][:, low_c] + table[low_r][:, low_c])


def box_mean(grid: np.ndarray, weight: np.ndarray, radius: int, own: float = 1.0) -> np.ndarray:
    """Mean of the occupied cells in a (2r+1)^2 box around every cell (rows x cols x D),
    the cell itself counted with weight ``own``."""
    total = box_sum(grid * weight[..., None], radius) - (1.0 - own) * grid * weight[..., None]
    count = box_sum(weight, radius) - (1.0 - own) * weight
    return (total / np.maximum(count, 1e-12)[..., None]).astype(np.float32)


def projected(vectors: np.ndarray, dims: int = REFINE_DIMS) -> np.ndarray:
    """``vectors`` on their first ``dims`` principal components (as they are if narrower)."""
    from gridtsne.reduce import pca

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[1] <= dims:
        return vectors
    return pca(vectors, dims).astype(np.float32)


def refine_layout(
    vectors: np.ndarray,
    cell_of_image: np.ndarray,
    rows: int,
    cols: int,
    *,
    radii: tuple[int, ...] | None = None,
    window: int = DEFAULT_WINDOW,
    own: float = 1.0,
) -> np.ndarray:
    """A new cell for every image (-1 stays -1), sorted locally against ``vectors``.

    ``radii``: the filter radius of each pass (default ``radius_schedule``);
    ``own``: the weight of a cell's own image in its smoothed target.
    """
    radii = radius_schedule(rows, cols) if radii is None else radii
    from scipy.optimize import linear_sum_assignment

    vectors = np.asarray(vectors, dtype=np.float32)
    cell_of_image = np.asarray(cell_of_image, dtype=np.int64).copy()
    placed = cell_of_image >= 0
    dimension = vectors.shape[1]
    for index, radius in enumerate(radii):
        grid = np.zeros((rows * cols, dimension), dtype=np.float32)
        grid[cell_of_image[placed]] = vectors[placed]
        weight = np.zeros(rows * cols, dtype=np.float32)
        weight[cell_of_image[placed]] = 1.0
        target = box_mean(grid.reshape(rows, cols, dimension), weight.reshape(rows, cols), radius, own)
        target = target.reshape(rows * cols, dimension)
        target_sq = (target**2).sum(axis=1)
        occupant = occupants(cell_of_image, rows, cols)
        shift = (window * (index * 3 % 4)) // 4
        for r0, r1, c0, c1 in windows(rows, cols, window, shift):
            members = occupant[r0:r1, c0:c1].ravel()
            # Images trade only the cells they hold: the empty cells stay where the
            # assignment left them, at the map's sparse edges, not as holes inside.
            window_cells = (np.arange(r0, r1)[:, None] * cols + np.arange(c0, c1)[None, :]).ravel()
            window_cells = window_cells[members >= 0]
            members = members[members >= 0]
            if len(members) < 2:
                continue
            # ||x - t||^2 without the ||x||^2 that every cell shares.
            cost = target_sq[window_cells][None, :] - 2.0 * (vectors[members] @ target[window_cells].T)
            image_index, cell_index = linear_sum_assignment(cost)
            cell_of_image[members[image_index]] = window_cells[cell_index]
    return cell_of_image.astype(np.int32)

