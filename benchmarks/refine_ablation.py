"""What each part of gridtsne's refinement adds, on the layout_quality sets.

    python benchmarks/refine_ablation.py [--sizes 1024 4096] [--seeds 0 1 2]

From one t-SNE map and assignment per set (gridtsne's defaults), DPQ_16 of:

- the assignment alone (`assign --no-refine`);
- sorting only, started from the t-SNE grid with the first radius at 1/2,
  1/3 (the default) and 1/4 of the grid's longer side, each then followed
  by the swaps;
- the same sorting started from a random layout instead, to show what the
  t-SNE start is worth at each start;
- sorting then swaps (the default refinement), with the swaps in 64, 256
  (the default) or all dimensions.

Sorting is randomised (where the sets of cells fall), so every row is given
for each --seeds and as their mean, with the mean seconds of that step alone.
Scores as in layout_quality.py.
"""

import argparse
import time

import numpy as np
from datasets import mixture, sample_images

from gridtsne import assign, quality, reduce, refine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    sets = [("sample_images (250)", sample_images)]
    sets += [(f"mixture {n}", lambda n=n: mixture(n)) for n in args.sizes]
    for name, load in sets:
        embeddings = load()
        vectors = reduce.normalise(embeddings.astype(np.float64)).astype(np.float32)
        rows, cols = assign.grid_shape(len(embeddings))
        coords, _ = reduce.tsne_2d(embeddings)
        assigned, _, _ = assign.assign_to_grid(coords, rows, cols)
        # The assignment's cells in random order: the same empty cells, nothing else kept.
        random_start = np.random.default_rng(0).permutation(assigned)
        components = refine.projected(vectors, refine.SWAP_DIMS)
        sort_space = components[:, : refine.SORT_DIMS]

        def score(cells):
            return quality.layout_quality(vectors, cells, cols)["dpq"]

        def row(label, scores, seconds):
            each = " ".join(f"{value:.3f}" for value in scores)
            print(f"{name:<20} {label:<34} {np.mean(scores):.3f}   ({each})  {seconds:5.1f} s", flush=True)

        def timed(step, *args, **kwargs):
            started = time.perf_counter()
            cells = step(*args, **kwargs)
            return cells, time.perf_counter() - started

        row("assignment alone", [score(assigned)], 0.0)
        sorted_default = {}
        for start_name, start in (("t-SNE", assigned), ("random", random_start)):
            for share in (1 / 2, 1 / 3, 1 / 4):
                radii = refine.radius_schedule(rows, cols, share)
                sorted_scores, swapped_scores, sort_seconds, swap_seconds = [], [], [], []
                for seed in args.seeds:
                    cells, seconds = timed(refine.sort_layout, sort_space, start, rows, cols, radii=radii, seed=seed)
                    sorted_scores.append(score(cells))
                    sort_seconds.append(seconds)
                    if start_name == "t-SNE" and share == refine.START_SHARE:
                        sorted_default[seed] = cells
                    if start_name == "t-SNE":
                        cells, seconds = timed(refine.swap_layout, components, cells, rows, cols, seed=seed)
                        swapped_scores.append(score(cells))
                        swap_seconds.append(seconds)
                row(f"sort from {start_name}, start 1/{round(1 / share)}", sorted_scores, np.mean(sort_seconds))
                if swapped_scores:
                    row(f"  + swaps ({refine.SWAP_DIMS} dims)", swapped_scores, np.mean(swap_seconds))
        for dims in (refine.SORT_DIMS, refine.SWAP_DIMS, vectors.shape[1]):
            space = components[:, :dims] if dims <= components.shape[1] else vectors
            scores, seconds = [], []
            for seed in args.seeds:
                cells, took = timed(refine.swap_layout, space, sorted_default[seed], rows, cols, seed=seed)
                scores.append(score(cells))
                seconds.append(took)
            row(f"sort (1/3) + swaps in {space.shape[1]} dims", scores, np.mean(seconds))


if __name__ == "__main__":
    main()
