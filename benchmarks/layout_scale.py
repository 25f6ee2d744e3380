"""Wall time and peak memory of reduce + assign at 1,024 / 10,000 / 100,000 images.

    python benchmarks/layout_scale.py --real /work/combined10k/embeddings.npy
        /work/layout-work/*/embeddings.npy [--sizes 1024 10000 100000] [--repeats 3]
        [--methods gridtsne opentsne flas] [--compare-with DIR]      (one command line)
        [--set MODULE.NAME=VALUE ...] [--before-set MODULE.NAME=VALUE ...]
    python benchmarks/layout_scale.py --real ... --sizes 100000 300000 --stages
    python benchmarks/layout_scale.py [--sizes 1024 10000 100000] [--methods gridtsne recipe flas]

Each run is a fresh Python process that loads N x 1280 embeddings from a
``.npy`` file and lays them out; it reports the seconds of the layout (the
file load and the library imports excluded) and its peak resident memory
(getrusage ru_maxrss, which includes the loaded embeddings and the imported
libraries), read before the layout is scored. The repeats are interleaved
(method A, B, C, then A, B, C again), so that a machine shared with other
work slows every method alike, and every row carries its ratio to gridtsne's.

**Vectors.** With ``--real``, the vectors are real embeddings by the shipped
model: a size up to the first file's rows is a seeded random subset of that
file (the whole file when the size equals its rows); a larger size starts
from the distinct rows of all the files given and adds *derived* rows, each
an interpolation ``a + u (b - a)`` between a real vector ``a`` (taken in
turn) and one of its 10 nearest real neighbours ``b`` (seeded; u uniform in
[0, 0.5]), as SMOTE makes samples: they lie among real vectors, but they are
synthetic-from-real and the table says so ("derived"). Without ``--real``,
the synthetic mixture of benchmarks/datasets.py.

Methods, on the same vectors and the same near-square grid:

- gridtsne: reduce (PCA-50, openTSNE, 2 threads) + assign (auto solver,
  refinement, quality numbers), as `gridtsne reduce` and `gridtsne assign` do;
- opentsne: plain openTSNE (metric="cosine" on all dimensions, otherwise its
  defaults, n_jobs=2) + gridtsne's assignment without refinement (one scale
  on both axes, exact up to 2,048 cells, blocks above);
- flas: FLAS (vc-flas, seed 1) on the normalised vectors, sorting the grid directly;
- before: with ``--compare-with DIR``, gridtsne as above but imported from DIR,
  another checkout (``git archive <commit> gridtsne | tar -x -C DIR``), so
  that two versions are timed in one run, interleaved; with ``--before-set``
  and ``--compare-with .``, today's code with constants changed (``--set``
  changes gridtsne's, as benchmarks/layout_settings.py does);
- recipe (synthetic mode only): scikit-learn TSNE defaults + per-axis
  min-max + exact LAP, the 2017 notebook's method; its N x N cost matrix
  rules out 100,000.

Every layout is scored by gridtsne.quality on the L2-normalised vectors:
DPQ_16 as its authors count ties (nearest first within a ring) and NP@10.
With ``--stages``, gridtsne alone, ``--repeats`` fresh runs per size, with the median
seconds and the peak memory after each step of reduce and assign (where the time goes,
and for projecting to larger N).
"""

# ruff: noqa: E402 (the imports follow a look at the environment, which must come first)
import os

# Whether the user set OpenBLAS's idle-thread timeout before gridtsne's import below sets it:
# a child that runs the code of --compare-with inherits only the user's value.
OPENBLAS_TIMEOUT_SET = "OPENBLAS_THREAD_TIMEOUT" in os.environ

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# isort: off
# gridtsne first, as its command line loads it: its OpenBLAS setting must come before numpy.
import gridtsne  # noqa: F401

# isort: on
import numpy as np

