"""Layout quality: how well a grid layout keeps the neighbourhoods of the embedding.

Two numbers, both 1 for a perfect layout:

- **DPQ_p**, Distance Preservation Quality (Barthel, Hezel, Jung and Schall,
  Computer Graphics Forum 2023). For every k = 1..N-1, ``D_k(grid)`` is the
  mean embedding distance from an image to its k nearest neighbours *on the
  grid*, ``D_k(embedding)`` the same for its k nearest neighbours *in the
  embedding* (the best any layout could do) and ``D_rnd`` the mean distance
  between two images (what a random layout gives). The gains over random,
  ``max(0, (D_rnd - D_k) / D_rnd)``, form one vector per layout; DPQ_p is the
  ratio of their p-norms, grid over embedding. p = 16 weighs the nearest
  neighbours most. A random layout scores about 0.
- **Neighbourhood preservation at k**: the share of each image's k nearest
  neighbours in the embedding that are among its k nearest grid neighbours
  (images tied at the k-th place on either side count as shares of it).

Grid distance is euclidean in cells (square tiles). Grid neighbours at the
same distance (the four cells around a cell, the next four, ...) have no order
of their own, so by default each such ring counts with its *expected* value
over all its orders: the k-th place holds the ring's mean distance, and an
image in the ring that straddles the k-th place counts as a share. Then a
random layout scores about 0, and a layout that reproduces a grid-shaped
embedding exactly scores 1 on both. The authors' reference code instead puts
the nearest in the embedding first within a ring (``ties="favourable"``), which
lifts a random layout well above 0 (0.36 on 180 Gaussian points); published
figures are counted so. Whatever ``ties`` says, ``dpq_authors`` is DPQ_p
counted that way, from the same pass over the distances.

For large N the averages over images are taken over a random sample of
``SAMPLE_SIZE`` query images (seeded, so the numbers are reproducible); each
sampled image is still compared with every other image, so D_rnd and every
D_k are unbiased estimates and the cost is O(sample x N), seconds at 100,000.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gridtsne.memory import release_freed_memory
from gridtsne.vectors import blas_threads

TIES = ("expected", "favourable")
DPQ_P = 16
NEIGHBOURS_K = 10
#: Query images sampled when N is larger; below it every image is a query.
SAMPLE_SIZE = 1000
SAMPLE_SEED = 0
#: Embedding neighbours looked at beyond the k-th, for ties at the k-th place.
_TIE_MARGIN = 16
#: Distance rows computed at once, over all threads: bounds the working memory to ~64 MB.
_CHUNK_BYTES = 64 << 20
#: Arrays of queries x N (8-byte) that scoring a few of a block's queries holds at once at
#: most (their sorted distances, the authors' keys, the rings' keys, the expected order and
#: temporaries): that many queries are scored at a time, within _CHUNK_BYTES over all threads,
#: beside the block's distances (one such array).
_BLOCK_ARRAYS = 8
#: Queries in one block at most: blocks small enough to share between the threads.
_BLOCK_QUERIES = 128
#: Threads that score blocks of queries at once (two cores here, as t-SNE's TSNE_JOBS).
QUALITY_THREADS = 2


def grid_positions(cell_of_image: np.ndarray, cols: int) -> np.ndarray:
    """N x 2 (row, col) of each image's cell, as float64."""
    row, col = np.divmod(np.asarray(cell_of_image, dtype=np.int64), cols)
    return np.stack([row, col], axis=1).astype(np.float64)


