"""The scalable assignment against the exact one: time, cost and DPQ_16.

    python benchmarks/assign_scaling.py [N ...]        (default: 1024 4096 10000)

For each N: the synthetic mixture (benchmarks/datasets.py), gridtsne's t-SNE
map of it, the default near-square grid; then the exact solver and the
blocks solver on the same map. Prints seconds, total squared displacement
(cost, in cells^2), the blocks cost relative to exact, and DPQ_16 of the
assignment before and after refinement.
"""

import sys
import time

from datasets import mixture

from gridtsne import assign, quality, reduce, refine
from gridtsne.vectors import normalise


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1024, 4096, 10000]
    print(
        f"{'N':>7} {'grid':>9} {'solver':>7} {'seconds':>8} {'cost':>12} {'vs exact':>9} "
        f"{'DPQ_16':>7} {'refined':>8}",
        flush=True,
    )
    for n in sizes:
        embeddings = mixture(n)
        coords, _ = reduce.tsne_2d(embeddings)
        vectors = normalise(embeddings)
        rows, cols = assign.grid_shape(n)
        exact_cost = None
        for solver in ("exact", "blocks"):
            started = time.perf_counter()
            cells, cost, _ = assign.assign_to_grid(coords, rows, cols, solver=solver)
            seconds = time.perf_counter() - started
            exact_cost = exact_cost or cost
            dpq = quality.layout_quality(vectors, cells, cols)["dpq"]
            refined = quality.layout_quality(vectors, refine.refine_layout(vectors, cells, rows, cols), cols)
            print(
                f"{n:>7} {f'{rows}x{cols}':>9} {solver:>7} {seconds:8.2f} {cost:12.0f} "
                f"{cost / exact_cost - 1:+9.2%} {dpq:7.3f} {refined['dpq']:8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
