"""Wall time and peak memory of reduce + assign at 1,024 / 10,000 / 100,000 images.

    python benchmarks/layout_scale.py [--sizes 1024 10000 100000] [--repeats 3]
                                      [--methods gridtsne recipe flas]

Each run is a fresh Python process that loads the N x 1280 synthetic
embeddings (benchmarks/datasets.py, saved once as .npy) and lays them out;
it reports the seconds of the layout (the file load excluded) and its own
peak resident memory (getrusage ru_maxrss, which includes the loaded
embeddings and the imported libraries). Methods, on the same vectors:

- gridtsne: reduce (PCA-50, openTSNE, 2 threads) + assign (auto solver,
  refinement, quality numbers), as `gridtsne reduce` and `gridtsne assign` do;
- recipe: scikit-learn TSNE defaults + per-axis min-max + exact LAP (scipy),
  the 2017 notebook's method; its N x N cost matrix rules out 100,000;
- flas: FLAS (vc-flas) on the normalised vectors, sorting the grid directly.

Prints the median of --repeats runs per method and size (one run of the
recipe above 5,000, where its exact assignment alone takes minutes), and each
alternative's time and memory as a ratio of gridtsne's.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(path: str, method: str) -> None:
    sys.path.insert(0, str(HERE))
    # Libraries are imported before the clock starts, for every method alike: with
    # scikit-learn installed (the bench extra), importing openTSNE alone takes a second.
    import openTSNE  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.manifold  # noqa: F401
    from layout_quality import flas, original_recipe

    from gridtsne import assign, reduce

    embeddings = np.load(path)
    rows, cols = assign.grid_shape(len(embeddings))
    started = time.perf_counter()
    if method == "gridtsne":
        coords, _ = reduce.tsne_2d(embeddings)
        _, results = assign.layout(coords, embeddings, rows, cols)
        extra = {"solver": results["solver"], "dpq": results["quality"]["dpq"]}
    else:
        {"recipe": original_recipe, "flas": flas}[method](embeddings, rows, cols)
        extra = {}
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, **extra}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=["gridtsne", "recipe", "flas"])
    parser.add_argument("--child", nargs=2, metavar=("NPY", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from datasets import mixture

    print(
        f"{'N':>7} {'method':<9} {'runs':>4} {'seconds':>8} {'peak MiB':>9} {'x time':>7} {'x memory':>8}",
        flush=True,
    )
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "embeddings.npy"
            np.save(path, mixture(n))
            base = None
            for method in args.methods:
                if method == "recipe" and n > 20_000:
                    print(
                        f"{n:>7} {method:<9}    -  (N x N cost matrix: {n * n * 8 / 2**30:.0f} GiB)",
                        flush=True,
                    )
                    continue
                runs = []
                # The recipe's exact assignment alone takes minutes at 10,000: one run there.
                for _ in range(1 if method == "recipe" and n > 5000 else args.repeats):
                    result = subprocess.run(
                        [sys.executable, __file__, "--child", str(path), method],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
                seconds = statistics.median(r["seconds"] for r in runs)
                peak = statistics.median(r["peak_mib"] for r in runs)
                base = base or (seconds, peak)
                note = ""
                if "solver" in runs[0]:
                    note = f"  solver {runs[0]['solver']}, DPQ_16 {runs[0]['dpq']:.3f}"
                print(
                    f"{n:>7} {method:<9} {len(runs):>4} {seconds:8.1f} {peak:9.0f} "
                    f"{seconds / base[0]:7.2f} {peak / base[1]:8.2f}{note}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