def _distances(queries: np.ndarray, points: np.ndarray, point_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances from each query to each point, as float64 (the dot products in the
    points' own precision)."""
    query_sq = np.einsum("nd,nd->n", queries, queries, dtype=np.float64)[:, None]
    squared = query_sq - 2.0 * (queries @ points.T).astype(np.float64) + point_sq[None, :]
    return np.sqrt(np.maximum(squared, 0.0))


def _ring_ranks(cells: np.ndarray) -> np.ndarray:
    """Rank of every squared grid distance that occurs on the grid (0 for 0, 1 for 1, 2 for 2,
    3 for 4, ...), by squared distance: the rings in order, in the smallest integer type."""
    extent = cells.max(axis=0).astype(np.int64) + 1
    d_row, d_col = np.meshgrid(np.arange(extent[0]), np.arange(extent[1]), indexing="ij")
    occurring = np.unique(d_row**2 + d_col**2)
    dtype = np.uint16 if len(occurring) <= 1 << 16 else np.int64
    ranks = np.zeros(int(occurring[-1]) + 1, dtype=dtype)
    ranks[occurring] = np.arange(len(occurring))
    return ranks


def _summed(parts) -> tuple:
    """Tuples of sums added element by element, in their order, as they come (one held)."""
    totals = None
    for part in parts:
        totals = part if totals is None else tuple(a + b for a, b in zip(totals, part, strict=True))
    return totals


def _gain(mean_distance_by_k: np.ndarray, random_distance: float) -> np.ndarray:
    return np.clip((random_distance - mean_distance_by_k) / random_distance, 0.0, None)


def layout_quality(
    embeddings: np.ndarray,
    cell_of_image: np.ndarray,
    cols: int,
    *,
    p: int = DPQ_P,
    k: int = NEIGHBOURS_K,
    sample_size: int = SAMPLE_SIZE,
    seed: int = SAMPLE_SEED,
    ties: str = "expected",
) -> dict:
    """DPQ_p and neighbourhood preservation at k of a layout, with how they were sampled.

    ``embeddings`` is N x D (the space whose distances the layout should
    keep); ``cell_of_image`` the row-major cell of each image on a grid with
    ``cols`` columns. ``ties``: how grid neighbours at the same distance are
    ordered for ``dpq`` and neighbourhood preservation, "expected" (the average
    over their orders) or "favourable" (nearest in the embedding first, as the
    authors' code does); ``dpq_authors`` is always the latter.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    # float32 vectors stay float32 (a float64 copy is 10 GB at a million 1,280-d vectors); the
    # dot products are then float32 and the rest float64 (``_distances``).
    points = np.asarray(embeddings)
    if points.dtype not in (np.float32, np.float64):
        points = points.astype(np.float64)
    n_points = len(points)
    if n_points < 3:
        return {
            "dpq": 1.0,
            "dpq_authors": 1.0,
            "dpq_p": p,
            "neighbourhood_preservation": 1.0,
            "k": k,
            "queries": n_points,
            "sampled": False,
        }
    # The blocks' arrays come from the scoring threads' own arenas, not from what the layout
    # before freed: handed back first, it is not held beside them (an update's peak).
    release_freed_memory()
    cells = grid_positions(cell_of_image, cols)
    if n_points > sample_size:
        queries = np.sort(np.random.default_rng(seed).choice(n_points, sample_size, replace=False))
    else:
        queries = np.arange(n_points)
    k = min(k, n_points - 1)
    point_sq = np.einsum("nd,nd->n", points, points, dtype=np.float64)
    grid_cells = cells.astype(np.int64)
    ring_rank = _ring_ranks(grid_cells)
    n_rings = int(ring_rank.max()) + 1
    ranks = np.arange(1, n_points)

    def block(index: np.ndarray) -> tuple:
        """Each order's distances summed over these queries (D_k is then the running sum at k
        over k: a sum of running sums is the running sum of the sums, taken once at the end),
        the random-pair distance's sum and the shared neighbours'. The distances come from one
        product for the whole block (a product of a few rows would stream all N vectors for
        each few); the rest is done ``rows_at_once`` queries at a time, a query per row."""
        distances = _distances(points[index], points, point_sq)
        parts = (
            score(index[start : start + rows_at_once], distances[start : start + rows_at_once])
            for start in range(0, len(index), rows_at_once)
        )
        return _summed(parts)

    def score(index: np.ndarray, embedding_distance: np.ndarray) -> tuple:
        """``block``'s sums for these queries, whose distances to every point are given (and
        are overwritten). The orders' sums need only each order's distances, not which point
        holds each place, so they come from sorting distances, not from ranking points."""
        queries_here = np.arange(len(index))[:, None]
        # Squared grid distances, exact in integers, and their rings (0 only for the query).
        grid_distance = (grid_cells[index, None, 0] - grid_cells[None, :, 0]) ** 2
        grid_distance += (grid_cells[index, None, 1] - grid_cells[None, :, 1]) ** 2
        ring = ring_rank[grid_distance]
        del grid_distance
        # The query itself comes first in every order and is dropped: below every distance,
        # it cannot trade places with an exact twin (whose distance to it is its own).
        embedding_distance[queries_here[:, 0], index] = -1.0
        nearest = np.sort(embedding_distance, axis=1)[:, 1:]
        sum_embedding = nearest.sum(axis=0)
        sum_random = nearest.sum() / (n_points - 1)
        del nearest
        # The authors' order: by ring, nearest in the embedding first within one. Each distance
        # goes up by its ring times a power of two that is at least twice every distance, so
        # one sort of these keys orders by ring, then distance, and taking the ring's multiple
        # off again (exactly: a power of two) gives the distance back, rounded to the key's
        # precision (2^-52 of the largest key: about 1e-12 for unit vectors).
        spacing = 2.0 ** (np.floor(np.log2(max(float(embedding_distance.max()), 1e-300))) + 2)
        key = ring * spacing
        key += embedding_distance
        if ties == "favourable":  # which points the authors' order puts among the k nearest
            within_k = np.zeros(embedding_distance.shape, dtype=bool)
            np.put_along_axis(within_k, np.argpartition(key, k, axis=1)[:, : k + 1], True, axis=1)
        key.sort(axis=1)
        key = key[:, 1:]  # the query
        multiple = np.floor(key * (1.0 / spacing))
        multiple *= spacing
        key -= multiple
        sum_authors = key.sum(axis=0)
        del key, multiple
        # Each ring's count and summed embedding distance, per query (the query's own left out).
        flat = (ring + queries_here * n_rings).ravel()
        counts = np.bincount(flat, minlength=len(index) * n_rings).reshape(len(index), n_rings)
        counts[:, 0] = 0
        ends = np.cumsum(counts, axis=1)
        # The ring that holds the k-th place, and the share of it that counts as within k.
        ring_of_kth = np.count_nonzero(ends < k, axis=1)[:, None]
        held = np.take_along_axis(counts, ring_of_kth, axis=1)
        kth_share = (k - (np.take_along_axis(ends, ring_of_kth, axis=1) - held)) / held
        if ties == "expected":
            sums = np.bincount(flat, weights=embedding_distance.ravel(), minlength=len(index) * n_rings)
            sums = sums.reshape(len(index), n_rings)
            present = counts > 0
            # Every ring at its mean, rings in order: the expected grid order of each query.
            along_grid = np.repeat(sums[present] / counts[present], counts[present])
            sum_grid = along_grid.reshape(len(index), n_points - 1).sum(axis=0)
            del along_grid, sums
        else:
            sum_grid = np.zeros(n_points - 1)
        del flat
        # Neighbourhood preservation: the embedding's k nearest (those tied with the k-th
        # sharing its place), each counted up to its weight among the k nearest on the grid.
        # The query and its nearest ``closest - 1``, nearest first: a partition, then a sort.
        closest = min(n_points, k + 1 + _TIE_MARGIN)
        own = np.argpartition(embedding_distance, closest - 1, axis=1)[:, :closest]
        by_distance = np.argsort(np.take_along_axis(embedding_distance, own, axis=1), axis=1, kind="stable")
        own = np.take_along_axis(own, by_distance, axis=1)[:, 1:]  # the query first
        own_distance = np.take_along_axis(embedding_distance, own, axis=1)
        kth = own_distance[:, k - 1 : k]
        tied = np.abs(own_distance - kth) <= 1e-9 * kth
        below = np.count_nonzero((own_distance < kth) & ~tied, axis=1)[:, None]
        share_of_tied = (k - below) / np.maximum(1, tied.sum(axis=1))[:, None]
        embedding_weight = np.where(tied, share_of_tied, np.where(own_distance < kth, 1.0, 0.0))
        if ties == "expected":
            own_ring = np.take_along_axis(ring, own, axis=1).astype(np.int64)
            grid_weight = np.where(
                own_ring < ring_of_kth, 1.0, np.where(own_ring == ring_of_kth, kth_share, 0.0)
            )
        else:
            grid_weight = np.take_along_axis(within_k, own, axis=1).astype(np.float64)
        shared_neighbours = float(np.minimum(embedding_weight, grid_weight).sum())
        return sum_embedding, sum_grid, sum_authors, sum_random, shared_neighbours

    # Blocks of queries on QUALITY_THREADS threads (numpy's sorts and products let go of the
    # GIL), each block's memory within _CHUNK_BYTES / threads. BLAS keeps to one thread in
    # each: its own threads on top oversubscribed two cores (0.79 s against 0.60 s at 10,000
    # photos, the same numbers). The sums are added in block order as the blocks come back,
    # so the numbers do not depend on which thread finished first, and only a few blocks'
    # sums (3 x N each) are held at once, whatever N.
    size = max(1, min(_BLOCK_QUERIES, _CHUNK_BYTES // (8 * n_points * QUALITY_THREADS)))
    rows_at_once = max(1, min(size, _CHUNK_BYTES // (8 * n_points * QUALITY_THREADS * _BLOCK_ARRAYS)))
    blocks = [queries[start : start + size] for start in range(0, len(queries), size)]
    with ThreadPoolExecutor(QUALITY_THREADS) as pool, blas_threads(1):
        totals = _summed(pool.map(block, blocks))
    sum_embedding, sum_grid, sum_authors, sum_random, shared_neighbours = totals
    random_distance = sum_random / len(queries)
    sum_by_k_embedding, sum_by_k_grid, sum_by_k_authors = (
        np.cumsum(total) / ranks for total in (sum_embedding, sum_grid, sum_authors)
    )
    if ties == "favourable":
        sum_by_k_grid = sum_by_k_authors
    if random_distance <= 0:  # every image identical: any layout is perfect
        dpq = dpq_authors = 1.0
    else:
        best = np.linalg.norm(_gain(sum_by_k_embedding / len(queries), random_distance), ord=p)

        def relative(sum_by_k: np.ndarray) -> float:
            ours = np.linalg.norm(_gain(sum_by_k / len(queries), random_distance), ord=p)
            return float(ours / best) if best > 0 else 1.0

        dpq, dpq_authors = relative(sum_by_k_grid), relative(sum_by_k_authors)
    return {
        "dpq": dpq,
        "dpq_authors": dpq_authors,
        "dpq_p": p,
        "neighbourhood_preservation": float(shared_neighbours / (k * len(queries))),
        "k": k,
        "queries": len(queries),
        "sampled": len(queries) < n_points,
    }
