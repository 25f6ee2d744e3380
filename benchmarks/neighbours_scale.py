"""The web page's "more like this": time, memory and recall of the 12 most similar photos.

    python benchmarks/neighbours_scale.py [N ...]        (default: 1000 10000 100000)

For each N: the synthetic mixture (benchmarks/datasets.py, 1280-d), saved and
memory-mapped as render reads embeddings.npy; ``neighbours.most_similar`` on
it with 2 threads (the search the size chooses: exact on the full vectors, or
reduced by PCA and ranked again on them). Prints seconds, the process's peak
memory, which search ran, and the recall of the exact top 12 (numpy, float64
on the full vectors) over 500 photos drawn at random. Limit the cores with
``taskset -c 0,1`` (and OPENBLAS_NUM_THREADS=2) to measure "two cores".
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import mixture

from gridtsne import neighbours


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = []
    for query in queries:
        similarity = unit.astype(np.float64) @ unit[query].astype(np.float64)
        similarity[query] = -np.inf
        found.append(np.argsort(-similarity, kind="stable")[:k])
    return np.array(found)


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10_000, 100_000]
    print(f"{'N':>7} {'search':>8} {'seconds':>8} {'peak MiB':>9} {'recall@12':>10}", flush=True)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "embeddings.npy", mixture(n))
            vectors = np.load(Path(tmp) / "embeddings.npy", mmap_mode="r")
            exact = (
                vectors.shape[1] <= neighbours.REDUCED_DIMS
                or n * n * vectors.shape[1] <= neighbours.EXACT_BUDGET
            )
            started = time.perf_counter()
            index, _ = neighbours.most_similar(vectors, jobs=2)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            queries = np.random.default_rng(1).choice(n, min(n, 500), replace=False)
            truth = exact_top(np.asarray(vectors), queries, neighbours.K)
            recall = np.mean(
                [len(set(index[q]) & set(t)) / neighbours.K for q, t in zip(queries, truth, strict=True)]
            )
            search = "exact" if exact else "reduced"
            print(f"{n:>7} {search:>8} {seconds:>8.1f} {peak:>9.0f} {recall:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
