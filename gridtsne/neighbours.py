"""The most similar photos of each photo: cosine similarity of their embeddings.

The web page's "more like this" shows, for each photo, the ``k`` photos whose
embedding vectors are closest to its own by cosine similarity. They are
computed once, by render, for every photo:

- exactly, on the full vectors, while ``N * N * D`` stays small (a few
  thousand photos of the shipped model's 1,280 numbers);
- beyond that, in two steps: the vectors are projected onto their first
  ``REDUCED_DIMS`` principal axes (of the uncentred second moment, which keeps
  dot products best), the ``CANDIDATES`` most similar in that space are found
  exactly, and those are ranked again by their cosine on the full vectors. The
  similarities given are always the full vectors' own.

Either way the work goes in blocks of rows: one block's similarities to all
photos (at most ``BLOCK_BYTES``) are in memory at a time, so memory is flat in
N beyond the vectors themselves. The top of each row is found without sorting
it: the maxima of a few dozen slices of the row give a threshold that at least
``k`` values reach, and only the few values above it are sorted.

Ties are ordered by the lower index first, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: How many similar photos each photo gets.
K = 12
#: Changes when what ``most_similar`` finds changes (a cache of its results is then stale).
VERSION = 2
#: ``N * N * D`` up to which the search runs on the full vectors.
EXACT_BUDGET = 2e11
#: Dimensions of the reduced space, above that budget.
REDUCED_DIMS = 128
#: Candidates found in the reduced space, then ranked on the full vectors.
CANDIDATES = 48
#: Rows (at most) whose second moment gives the reduced space's axes.
MOMENT_ROWS = 20_000
#: The largest block of similarities held at once, per thread.
BLOCK_BYTES = 64 << 20


def _unit_rows(vectors: np.ndarray, start: int, stop: int, norms: np.ndarray) -> np.ndarray:
    rows = np.asarray(vectors[start:stop], dtype=np.float32)
    return rows / norms[start:stop, None]


def _norms(vectors: np.ndarray, block: int) -> np.ndarray:
    norms = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), block):
        rows = np.asarray(vectors[start : start + block], dtype=np.float32)
        norms[start : start + block] = np.linalg.norm(rows, axis=1)
    norms[norms == 0] = 1.0  # a zero vector is similar to nothing (0), not NaN
    return norms


def slice_length(n: int, m: int) -> int:
    """Columns per slice when the top ``m`` of rows of ``n`` are sought: at least 4m slices."""
    return int(np.clip(n // (4 * m), 1, 128))


def top_of_rows(
    similarity: np.ndarray, m: int, slice_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest values of each row and their columns, largest first (ties: lower column).

    Each row must hold at least ``m`` values above -inf. The row is cut into slices of
    ``slice_len`` columns; the m-th largest slice maximum is a value that at least m values
    reach, so only the slices whose maximum reaches it are looked into.
    """
    rows, n = similarity.shape
    slice_len = slice_len or slice_length(n, m)
    if n < 8 * m or slice_len < 4:
        order = np.lexsort((np.broadcast_to(np.arange(n), similarity.shape), -similarity), axis=1)[:, :m]
        return order.astype(np.int32), np.take_along_axis(similarity, order, axis=1)
    if n % slice_len:
        padding = np.full((rows, slice_len - n % slice_len), -np.inf, similarity.dtype)
        similarity = np.concatenate([similarity, padding], axis=1)
    slices = similarity.shape[1] // slice_len
    view = similarity.reshape(rows, slices, slice_len)
    maxima = view.max(axis=2)
    threshold = np.partition(maxima, slices - m, axis=1)[:, slices - m]
    row, piece = np.nonzero(maxima >= threshold[:, None])
    values = view[row, piece]
    at, offset = np.nonzero(values >= threshold[row][:, None])
    row, column, value = row[at], piece[at] * slice_len + offset, values[at, offset]
    order = np.lexsort((column, -value, row))
    row, column, value = row[order], column[order], value[order]
    first = np.searchsorted(row, np.arange(rows))
    take = first[:, None] + np.arange(m)[None, :]
    return column[take].astype(np.int32), value[take]


