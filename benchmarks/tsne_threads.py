"""t-SNE's threads, quiet and under load: openTSNE's OpenMP threads spinning or sleeping.

    python benchmarks/tsne_threads.py --vectors /work/combined10k/embeddings.npy \
        [--sizes 12 100 263 1024 4096] [--repeats 3] [--busy 0 1 2]

reduce's t-SNE (``gridtsne.reduce.tsne_map``, the stage's own settings) on the first N rows,
in file order, of a seeded random choice of as many rows as the largest N (so each smaller set
is part of the larger ones, and leans to the file's first rows), in a fresh child process for
each way of running it, so that the OpenMP runtime reads its environment anew:

- ``spin``: two threads, libgomp's default wait (a waiting thread spins before it sleeps);
- ``spin 30k``, ``spin 3k``: two threads that spin for fewer turns (``GOMP_SPINCOUNT``; libgomp's
  default is 300,000) before they sleep;
- ``sleep``: two threads, ``OMP_WAIT_POLICY=PASSIVE`` (a waiting thread sleeps at once);
- ``one``: one thread (a different map: openTSNE's sums are split between its threads).

``--busy K`` runs the table again with K other processes each keeping a core busy (a Python
loop), as another job on the same machine would: a Makefile's ``-j``, a second layout, a
browser. Each way's runs alternate with the others', and the table gives the median seconds
and each way's time over ``spin``'s. The two-thread ways' maps are the same (the
wait policy changes how threads wait, not what they compute), which is checked.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np

WAYS = {
    "spin": ({}, 2),
    "spin 30k": ({"GOMP_SPINCOUNT": "30000"}, 2),
    "spin 3k": ({"GOMP_SPINCOUNT": "3000"}, 2),
    "sleep": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "one": ({}, 1),
}

CHILD = """
import hashlib, json, sys, time
import numpy as np
from gridtsne import reduce
path, threads, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")]
reduce.tsne_jobs = lambda n_points: threads  # this way's count at every N
vectors = np.load(path, mmap_mode="r")
vectors = np.asarray(vectors[np.sort(np.random.default_rng(0).permutation(len(vectors))[: max(sizes)])])
reduce.tsne_map(vectors[:20], seed=0)  # imports and the OpenMP runtime's start, not timed
out = {}
for n in sizes:
    started = time.perf_counter()
    points, _ = reduce.tsne_map(vectors[:n], seed=0)
    out[n] = [time.perf_counter() - started, hashlib.sha1(points.tobytes()).hexdigest()]
print(json.dumps(out))
"""


def busy() -> None:
    while True:
        pass


def one_round(vectors: str, sizes: list[int]) -> dict:
    """Each way once, in turn: {way: {N: (seconds, map digest)}}."""
    result = {}
    for way, (environment, threads) in WAYS.items():
        done = subprocess.run(
            [sys.executable, "-c", CHILD, vectors, str(threads), ",".join(map(str, sizes))],
            env={**os.environ, **environment}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        result[way] = {int(n): v for n, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", required=True, help="N x D embeddings (.npy)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[12, 100, 263, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, nargs="*", default=[0, 1], help="other busy processes")
    args = parser.parse_args()
    for load in args.busy:
        others = [multiprocessing.Process(target=busy, daemon=True) for _ in range(load)]
        for other in others:
            other.start()
        time.sleep(0.5 if load else 0)
        try:
            rounds = [one_round(args.vectors, args.sizes) for _ in range(args.repeats)]
        finally:
            for other in others:
                other.kill()
        print(f"\n{load} other busy process(es); median seconds of {args.repeats} (time / spin's)")
        print(f"{'N':>6} " + " ".join(f"{way:>16}" for way in WAYS))
        for n in args.sizes:
            median = {way: float(np.median([r[way][n][0] for r in rounds])) for way in WAYS}
            cells = [f"{median[way]:7.3f} ({median[way] / median['spin']:5.2f})" for way in WAYS]
            print(f"{n:>6} " + " ".join(f"{c:>16}" for c in cells), flush=True)
            same = {r[way][n][1] for r in rounds for way in WAYS if WAYS[way][1] == 2}
            assert len(same) == 1, f"two threads made different maps at N={n}"


if __name__ == "__main__":
    main()
