"""The web page's "more like this": time, memory and recall of the 12 most similar photos.

    python benchmarks/neighbours_scale.py [N ...]        (default: 1000 10000 100000)
    python benchmarks/neighbours_scale.py --embeddings WORK/embeddings.npy
    python benchmarks/neighbours_scale.py --repeat-to 100000 WORK1/embeddings.npy WORK2/...

For each N: the synthetic mixture (benchmarks/datasets.py, 1280-d), saved and
memory-mapped as render reads embeddings.npy; ``neighbours.most_similar`` on
it with 2 threads (the search the size chooses: exact on the full vectors, or
reduced by PCA and ranked again on them). Prints seconds, the process's peak
memory (the vectors are made in another process; the memory map's pages
count), which search ran, and the recall of the exact top 12 (numpy, float64
on the full vectors) over 500 photos drawn at random, and the share of the exact
top 12's summed similarity that the found 12 have ("sim kept": below 1 only
where a miss is less similar). With --embeddings: real vectors, searched both
ways. With --repeat-to N: the distinct real vectors of the files given,
repeated to N rows, searched as render would (repeats are exact ties: recall
is lower for them). Limit the cores with
``taskset -c 0,1`` (and OPENBLAS_NUM_THREADS=2) to measure "two cores".
"""

import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from datasets import mixture

from gridtsne import neighbours


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top k of each query row, in float64, a slice of the rows at a time."""
    norms = np.linalg.norm(np.asarray(vectors, np.float64), axis=1)
    query = vectors[queries].astype(np.float64) / norms[queries, None]
    similarity = np.empty((len(queries), len(vectors)))
    for start in range(0, len(vectors), 10_000):
        rows = np.asarray(vectors[start : start + 10_000], np.float64) / norms[start : start + 10_000, None]
        similarity[:, start : start + 10_000] = query @ rows.T
    similarity[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def save_mixture(path: Path, n: int) -> None:
    np.save(path, mixture(n))


def save_repeated(path: Path, files: list[str], n: int) -> None:
    """The distinct rows of the embeddings in ``files``, repeated in turn to ``n`` rows."""
    rows = np.unique(np.vstack([np.load(file) for file in files]).astype(np.float32), axis=0)
    np.save(path, np.resize(rows, (n, rows.shape[1])))


def measure(vectors: np.ndarray, label: str, exact: bool | None) -> dict:
    """Prints one row of the table and returns it (benchmarks/web_scale.py reuses it)."""
    n, dims = vectors.shape
    if exact is None:
        exact = dims <= neighbours.REDUCED_DIMS or n * n * dims <= neighbours.EXACT_BUDGET
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    index, similarity = neighbours.most_similar(vectors, jobs=2, exact=exact)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    peak = after.ru_maxrss / 1024
    queries = np.random.default_rng(1).choice(n, min(n, 500), replace=False)
    truth = exact_top(vectors, queries, neighbours.K)
    recall = np.mean(
        [len(set(index[q]) & set(t)) / neighbours.K for q, t in zip(queries, truth, strict=True)]
    )
    unit = np.asarray(vectors[queries], np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    best = np.array([np.sort(unit[i] @ _unit(vectors, t).T)[::-1] for i, t in enumerate(truth)])
    kept = similarity[queries].sum() / best.sum()  # of the exact top 12's summed similarity
    search = "exact" if exact else "reduced"
    print(f"{label:>12} {n:>7} {search:>8} {seconds:>8.1f} {cpu_seconds:>8.1f} {peak:>9.0f} "
          f"{recall:>10.4f} {kept:>9.4f}", flush=True)  # fmt: skip
    return {"n": n, "search": search, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "recall_at_12": float(recall), "similarity_kept": float(kept)}  # fmt: skip


def _unit(vectors: np.ndarray, rows) -> np.ndarray:
    chosen = np.asarray(vectors[np.sort(rows)], np.float64)[np.argsort(np.argsort(rows))]
    return chosen / np.linalg.norm(chosen, axis=1, keepdims=True)


def main():
    arguments = sys.argv[1:]
    print(f"{'vectors':>12} {'N':>7} {'search':>8} {'seconds':>8} {'CPU s':>8} {'peak MiB':>9} "
          f"{'recall@12':>10} {'sim kept':>9}", flush=True)  # fmt: skip
    if arguments[:1] == ["--embeddings"]:  # a real embeddings.npy: both searches on it
        vectors = np.load(arguments[1], mmap_mode="r")
        for exact in (True, False):
            measure(vectors, Path(arguments[1]).parent.name[:12], exact)
        return
    if arguments[:1] == ["--repeat-to"]:  # N rows: the distinct real vectors of FILES, repeated
        n, files = int(arguments[1]), arguments[2:]
        with tempfile.TemporaryDirectory() as tmp:
            with ProcessPoolExecutor(1) as maker:
                maker.submit(save_repeated, Path(tmp) / "embeddings.npy", files, n).result()
            measure(np.load(Path(tmp) / "embeddings.npy", mmap_mode="r"), "real, repeated", None)
        return
    for n in [int(a) for a in arguments] or [1000, 10_000, 100_000]:
        with tempfile.TemporaryDirectory() as tmp:
            # Made in another process, so that the peak memory below is the search's own.
            with ProcessPoolExecutor(1) as maker:
                maker.submit(save_mixture, Path(tmp) / "embeddings.npy", n).result()
            measure(np.load(Path(tmp) / "embeddings.npy", mmap_mode="r"), "mixture", None)


if __name__ == "__main__":
    main()