HERE = Path(__file__).resolve().parent
#: Neighbours among which a derived row is interpolated, and how far towards one it goes.
DERIVE_NEIGHBOURS = 10
DERIVE_MAX_STEP = 0.5


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_opentsne(embeddings, rows, cols):
    """openTSNE's defaults with the cosine metric on all dimensions, then gridtsne's assignment
    (one scale on both axes; exact up to 2,048 cells, blocks above), without refinement."""
    from openTSNE import TSNE

    from gridtsne import assign, reduce

    points = np.asarray(TSNE(metric="cosine", n_jobs=2, random_state=0, verbose=False).fit(embeddings))
    cells, _, solver = assign.assign_to_grid(reduce.to_unit_square(points), rows, cols)
    return cells, {"solver": solver}


def child(path: str, method: str) -> None:
    sys.path.insert(0, str(HERE))
    # Libraries are imported before the clock starts, for every method alike: with
    # scikit-learn installed (the bench extra), importing openTSNE alone takes a second.
    import openTSNE  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.manifold  # noqa: F401
    from layout_quality import flas, original_recipe
    from layout_settings import apply_settings

    from gridtsne import assign, quality, reduce
    from gridtsne.vectors import normalise

    apply_settings(json.loads(os.environ.get(SETTINGS_VARIABLE, "[]")))
    embeddings = np.load(path)
    rows, cols = assign.grid_shape(len(embeddings))
    started = time.perf_counter()
    if method == "gridtsne":
        coords, _ = reduce.tsne_2d(embeddings)
        cells, results = assign.layout(coords, embeddings, rows, cols)
        extra = {"solver": results["solver"]}
    elif method == "opentsne":
        cells, extra = plain_opentsne(embeddings, rows, cols)
    else:
        cells = {"recipe": original_recipe, "flas": flas}[method](embeddings, rows, cols)
        extra = {}
    seconds = time.perf_counter() - started
    peak = peak_mib()
    scores = quality.layout_quality(normalise(embeddings.astype(np.float64)), cells, cols)
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "dpq_authors": scores["dpq_authors"],
                      "np10": scores["neighbourhood_preservation"], **extra}))  # fmt: skip


def stages_child(path: str) -> None:
    """gridtsne's reduce and assign step by step, as tsne_map and layout run them."""
    from openTSNE import TSNE

    from gridtsne import assign, quality, reduce, refine
    from gridtsne.vectors import normalise

    embeddings = np.load(path)
    n_points = len(embeddings)
    rows, cols = assign.grid_shape(n_points)
    steps, clock = [], time.perf_counter()

    def step(name):
        nonlocal clock
        now = time.perf_counter()
        steps.append({"step": name, "seconds": now - clock, "peak_mib": peak_mib()})
        clock = time.perf_counter()

    step("load")
    settings = reduce.tsne_settings(n_points)
    perplexity = settings.pop("perplexity")
    pca_dims = settings.pop("pca_dims")
    early, main = settings.pop("early_exaggeration_iter"), settings.pop("n_iter")
    x = reduce._prepared(embeddings, pca_dims)
    step("normalise + PCA")
    tsne = TSNE(n_components=2, perplexity=perplexity, random_state=0, verbose=False, **settings)
    embedding = tsne.prepare_initial(x)
    step("kNN + affinities + init")
    # As TSNE.fit runs them (the optimiser's other parameters come from prepare_initial).
    embedding.optimize(
        early, exaggeration=tsne.early_exaggeration, momentum=tsne.initial_momentum, inplace=True
    )
    step(f"t-SNE early exaggeration ({early} iterations)")
    embedding.optimize(main, exaggeration=tsne.exaggeration, momentum=tsne.final_momentum, inplace=True)
    step(f"t-SNE main phase ({main} iterations)")
    coords = reduce.to_unit_square(np.asarray(embedding))
    cells, _, solver = assign.assign_to_grid(coords, rows, cols)
    step(f"assignment ({solver})")
    vectors = normalise(np.asarray(embeddings, dtype=np.float32), copy=False)  # as the assign stage does
    # As refine_layout runs them (every photo placed, so no subset is projected).
    components, _ = refine.projected(vectors, refine.SWAP_DIMS)
    step(f"refinement: PCA-{components.shape[1]}")
    components, all_pairs = refine.swap_inputs(components)
    if all_pairs is not None:
        step("refinement: every pair's distance")
    starts = refine.starts_for(n_points)
    cells = refine.best_of_starts(components, cells, rows, cols, starts, all_pairs=all_pairs)
    step(f"refinement: swaps ({starts} start{'s' if starts > 1 else ''})")
    quality.layout_quality(vectors, cells, cols)
    step("quality numbers")
    print(json.dumps(steps))


