"""Time and memory of the exact assignment (lap.lapjv) as the number of images grows.

    python benchmarks/assign_scaling.py [N ...]

Uses t-SNE-like 2-D input (a mixture of Gaussian blobs), the default
near-square grid, and reports seconds and the size of the cost matrix.
"""

import sys
import time

import numpy as np

from gridtsne import assign, reduce


def blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.random((20, 2))
    points = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.05, size=(n, 2))
    return reduce.to_unit_square(points)


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 2500, 5000]
    print(f"{'N':>7} {'grid':>9} {'seconds':>8} {'cost matrix MB':>15}")
    for n in sizes:
        rows, cols = assign.grid_shape(n)
        coords = blobs(n)
        started = time.perf_counter()
        assign.assign_to_grid(coords, rows, cols)
        seconds = time.perf_counter() - started
        print(f"{n:>7} {f'{rows}x{cols}':>9} {seconds:8.2f} {n * rows * cols * 8 / 1e6:15.0f}")


if __name__ == "__main__":
    main()
