"""gridtsne's default layout with one setting changed, on real collections: DPQ_16 and NP@10.

    python benchmarks/layout_settings.py --workdirs /work/layout-work \
        --extra /work/combined10k/embeddings.npy [--only emoji textures] \
        [--subsets-of /work/combined10k/embeddings.npy] \
        [--perplexity 10] [--set reduce.MAIN_ITER=200 ...]

For choosing a default: each collection's embeddings by the shipped model (the
work directories that ``layout_quality.py --collections`` embeds into, one per
collection; ``--extra`` adds more .npy files, named by their folder;
``--subsets-of`` adds seeded random subsets of one, ``sub1024_0`` ... by default) are laid
out by ``gridtsne.layout`` at seeds 0, 1, 2 (``--seeds``), as the stages lay
them out, with ``--perplexity`` passed (where the set is large enough for it)
and each ``--set module.NAME=VALUE`` assigned to a gridtsne module's constant
first. Scored as ``layout_quality.py``'s suite scores (gridtsne.quality on the
unit-length embeddings): DPQ_16 as its authors count ties and NP@10, median of
the seeds and each seed's, and the seconds of each layout. Run it once as the
code is and once with the change, and compare the lines.
"""

import argparse
import importlib
import time
from pathlib import Path

# isort: off
# gridtsne first, as its command line loads it: its OpenBLAS setting must come before numpy.
import gridtsne

# isort: on
import numpy as np

from gridtsne import quality
from gridtsne.vectors import normalise


def apply_settings(assignments: list[str]) -> None:
    """Each ``module.NAME=VALUE``: assign a gridtsne module's constant, in its own type."""
    for assignment in assignments:
        target, value = assignment.split("=", 1)
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(f"gridtsne.{module_name}")
        setattr(module, name, type(getattr(module, name))(value))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", default="collections.gridtsne", help="one embedded work directory each")
    parser.add_argument("--extra", nargs="*", default=[], help="more embeddings .npy files")
    parser.add_argument("--only", nargs="*", help="only these sets (folder names)")
    parser.add_argument("--subsets-of", metavar="NPY", help="also seeded random subsets of these embeddings")
    parser.add_argument("--subset-size", type=int, default=1024)
    parser.add_argument("--subset-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="a subset each, named sub<size>_<seed> (seed 0: layout_scale.py's)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--perplexity", type=float, help="reduce's perplexity (default: gridtsne's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="MODULE.NAME=VALUE",
                        help="assign a gridtsne module's constant, e.g. reduce.MAIN_ITER=200")  # fmt: skip
    args = parser.parse_args()
    apply_settings(args.set)
    paths = sorted(Path(args.workdirs).glob("*/embeddings.npy")) + [Path(p) for p in args.extra]
    sets = [(path.parent.name, path, None) for path in paths]
    if args.subsets_of:
        sets += [(f"sub{args.subset_size}_{seed}", Path(args.subsets_of), seed) for seed in args.subset_seeds]
    seeds = f"{'(each seed)':<22}"
    print(f"{'set':<12} {'N':>6} {'DPQ_16 fav':>10} {seeds} {'NP@10':>6} {seeds} seconds")
    for name, path, subset_seed in sets:
        if args.only and name not in args.only:
            continue
        embeddings = np.load(path)
        if subset_seed is not None:  # as layout_scale.py picks its 1,024 (there with seed 0)
            rng = np.random.default_rng(subset_seed)
            embeddings = embeddings[np.sort(rng.choice(len(embeddings), args.subset_size, replace=False))]
        vectors = normalise(embeddings.astype(np.float32))
        perplexity = (
            args.perplexity if args.perplexity and 3 * args.perplexity < len(embeddings) - 1 else None
        )
        dpq, np10, seconds = [], [], []
        for seed in args.seeds:
            started = time.perf_counter()
            cells, _, cols = gridtsne.layout(embeddings, seed=seed, perplexity=perplexity)
            seconds.append(time.perf_counter() - started)
            scores = quality.layout_quality(vectors, cells, cols)
            dpq.append(scores["dpq_authors"])
            np10.append(scores["neighbourhood_preservation"])
        print(
            f"{name:<12} {len(embeddings):>6} {np.median(dpq):10.4f} {' '.join(f'{v:.4f}' for v in dpq):<22} "
            f"{np.median(np10):6.4f} {' '.join(f'{v:.4f}' for v in np10):<22} "
            + " ".join(f"{s:.1f}" for s in seconds),
            flush=True,
        )


if __name__ == "__main__":
    main()