def derived_vectors(pool: np.ndarray, n_points: int, seed: int = 0) -> np.ndarray:
    """``pool`` and, after it, ``n_points - len(pool)`` rows interpolated between a pool row
    (each in turn) and one of its DERIVE_NEIGHBOURS nearest pool rows (cosine), seeded."""
    rng = np.random.default_rng(seed)
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    neighbours = np.empty((len(pool), DERIVE_NEIGHBOURS), dtype=np.int64)
    for start in range(0, len(pool), 2048):
        similarity = unit[start : start + 2048] @ unit.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        neighbours[start : start + 2048] = np.argpartition(-similarity, DERIVE_NEIGHBOURS, axis=1)[
            :, :DERIVE_NEIGHBOURS
        ]
    extra = n_points - len(pool)
    first = np.arange(extra) % len(pool)
    second = neighbours[first, rng.integers(0, DERIVE_NEIGHBOURS, extra)]
    step = rng.uniform(0, DERIVE_MAX_STEP, (extra, 1)).astype(np.float32)
    return np.vstack([pool, pool[first] + step * (pool[second] - pool[first])]).astype(np.float32)


def real_vectors(paths: list[str], n_points: int) -> tuple[np.ndarray, str]:
    """N real vectors (see the module docstring) and how they were made."""
    first = np.load(paths[0])
    if n_points <= len(first):
        if n_points == len(first):
            return first, f"real: {Path(paths[0]).parent.name}"
        rows = np.sort(np.random.default_rng(0).choice(len(first), n_points, replace=False))
        return first[rows], f"real: {n_points} of {Path(paths[0]).parent.name} (seed 0)"
    pool = np.unique(np.vstack([np.load(p).astype(np.float32) for p in paths]), axis=0)
    return derived_vectors(pool, n_points), f"derived: {len(pool)} real + {n_points - len(pool)} interpolated"


def prepare(n_points: int, path: str, real: list[str]) -> None:
    """Write the N vectors to ``path`` and print how they were made."""
    if real:
        vectors, source = real_vectors(real, n_points)
    else:
        sys.path.insert(0, str(HERE))
        from datasets import mixture

        vectors, source = mixture(n_points), "synthetic mixture"
    np.save(path, vectors)
    print(json.dumps({"source": source}))


#: The ``--set`` or ``--before-set`` assignments a child applies, as a JSON list.
SETTINGS_VARIABLE = "GRIDTSNE_BENCH_SETTINGS"


