"""Operations on embedding vectors that more than one stage needs: normalising and PCA."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def normalise(embeddings: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """Each row scaled to unit length (zero rows left as they are), so that euclidean
    distances between rows order pairs as cosine similarity does. With ``copy=False`` a
    float array is scaled in place, which saves a copy of N x D at 100,000 photos.

    Done ``NORMALISE_CHUNK_ROWS`` rows at a time: no temporary of N x D beside the result
    (``np.linalg.norm`` of the whole array squares it first), and the same numbers."""
    floating = np.issubdtype(embeddings.dtype, np.floating)
    result = (
        embeddings
        if floating and not copy
        else np.empty(embeddings.shape, embeddings.dtype if floating else np.float64)
    )
    for start in range(0, len(embeddings), NORMALISE_CHUNK_ROWS):
        chunk = embeddings[start : start + NORMALISE_CHUNK_ROWS]
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        norms = np.where(norms > 0, norms, 1.0).astype(result.dtype)
        np.divide(chunk, norms, out=result[start : start + NORMALISE_CHUNK_ROWS])
    return result


#: Rows scaled at a time by ``normalise``: its temporary (rows x D) then stays small enough
#: for the allocator to reuse instead of mapping it anew (8,192 rows cost an update's
#: placing 0.07-0.12 s of page faults at 10,000 photos; docs/benchmarks.md).
NORMALISE_CHUNK_ROWS = 1024


#: BLAS threads of the products and eigendecompositions whose results make a layout (PCA,
#: the nearest-row search), fixed rather than taken from the machine's cores as OpenBLAS
#: takes them: its results depend on the count (a Gram matrix's products and LAPACK's
#: eigenvectors differed in their last bits between 1, 2 and 4 threads, and so did the t-SNE
#: maps and grids made from them). 2 is what this machine's two cores gave all along.
LAYOUT_BLAS_THREADS = 2


def fixed_blas_threads():
    """A context in which the BLAS libraries loaded (numpy's, scipy's) use
    ``LAYOUT_BLAS_THREADS``: the same vectors give the same layout on any number of cores."""
    return blas_threads(LAYOUT_BLAS_THREADS)


def blas_threads(threads: int):
    """A context in which numpy's and scipy's BLAS use ``threads`` threads."""
    return _blas_libraries().limit(limits=threads, user_api="blas")


@functools.cache
def _blas_libraries():
    """threadpoolctl's view of the BLAS libraries, found once: finding them reads every loaded
    library's path and took 4 ms, each of the half dozen times a small layout limits threads.
    scipy is imported first, so that its OpenBLAS is among them beside numpy's."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


#: Rows centred at a time by ``pca``: its memory beyond x is this many rows, not N.
PCA_CHUNK_ROWS = 8192


def pca(x: np.ndarray, dims: int, *, unit_rows: bool = False, with_basis: bool = False):
    """The first ``dims`` principal components of x (N x D), signs fixed for determinism;
    with ``unit_rows``, of x's rows scaled to unit length (``normalise``), done chunk by chunk.
    ``with_basis``: also the (mean, directions) that ``project`` takes to put other rows on
    the same components (None through the Gram matrix, which has no D x dims directions, and
    with ``unit_rows``, which ``project`` does not scale).

    Through the D x D covariance when N > D, accumulated over chunks of rows
    (float64 with ``unit_rows``), so memory beyond x stays D x D plus N x dims at any
    N: x may be float32 or a memory map, never copied whole; through the N x N
    Gram matrix when N <= D, where that is the smaller problem. Only the
    ``dims`` largest eigenpairs are computed.
    """
    with fixed_blas_threads():
        return _pca(x, dims, unit_rows=unit_rows, with_basis=with_basis)


def _pca(x: np.ndarray, dims: int, *, unit_rows: bool, with_basis: bool):
    """``pca``, its BLAS threads fixed."""
    from scipy.linalg import eigh

    gram = len(x) <= x.shape[1]
    if gram:  # in the type the covariance's chunks take (``_chunks``): float32 stays float32
        x = np.array(x, dtype=np.float64 if unit_rows else np.result_type(x.dtype, np.float32))
        if unit_rows:
            x = normalise(x, copy=False)
        centred = x - x.mean(axis=0)
        matrix = centred @ centred.T
    else:
        mean = sum(chunk.sum(axis=0) for chunk in _chunks(x, None, unit_rows)) / len(x)
        matrix = sum(chunk.T @ chunk for chunk in _chunks(x, mean, unit_rows))
    keep = min(dims, len(matrix))
    variances, vectors = eigh(matrix, subset_by_index=[len(matrix) - keep, len(matrix) - 1])
    variances, vectors = variances[::-1], vectors[:, ::-1]
    if gram:
        projected = vectors * np.sqrt(np.maximum(variances, 0.0))
    else:  # filled chunk by chunk: no list of chunks beside the result
        projected = np.empty((len(x), keep), dtype=np.result_type(matrix.dtype, vectors.dtype))
        for start, chunk in zip(range(0, len(x), PCA_CHUNK_ROWS), _chunks(x, mean, unit_rows), strict=True):
            projected[start : start + len(chunk)] = chunk @ vectors
    largest = projected[np.abs(projected).argmax(axis=0), np.arange(projected.shape[1])]
    projected[:, largest < 0] *= -1  # in place: a float32 result stays float32, and one copy
    if projected.shape[1] < dims:
        projected = np.hstack([projected, np.zeros((len(x), dims - projected.shape[1]))])
    if not with_basis:
        return projected
    if gram or unit_rows:
        return projected, None
    directions = np.array(vectors)
    directions[:, largest < 0] *= -1  # a sign flip is exact: project gives the same numbers
    return projected, (mean, directions)