def most_similar(
    vectors: np.ndarray,
    k: int = K,
    *,
    jobs: int = 1,
    exact: bool | None = None,
    on_progress: Callable[[float], None] = lambda fraction: None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``vectors`` (N x D, e.g. a memory-mapped embeddings.npy), the ``k``
    other rows most similar by cosine, most similar first: (index int32 N x k, similarity
    float32 N x k). ``k`` is at most N - 1. ``exact``: force (True) or forbid (False) the
    search on the full vectors; None decides by size."""
    n, dims = vectors.shape
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32)
    if exact is None:
        exact = dims <= REDUCED_DIMS or float(n) * n * dims <= EXACT_BUDGET
    # A block's similarities to all rows, and (reduced) its candidates' full vectors, fit BLOCK_BYTES.
    per_row = 4 * max(n + 128, 0 if exact else CANDIDATES * dims)
    rows_per_block = int(max(8, min(4096, BLOCK_BYTES // per_row)))
    norms = _norms(vectors, rows_per_block)
    if exact:
        space, found = None, k
    else:
        space, found = _reduce(vectors, norms, rows_per_block), min(n - 1, max(k, CANDIDATES))
    # The searched space, whole: full unit vectors, or the reduced ones; zero rows pad it to
    # whole slices, so that a block's similarities cut into slices without a copy.
    slice_len = slice_length(n, found)
    searched = (
        np.concatenate(
            [_unit_rows(vectors, s, s + rows_per_block, norms) for s in range(0, n, rows_per_block)]
        )
        if space is None
        else space
    )
    padded = -(-n // slice_len) * slice_len
    if padded > n:
        searched = np.concatenate([searched, np.zeros((padded - n, searched.shape[1]), np.float32)])
    index = np.empty((n, k), np.int32)
    similarity = np.empty((n, k), np.float32)
    starts = list(range(0, n, rows_per_block))

    def block(start: int) -> None:
        stop = min(n, start + rows_per_block)
        block_sim = searched[start:stop] @ searched.T
        block_sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        block_sim[:, n:] = -np.inf  # the padding
        columns, values = top_of_rows(block_sim, found, slice_len)
        if space is not None:  # rank the candidates again on the full vectors
            query = _unit_rows(vectors, start, stop, norms)
            flat = columns.ravel()
            order = np.argsort(flat, kind="stable")  # gather from a memory map in file order
            gathered = np.empty((len(flat), dims), np.float32)
            gathered[order] = np.asarray(vectors[flat[order]], dtype=np.float32)
            gathered /= norms[flat][:, None]
            values = np.matmul(gathered.reshape(len(query), found, dims), query[:, :, None])[:, :, 0]
            rank = np.lexsort((columns, -values), axis=1)[:, :k]
            columns, values = np.take_along_axis(columns, rank, 1), np.take_along_axis(values, rank, 1)
        index[start:stop], similarity[start:stop] = columns[:, :k], values[:, :k]

    if jobs <= 1:
        for done, start in enumerate(starts, start=1):
            block(start)
            on_progress(done / len(starts))
        return index, similarity
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done, _ in enumerate(pool.map(block, starts), start=1):
            on_progress(done / len(starts))
    return index, similarity


def _reduce(vectors: np.ndarray, norms: np.ndarray, rows_per_block: int) -> np.ndarray:
    """The unit vectors projected on the first REDUCED_DIMS axes of their second moment."""
    n, dims = vectors.shape
    moment = np.zeros((dims, dims), np.float64)
    every = max(1, n // MOMENT_ROWS)  # the axes from evenly spaced rows: a sample does as well
    for start in range(0, n, rows_per_block * every):
        rows = _unit_rows(vectors, start, start + rows_per_block * every, norms)[::every]
        moment += (rows.T @ rows).astype(np.float64)
    # The leading axes by subspace iteration (a full eigh of a 1,280 x 1,280 matrix takes seconds).
    rank = min(dims, REDUCED_DIMS)
    subspace = np.random.default_rng(0).standard_normal((dims, min(dims, rank + 16)))
    for _ in range(4):
        subspace = _orthonormal(moment @ subspace)
    values, small = np.linalg.eigh(subspace.T @ moment @ subspace)
    basis = np.ascontiguousarray((subspace @ small[:, ::-1])[:, :rank], dtype=np.float32)
    return np.concatenate(
        [_unit_rows(vectors, s, s + rows_per_block, norms) @ basis for s in range(0, n, rows_per_block)]
    )


def _orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns' span (from their small Gram matrix: a QR of the tall
    matrix is level-2 work that multithreaded LAPACK does slowly on a busy machine)."""
    values, vectors = np.linalg.eigh(columns.T @ columns)
    keep = values > values.max() * 1e-12
    return columns @ (vectors[:, keep] / np.sqrt(values[keep]))
