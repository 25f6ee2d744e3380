"""Layout quality of gridtsne against the original recipe, FLAS and random, side by side.

    pip install -e '.[bench]'          # scikit-learn and vc-flas, for the alternatives
    python benchmarks/layout_quality.py [--sizes 1024 4096] [--flas-seeds 1 2 3 4 5]

On each set of embeddings, these layouts on the same near-square grid:

(a) gridtsne: its default reduce and assign (PCA-50 + openTSNE, exact or
    blocks assignment with one scale on both axes, then refinement: sorting
    and swaps, gridtsne/refine.py); (a') the same without refinement
    (`assign --no-refine`), to show what refinement adds;
(b) recipe: the 2017 notebook's method, scikit-learn's TSNE with default
    settings on the raw embeddings, each axis min-max scaled to the grid,
    squared distances, exact linear assignment;
(c) FLAS (Barthel et al. 2023, PyPI vc-flas) on the L2-normalised embeddings,
    random seed 1 (--flas-seeds 1 2 3 runs one row per seed, for its spread);
(d) random: a seeded random permutation.

Every layout is scored in the same space, the L2-normalised embeddings
(cosine geometry, as CNN features are compared), by gridtsne.quality:
DPQ_16 and neighbourhood preservation at k = 10. Sets: the 250 sample
photos' embeddings, and the synthetic mixture of benchmarks/datasets.py at
each --sizes N. Seconds are wall time of the layout alone (not embed).
"""

import argparse
import time

import numpy as np
from datasets import mixture, sample_images

from gridtsne import assign, quality, reduce
from gridtsne.vectors import normalise


def gridtsne_default(embeddings, rows, cols):
    coords, _ = reduce.tsne_2d(embeddings)
    cells, _ = assign.layout(coords, embeddings, rows, cols)
    return cells


def gridtsne_unrefined(embeddings, rows, cols):
    coords, _ = reduce.tsne_2d(embeddings)
    cells, _ = assign.layout(coords, embeddings, rows, cols, refine_grid=False)
    return cells


def original_recipe(embeddings, rows, cols):
    from scipy.optimize import linear_sum_assignment
    from sklearn.manifold import TSNE

    points = TSNE().fit_transform(embeddings)
    points = (points - points.min(axis=0)) / np.ptp(points, axis=0) * [cols - 1, rows - 1]
    cost = assign.squared_distances(points, assign.cell_centres(rows, cols))
    image, cell = linear_sum_assignment(cost)
    cells = np.empty(len(points), dtype=np.int64)
    cells[image] = cell
    return cells


def flas(embeddings, rows, cols, seed=1):
    import vc_flas

    vectors = normalise(embeddings.astype(np.float64)).astype(np.float32)
    grid = vc_flas.Grid.from_features(vectors, size=(rows, cols))
    sorting = vc_flas.flas(grid, wrap=False, seed=seed).sorting.ravel()
    cells = np.empty(len(vectors), dtype=np.int64)
    cells[sorting[sorting >= 0]] = np.flatnonzero(sorting >= 0)
    return cells


def random_layout(embeddings, rows, cols):
    return np.random.default_rng(0).permutation(rows * cols)[: len(embeddings)]


METHODS = {
    "(a) gridtsne": gridtsne_default,
    "(a') unrefined": gridtsne_unrefined,
    "(b) recipe": original_recipe,
    "(c) FLAS": flas,
    "(d) random": random_layout,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument(
        "--flas-seeds",
        type=int,
        nargs="*",
        default=[1],
        help="FLAS is randomised: one row per seed (default: seed 1)",
    )
    args = parser.parse_args()
    methods = {}
    for name, lay_out in METHODS.items():
        if lay_out is flas:
            for seed in args.flas_seeds:
                methods[f"{name} s{seed}"] = lambda e, r, c, seed=seed: flas(e, r, c, seed)
        else:
            methods[name] = lay_out
    sets = [("sample_images (250)", sample_images)]
    sets += [(f"mixture {n}", lambda n=n: mixture(n)) for n in args.sizes]
    print(f"{'set':<20} {'method':<15} {'DPQ_16':>7} {'NP@10':>6} {'seconds':>8}", flush=True)
    for name, load in sets:
        embeddings = load()
        vectors = normalise(embeddings.astype(np.float64))
        rows, cols = assign.grid_shape(len(embeddings))
        for method, lay_out in methods.items():
            started = time.perf_counter()
            cells = lay_out(embeddings, rows, cols)
            seconds = time.perf_counter() - started
            scores = quality.layout_quality(vectors, cells, cols)
            print(
                f"{name:<20} {method:<15} {scores['dpq']:7.3f} {scores['neighbourhood_preservation']:6.3f} "
                f"{seconds:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
