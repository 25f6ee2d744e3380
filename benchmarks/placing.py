"""How new photos are placed on a kept map: time, t-SNE's KL divergence and nearness to kin.

    python benchmarks/placing.py --vectors /work/combined10k/embeddings.npy [--seeds 0 1 2]
        [--starts 25:250 1:50 1:100 1:250] [--repeats 3]

For each seed, 90% of the rows are laid out afresh (``reduce.tsne_map``, as a first layout)
and the other 10% placed on that map by ``reduce.place_new_points``, once for each
``START:ITERATIONS``: openTSNE's ``transform`` starting each new photo at the median of its
START nearest staying photos (openTSNE's default is 25; 1 is where its nearest one is) and
optimising it for ITERATIONS. Reported, the median over the repeats and then over the seeds:

- seconds of ``place_new_points`` (the exact search, the affinities and ``transform``);
- KL: the new photos' KL divergence as openTSNE reports it at the end of ``transform``
  (the objective it lowers; lower is a better placing);
- kin: the median map distance from a new photo to its nearest staying photo in the
  embedding, over the median distance from a staying photo to its own (as
  ``stable_update.py``'s "map kin": 1 is as close as neighbours usually lie).

The grid does not depend on these settings: assign places new photos by their kin.
"""

import argparse
import statistics
import time

# isort: off
import gridtsne  # noqa: F401  (first, as the command line loads it: its OpenBLAS setting)

# isort: on
import numpy as np
import openTSNE

from gridtsne import reduce
from gridtsne.vectors import normalise


def placed(vectors: np.ndarray, kept_map: np.ndarray, kept: np.ndarray, seed: int) -> tuple:
    """(seconds, KL of the new photos, map) of one placing with reduce's current settings."""
    reported = {}
    transform = openTSNE.TSNEEmbedding.transform

    def recording(self, *args, **kwargs):
        result = transform(self, *args, **kwargs)
        reported["kl"] = float(result.kl_divergence)
        return result

    openTSNE.TSNEEmbedding.transform = recording
    try:
        started = time.perf_counter()
        points = reduce.place_new_points(vectors, kept_map, kept, seed=seed)
        seconds = time.perf_counter() - started
    finally:
        openTSNE.TSNEEmbedding.transform = transform
    return seconds, reported["kl"], points


def kin_nearness(unit: np.ndarray, points: np.ndarray, kept: np.ndarray) -> float:
    staying, new = np.flatnonzero(kept), np.flatnonzero(~kept)
    kin = staying[(unit[new] @ unit[staying].T).argmax(axis=1)]
    some = np.random.default_rng(0).choice(len(staying), min(1000, len(staying)), replace=False)
    similarity = unit[staying[some]] @ unit[staying].T
    similarity[np.arange(len(some)), some] = -np.inf
    nearest = staying[similarity.argmax(axis=1)]
    apart = np.median(np.linalg.norm(points[staying[some]] - points[nearest], axis=1))
    return float(np.median(np.linalg.norm(points[new] - points[kin], axis=1)) / apart)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", required=True, help="an N x D .npy of real embeddings")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--starts", nargs="*", default=["25:250", "1:50", "1:100", "1:250"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vectors = np.load(args.vectors)
    unit = normalise(vectors.astype(np.float32))
    settings = [tuple(int(part) for part in start.split(":")) for start in args.starts]
    figures = {setting: [] for setting in settings}
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(vectors))
        kept = np.zeros(len(vectors), dtype=bool)
        kept[order[: int(round(0.9 * len(vectors)))]] = True
        kept_map, _ = reduce.tsne_map(vectors[kept], seed=seed)
        for _ in range(args.repeats):  # the settings in turn, so that a busy machine slows each alike
            for setting in settings:
                reduce.PLACING_START_NEIGHBOURS, reduce.PLACING_ITERATIONS = setting
                seconds, kl, points = placed(vectors, kept_map, kept, seed)
                figures[setting].append((seed, seconds, kl, kin_nearness(unit, points, kept)))
    print(f"{'start:iterations':>16} {'seconds':>8} {'KL':>10} {'kin':>6}   (median over seeds {args.seeds})")
    for setting, runs in figures.items():
        by_seed = [[run for run in runs if run[0] == seed] for seed in args.seeds]
        columns = [
            statistics.median(statistics.median(run[column] for run in seed_runs) for seed_runs in by_seed)
            for column in (1, 2, 3)
        ]
        print(f"{setting[0]:>9}:{setting[1]:<6} {columns[0]:>8.3f} {columns[1]:>10.1f} {columns[2]:>6.2f}")


if __name__ == "__main__":
    main()