def run_child(*arguments, pythonpath: str | None = None, settings: list[str] = ()) -> dict:
    env = dict(os.environ)
    env[SETTINGS_VARIABLE] = json.dumps(list(settings))
    if not OPENBLAS_TIMEOUT_SET:  # each child's gridtsne decides, as on its command line
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, env=env)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_stages(n: int, source: str, runs: list) -> None:
    """The median seconds of each step over the runs (a fresh process each), each run's,
    and the peak memory after it."""
    failed = [r for r in runs if not isinstance(r, list)]
    if failed:
        print(f"N = {n:,}: {failed[0].get('error', failed[0])}", flush=True)
        return
    print(f"N = {n:,} ({source}), gridtsne step by step, median of {len(runs)} runs:", flush=True)
    for index, first in enumerate(runs[0]):
        seconds = [run[index]["seconds"] for run in runs]
        peak = max(run[index]["peak_mib"] for run in runs)
        each = " ".join(f"{value:.3f}" for value in seconds)
        median = statistics.median(seconds)
        print(f"  {first['step']:<45} {median:8.3f} s {peak:8.0f} MiB peak so far  ({each})")
    totals = [sum(step["seconds"] for step in run[1:]) for run in runs]  # all but the load, as child times
    print(f"  {'reduce + assign (the steps above)':<45} {statistics.median(totals):8.3f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--real", nargs="+", metavar="NPY", help="real embeddings (see the docstring)")
    parser.add_argument("--stages", action="store_true", help="gridtsne's steps one by one, --repeats runs")
    parser.add_argument("--compare-with", metavar="DIR", help="add 'before': gridtsne imported from DIR")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="MODULE.NAME=VALUE", help="gridtsne's constants"
    )
    parser.add_argument("--before-set", nargs="*", default=[], metavar="MODULE.NAME=VALUE", help="before's")
    parser.add_argument("--child", nargs=2, metavar=("NPY", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--stages-child", metavar="NPY", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.stages_child:
        return stages_child(args.stages_child)
    if args.prepare:
        return prepare(int(args.prepare[0]), args.prepare[1], args.prepare[2:])
    methods = args.methods or (
        ["gridtsne", "opentsne", "flas"] if args.real else ["gridtsne", "recipe", "flas"]
    )
    if args.compare_with and "before" not in methods:
        methods.append("before")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "embeddings.npy"
            # Made in a child of its own: a child's ru_maxrss starts from its parent's peak
            # (Linux carries it over exec), so this process must stay small.
            source = run_child("--prepare", str(n), str(path), *(args.real or []))["source"]
            if args.stages:
                print_stages(n, source, [run_child("--stages-child", str(path)) for _ in range(args.repeats)])
                continue
            print(f"\nN = {n:,} ({source}); median of the runs, ratios to gridtsne's", flush=True)
            print(f"{'method':<9} {'runs':>4} {'seconds':>8} {'peak MiB':>9} {'x time':>7} {'x memory':>8} "
                  f"{'DPQ_16 fav':>10} {'NP@10':>6}  each run's seconds", flush=True)  # fmt: skip
            runs = {m: [] for m in methods}
            for repeat in range(args.repeats):
                for method in methods:
                    if method == "recipe" and (n > 20_000 or (n > 5000 and repeat)):
                        continue  # its exact assignment takes minutes at 10,000: one run there
                    if method == "opentsne" and n > 20_000 and repeat:
                        continue  # tens of minutes at 100,000: one run there
                    if method == "before":
                        runs[method].append(
                            run_child(
                                "--child",
                                str(path),
                                "gridtsne",
                                pythonpath=args.compare_with,
                                settings=args.before_set,
                            )  # fmt: skip
                        )
                    else:
                        runs[method].append(run_child("--child", str(path), method, settings=args.set))
            base = None
            for method in methods:
                done = [r for r in runs[method] if "seconds" in r]
                if not done:
                    why = runs[method][0]["error"] if runs[method] else "not run at this size"
                    print(f"{method:<9}    -  ({why})", flush=True)
                    continue
                seconds = statistics.median(r["seconds"] for r in done)
                peak = statistics.median(r["peak_mib"] for r in done)
                base = base or (seconds, peak)
                each = " ".join(f"{r['seconds']:.2f}" for r in done)
                solver = f" ({done[0]['solver']})" if "solver" in done[0] else ""
                print(
                    f"{method:<9} {len(done):>4} {seconds:8.2f} {peak:9.0f} {seconds / base[0]:7.2f} "
                    f"{peak / base[1]:8.2f} {statistics.median(r['dpq_authors'] for r in done):10.3f} "
                    f"{statistics.median(r['np10'] for r in done):6.3f}  {each}{solver}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
