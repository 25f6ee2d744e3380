"""Exact linear assignment: scipy's linear_sum_assignment against lap.lapjv.

    pip install lap && python benchmarks/lap_solvers.py

Both solve the same problem exactly (squared distances from random points to
the cell centres of a square grid, as assign builds it); this is the
measurement behind using scipy (already required by openTSNE) instead of lap.
"""

import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from gridtsne.assign import cell_centres, squared_distances


def seconds(solve, cost, repeats):
    started = time.perf_counter()
    for _ in range(repeats):
        solve(cost)
    return (time.perf_counter() - started) / repeats


def main():
    import lap

    rng = np.random.default_rng(0)
    print(f"{'cells':>6} {'scipy ms':>9} {'lap ms':>9} {'lap / scipy':>12}")
    for side in (8, 16, 32, 45):
        cells = side * side
        cost = squared_distances(rng.random((cells, 2)) * (side - 1), cell_centres(side, side))
        repeats = max(1, 2000 // cells)
        a, b = seconds(linear_sum_assignment, cost, repeats), seconds(lap.lapjv, cost, repeats)
        assert np.isclose(cost[linear_sum_assignment(cost)].sum(), lap.lapjv(cost)[0])
        print(f"{cells:>6} {a * 1000:9.1f} {b * 1000:9.1f} {b / a:12.1f}")


if __name__ == "__main__":
    main()
