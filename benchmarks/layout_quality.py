"""Layout quality of gridtsne against the original recipe, FLAS and random, side by side.

    pip install -e '.[bench]'          # scikit-learn and vc-flas, for the alternatives
    python benchmarks/layout_quality.py [--sizes 1024 4096] [--flas-seeds 1 2 3 4 5]
    python benchmarks/layout_quality.py --collections /work/collections --workdirs /work/layout-work

With --collections (the suite of benchmarks/COLLECTIONS.md: one folder of
images per collection), see ``suite`` below: one table, gridtsne against the
anchors of issue 13, every seed's run counted.

On each set of embeddings, these layouts on the same near-square grid:

(a) gridtsne: its default reduce and assign (PCA-50 + openTSNE, exact or
    blocks assignment with one scale on both axes, then refinement: exact
    swaps, gridtsne/refine.py); (a') the same without refinement
    (`assign --no-refine`), to show what refinement adds;
(b) recipe: the 2017 notebook's method, scikit-learn's TSNE with default
    settings on the raw embeddings, each axis min-max scaled to the grid,
    squared distances, exact linear assignment;
(c) FLAS (Barthel et al. 2023, PyPI vc-flas) on the L2-normalised embeddings,
    random seed 1 (--flas-seeds 1 2 3 runs one row per seed, for its spread);
(d) random: a seeded random permutation.

Every layout is scored in the same space, the L2-normalised embeddings
(cosine geometry, as CNN features are compared), by gridtsne.quality:
DPQ_16 (each ring of grid neighbours at its mean; the suite also counts them
as the authors do) and neighbourhood preservation at k = 10. Sets: the 250 sample
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


def anchor_map(embeddings, seed):
    """openTSNE with metric="cosine" on all dimensions, otherwise its defaults (2 threads)."""
    from openTSNE import TSNE

    return np.asarray(TSNE(metric="cosine", n_jobs=2, random_state=seed, verbose=False).fit(embeddings))


def min_max_lap(points, rows, cols):
    """The 2017 recipe's assignment: each axis min-max scaled to the grid, exact LAP on squared distances."""
    from scipy.optimize import linear_sum_assignment

    points = (points - points.min(axis=0)) / np.ptp(points, axis=0) * [cols - 1, rows - 1]
    image, cell = linear_sum_assignment(assign.squared_distances(points, assign.cell_centres(rows, cols)))
    cells = np.empty(len(points), dtype=np.int64)
    cells[image] = cell
    return cells


def fit_lap(points, rows, cols):
    """The same map fitted as gridtsne fits it (one scale, assign.fit_to_grid), exact LAP."""
    from gridtsne.assign import _exact_lap

    return _exact_lap(assign.fit_to_grid(points, rows, cols), assign.cell_centres(rows, cols))


def suite_methods():
    """name -> (vectors, rows, cols, seed) -> cells, for the collection suite.

    The anchor's map is made once per seed and shared by its two fits; each
    fit's seconds include the map's."""
    import gridtsne

    maps = {}

    def anchor(fit):
        def lay_out(embeddings, rows, cols, seed):
            if maps.get("of") is not embeddings:  # a new collection
                maps.clear()
                maps["of"] = embeddings
            if seed not in maps:
                started = time.perf_counter()
                maps[seed] = anchor_map(embeddings, seed), time.perf_counter() - started
            points, map_seconds = maps[seed]
            return fit(points, rows, cols), map_seconds

        return lay_out

    return {
        "gridtsne": lambda e, r, c, seed: (gridtsne.layout(e, seed=seed)[0], 0.0),
        "openTSNE+LAP": anchor(min_max_lap),
        "openTSNE+LAP fit": anchor(fit_lap),
        "FLAS": lambda e, r, c, seed: (flas(e, r, c, seed + 1), 0.0),
    }


#: The anchors the goal of issue 13 is measured against (the "fit" row is for information).
ANCHORS = ("openTSNE+LAP", "FLAS")


def collection_embeddings(collection, workdirs):
    """The shipped model's embeddings of one folder of images, embedded once into ``workdirs``."""
    from gridtsne import embed
    from gridtsne.options import EmbedOptions
    from gridtsne.workdir import Workdir

    work = Workdir(workdirs / collection.name)
    embed.run(work, EmbedOptions(paths=[str(collection)]), skip_if_fresh=True)
    return np.load(work.path / "embeddings.npy")


#: The suite's two DPQ_16 columns: each ring of grid neighbours at its mean (gridtsne.quality's
#: "dpq"), and nearest first as the authors count them ("dpq_authors", issue 13's measure).
COUNTS = {"DPQ_16": "dpq", "DPQ_16 fav": "dpq_authors"}


def suite(collections, workdirs, seeds, only=None):
    """One table: per collection and method, both counts of DPQ_16 and NP@10, the median of the
    seeds, then each seed's, and the median seconds; last, gridtsne's margin over each anchor."""
    from pathlib import Path

    folders = sorted(p for p in Path(collections).iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [p for p in folders if not only or p.name in only]
    methods = suite_methods()
    header = f"{'collection':<11} {'N':>5} {'method':<17} "
    header += " ".join(f"{column:>10} {'(each seed)':<20}" for column in [*COUNTS, "NP@10"])
    print(header + f" {'seconds':>7}", flush=True)
    margins = []
    for folder in folders:
        embeddings = collection_embeddings(folder, Path(workdirs))
        vectors = normalise(embeddings.astype(np.float64))
        rows, cols = assign.grid_shape(len(embeddings))
        medians = {}
        for method, lay_out in methods.items():
            scores, seconds = {key: [] for key in [*COUNTS.values(), "neighbourhood_preservation"]}, []
            for seed in seeds:
                started = time.perf_counter()
                cells, extra = lay_out(embeddings, rows, cols, seed)
                seconds.append(time.perf_counter() - started + extra)
                measured = quality.layout_quality(vectors, cells, cols)
                for key, values in scores.items():
                    values.append(measured[key])
            medians[method] = {key: float(np.median(values)) for key, values in scores.items()}
            line = f"{folder.name:<11} {len(embeddings):>5} {method:<17} "
            line += " ".join(
                f"{np.median(values):10.3f} {' '.join(f'{v:.3f}' for v in values):<20}"
                for values in scores.values()
            )
            print(line + f" {np.median(seconds):7.1f}", flush=True)
        gains = [
            100 * (medians["gridtsne"][key] / medians[a][key] - 1) for key in COUNTS.values() for a in ANCHORS
        ]
        margins.append((folder.name, len(embeddings), gains))
    print("\ngridtsne's median DPQ_16 over each anchor's (goal: at least +1% on every collection)")
    names = [f"{a}{'' if key == 'dpq' else ' fav'}" for key in COUNTS.values() for a in ANCHORS]
    print(f"{'collection':<11} {'N':>5} " + " ".join(f"{n:>17}" for n in names))
    for name, size, values in margins:
        print(f"{name:<11} {size:>5} " + " ".join(f"{v:+16.1f}%" for v in values))


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
    parser.add_argument("--collections", help="a folder of image collections, one folder each: run the suite")
    parser.add_argument("--workdirs", default="collections.gridtsne",
                        help="where each collection is embedded once (one work directory each)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the suite")
    parser.add_argument("--only", nargs="*", help="only these collections of the suite")
    args = parser.parse_args()
    if args.collections:
        suite(args.collections, args.workdirs, args.seeds, args.only)
        return
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
