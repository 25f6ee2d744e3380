"""What each part of gridtsne's refinement adds, on the real collections of layout_quality.py.

    python benchmarks/refine_ablation.py --collections /work/collections --workdirs /work/layout-work
                                         [--only emoji photos] [--seeds 0 1 2]

From the t-SNE map of each seed (`reduce.tsne_2d(vectors, seed=s)`, as
`gridtsne.layout` makes it; saved beside the embeddings as tsne-SEED.npy, so
that a rerun skips it) and its assignment, DPQ_16 (as its authors count ties,
the issue 13 measure), DPQ_16 with each ring of grid neighbours at its mean,
and NP@10 of:

- the assignment alone (`assign --no-refine`);
- swaps on the smooth part of the objective alone (every neighbour, the
  rings at RING_WEIGHTS), no nearest term: the swaps of 0.1;
- the default, swaps with the nearest term as well (`refine.refine_layout`);
- the default with one start on every grid (small grids get starts_for(N)).

Each row is the median over --seeds, with the median seconds of the refinement.
"""

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
from layout_quality import collection_embeddings

from gridtsne import assign, quality, reduce, refine
from gridtsne.vectors import normalise


@contextlib.contextmanager
def settings(**changed):
    """refine's module settings changed for the duration of one variant."""
    before = {name: getattr(refine, name) for name in changed}
    for name, value in changed.items():
        setattr(refine, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(refine, name, value)


VARIANTS = {
    "assignment alone": None,
    "swaps, smooth part only": {"NEAREST_WEIGHTS": (0.0, 0.0, 0.0, 0.0), "SMOOTH_SHARE": 1.0},
    "default (+ nearest term)": {},
    "default, one start": {"START_IMAGES": 1},
}


def tsne_map(workdir: Path, embeddings: np.ndarray, seed: int) -> np.ndarray:
    saved = workdir / f"tsne-{seed}.npy"
    if not saved.exists():
        np.save(saved, reduce.tsne_2d(embeddings, seed=seed)[0])
    return np.load(saved)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", required=True, help="a folder of image collections, one folder each")
    parser.add_argument("--workdirs", required=True, help="where each collection is embedded once")
    parser.add_argument("--only", nargs="*", help="only these collections")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    folders = sorted(p for p in Path(args.collections).iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [p for p in folders if not args.only or p.name in args.only]
    header = f"{'collection':<11} {'N':>5} {'variant':<29} {'DPQ_16':>6} {'rings@mean':>10} "
    print(header + f"{'NP@10':>6} {'seconds':>7}")
    for folder in folders:
        embeddings = collection_embeddings(folder, Path(args.workdirs))
        vectors = normalise(embeddings.astype(np.float64))
        rows, cols = assign.grid_shape(len(embeddings))
        maps = {seed: tsne_map(Path(args.workdirs) / folder.name, embeddings, seed) for seed in args.seeds}
        for name, changed in VARIANTS.items():
            scores = []
            for seed in args.seeds:
                cells = assign.assign_to_grid(maps[seed], rows, cols)[0]
                started = time.perf_counter()
                if changed is not None:
                    with settings(**changed):
                        cells = refine.refine_layout(vectors.astype(np.float32), cells, rows, cols)
                seconds = time.perf_counter() - started
                measured = quality.layout_quality(vectors, cells, cols)
                scores.append(
                    (
                        measured["dpq_authors"],
                        measured["dpq"],
                        measured["neighbourhood_preservation"],
                        seconds,
                    )
                )
            median = np.median(np.array(scores), axis=0)
            print(
                f"{folder.name:<11} {len(embeddings):>5} {name:<29} {median[0]:6.3f} {median[1]:10.3f} "
                f"{median[2]:6.3f} {median[3]:7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
