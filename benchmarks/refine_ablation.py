"""What each part of gridtsne's refinement adds, on the layout_quality sets.

    python benchmarks/refine_ablation.py [--sizes 1024 4096] [--seeds 0 1 2]

From one t-SNE map and assignment per set (gridtsne's defaults), DPQ_16 of:

- the assignment alone (`assign --no-refine`);
- sorting only, started from the t-SNE grid with the first radius at 1/2,
  1/3 (the default) and 1/4 of the grid's longer side, each then followed
  by the swaps;
- the same sorting started from a random layout instead, to show what the
  t-SNE start is worth at each start;
- sorting (1/3) then swaps in 64 or all dimensions instead of the default 256.

Sorting is randomised (where the sets of cells fall), so every row is given
for each --seeds and as their mean, with the mean seconds of that step alone.
Scores as in layout_quality.py.
"""

import argparse
import time

import numpy as np
from datasets import mixture, sample_images

from gridtsne import assign, quality, reduce, refine
from gridtsne.vectors import normalise


def timed(step, *args, **kwargs):
    """A step's result and its wall time."""
    started = time.perf_counter()
    cells = step(*args, **kwargs)
    return cells, time.perf_counter() - started


def ablate(name, embeddings, seeds):
    vectors = normalise(embeddings.astype(np.float64)).astype(np.float32)
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

    row("assignment alone", [score(assigned)], 0.0)
    sorted_default = {}
    for start_name, start in (("t-SNE", assigned), ("random", random_start)):
        for share in (1 / 2, 1 / 3, 1 / 4):
            radii = refine.radius_schedule(rows, cols, share)
            sorted_scores, swapped_scores, sort_seconds, swap_seconds = [], [], [], []
            for seed in seeds:
                cells, seconds = timed(
                    refine.sort_layout, sort_space, start, rows, cols, radii=radii, seed=seed
                )
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
    # The default's 256 dimensions are the row above; here the swaps in fewer and in all.
    for space in (sort_space, vectors):
        scores, seconds = [], []
        for seed in seeds:
            cells, took = timed(refine.swap_layout, space, sorted_default[seed], rows, cols, seed=seed)
            scores.append(score(cells))
            seconds.append(took)
        row(f"sort (1/3) + swaps in {space.shape[1]} dims", scores, np.mean(seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    ablate("sample_images (250)", sample_images(), args.seeds)
    for n in args.sizes:
        ablate(f"mixture {n}", mixture(n), args.seeds)


if __name__ == "__main__":
    main()