def project(x: np.ndarray, basis: tuple[np.ndarray, np.ndarray], dims: int) -> np.ndarray:
    """x's rows on the components of ``pca(..., with_basis=True)``, chunk by chunk, padded
    with zeros to ``dims`` as ``pca`` pads."""
    mean, directions = basis
    result = np.zeros((len(x), dims), dtype=np.result_type(mean.dtype, directions.dtype))
    with fixed_blas_threads():
        for start, chunk in zip(range(0, len(x), PCA_CHUNK_ROWS), _chunks(x, mean, False), strict=True):
            result[start : start + len(chunk), : directions.shape[1]] = chunk @ directions
    return result


def _chunks(x: np.ndarray, mean: np.ndarray | None, unit_rows: bool):
    """x's rows, ``PCA_CHUNK_ROWS`` at a time (as float64 with ``unit_rows``, else in x's float
    type): scaled to unit length with ``unit_rows``, then less ``mean`` unless it is None."""
    dtype = np.float64 if unit_rows else np.result_type(x.dtype, np.float32)
    for start in range(0, len(x), PCA_CHUNK_ROWS):
        chunk = np.array(x[start : start + PCA_CHUNK_ROWS], dtype=dtype)
        if unit_rows:
            chunk = normalise(chunk, copy=False)
        if mean is not None:
            chunk -= mean
        yield chunk


#: Bytes of similarities ``nearest_unit_rows`` holds at once: its memory stays flat in N.
SEARCH_CHUNK_BYTES = 64 << 20


def nearest_unit_rows(
    queries: np.ndarray, rows: np.ndarray, k: int = 1, among: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each unit-length query, its ``k`` most similar unit ``rows`` (cosine), nearest first,
    and their euclidean distances: an exact search, as many queries at a time as keep the
    similarities within ``SEARCH_CHUNK_BYTES``; for k > 1 on ``SEARCH_THREADS`` threads with
    one BLAS thread each (the selection of the k nearest is single-threaded numpy; each
    chunk's rows of the result are its own, so the result does not depend on the threads). ``among``
    (a bool per row): only those rows are found, without a copy of them."""
    k = min(k, len(rows) if among is None else int(np.count_nonzero(among)))
    # For k = 1 the product is all the work: BLAS's own threads, one chunk at a time.
    threads = 1 if k == 1 else SEARCH_THREADS
    chunk = max(1, min(256, SEARCH_CHUNK_BYTES // (8 * threads * max(1, len(rows)))))
    found = np.empty((len(queries), k), dtype=np.int64)
    distance = np.empty((len(queries), k), dtype=np.float64)

    def search(start: int) -> None:
        similarity = queries[start : start + chunk] @ rows.T
        if among is not None:
            similarity[:, ~among] = -np.inf
        if k == 1:
            best = similarity.argmax(axis=1)[:, None]
        elif k < similarity.shape[1]:
            best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        else:
            best = np.broadcast_to(np.arange(len(rows)), similarity.shape)
        best_similarity = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-best_similarity, axis=1, kind="stable")
        found[start : start + chunk] = np.take_along_axis(best, order, axis=1)
        nearest = np.take_along_axis(best_similarity, order, axis=1).astype(np.float64)
        distance[start : start + chunk] = np.sqrt(np.maximum(2.0 - 2.0 * nearest, 0.0))

    starts = range(0, len(queries), chunk)
    if threads == 1:
        with fixed_blas_threads():
            for start in starts:
                search(start)
    else:
        with ThreadPoolExecutor(threads) as pool, blas_threads(1):
            list(pool.map(search, starts))
    return found, distance


#: Threads of ``nearest_unit_rows`` (two cores here).
SEARCH_THREADS = 2


def row_keys(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each row's bytes (as float32): what makes a photo "the same
    photo" across runs for a stable map. A photo whose vector changed is a new photo.

    Rows are hashed where they lie (no copy of each), in ``SEARCH_THREADS`` contiguous parts
    on as many threads: hashlib lets go of the GIL for inputs this long."""
    import hashlib

    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    keys = np.empty(len(rows), dtype=np.uint64)

    def fingerprint(part: range) -> None:
        for row in part:
            keys[row] = int.from_bytes(hashlib.blake2b(rows[row], digest_size=8).digest(), "little")

    in_parts(fingerprint, len(rows), SEARCH_THREADS)
    return keys


def in_parts(work, count: int, threads: int) -> None:
    """``work(part)`` for each of ``threads`` contiguous parts of ``range(count)``, on as many
    threads: for loops over items whose own work lets go of the GIL (a hash, a C search),
    where a task an item would cost more to dispatch than to do."""
    bounds = np.linspace(0, count, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]))


def match_rows(old_keys: np.ndarray, new_keys: np.ndarray) -> np.ndarray:
    """For each new row, the old row with the same key (-1: a new photo), one to one.

    Rows with equal keys (identical photos) are paired in order, so two copies
    of a photo keep two places.
    """
    old_keys, new_keys = np.asarray(old_keys, dtype=np.uint64), np.asarray(new_keys, dtype=np.uint64)
    old_order = np.argsort(old_keys, kind="stable")
    new_order = np.argsort(new_keys, kind="stable")
    old_sorted, new_sorted = old_keys[old_order], new_keys[new_order]
    # Rank of each new row among the new rows of its key (0: the first copy, 1: the second, ...).
    new_rank = np.arange(len(new_sorted)) - np.searchsorted(new_sorted, new_sorted, side="left")
    start = np.searchsorted(old_sorted, new_sorted, side="left")
    count = np.searchsorted(old_sorted, new_sorted, side="right") - start
    found = new_rank < count
    matched = np.full(len(new_keys), -1, dtype=np.int64)
    matched[new_order[found]] = old_order[start[found] + new_rank[found]]
    return matched
