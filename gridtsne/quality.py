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
from threadpoolctl import threadpool_limits

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
#: most (their distances' order, the authors' order, the rings' keys, the expected order and
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


class _Plan:
    """What of the quality numbers does not depend on the grid: the queries, their blocks (each
    block's memory within _CHUNK_BYTES / QUALITY_THREADS) and each query's embedding side."""

    def __init__(self, points: np.ndarray, sample_size: int, seed: int, k: int):
        self.points, self.n_points = points, len(points)
        if self.n_points > sample_size:
            chosen = np.random.default_rng(seed).choice(self.n_points, sample_size, replace=False)
            self.queries = np.sort(chosen)
        else:
            self.queries = np.arange(self.n_points)
        self.k = min(k, self.n_points - 1)
        self.point_sq = np.einsum("nd,nd->n", points, points, dtype=np.float64)
        size = max(1, min(_BLOCK_QUERIES, _CHUNK_BYTES // (8 * self.n_points * QUALITY_THREADS)))
        self.rows_at_once = max(
            1, min(size, _CHUNK_BYTES // (8 * self.n_points * QUALITY_THREADS * _BLOCK_ARRAYS))
        )
        self.blocks = [self.queries[start : start + size] for start in range(0, len(self.queries), size)]

    def embedding_side(self, index: np.ndarray) -> tuple:
        """A block's distances to every point (one product for the whole block: a product of a
        few rows would stream all N vectors for each few) and, ``rows_at_once`` queries at a
        time, the rest of their embedding side (``side``), made as they are asked for."""
        distances = _distances(self.points[index], self.points, self.point_sq)
        starts = range(0, len(index), self.rows_at_once)
        return distances, (self.side(distances[start : start + self.rows_at_once]) for start in starts)

    def held_side(self, index: np.ndarray) -> tuple:
        """``embedding_side`` made whole, to be held until the grid is done (orders as int32)."""
        distances, sides = self.embedding_side(index)
        held = []
        for by_embedding, *rest in sides:
            held.append((by_embedding.astype(np.int32), *rest))
        return distances, held

    def side(self, embedding_distance: np.ndarray) -> tuple:
        """For these queries (rows): the points in embedding order, the distances in that order
        summed over the queries and all of them summed (the random pair's), and their k
        nearest in the embedding (those tied with the k-th sharing its place) with the weight
        each counts for in neighbourhood preservation."""
        n_points, k = self.n_points, self.k
        by_embedding = np.argsort(embedding_distance, axis=1)
        # Self (distance 0) comes first and is dropped.
        nearest = np.take_along_axis(embedding_distance, by_embedding[:, 1:], axis=1)
        sum_embedding = nearest.sum(axis=0)
        sum_random = nearest.sum() / (n_points - 1)
        del nearest
        closest = min(n_points, k + 1 + _TIE_MARGIN)
        own = by_embedding[:, 1:closest]
        own_distance = np.take_along_axis(embedding_distance, own, axis=1)
        kth = own_distance[:, k - 1 : k]
        tied = np.abs(own_distance - kth) <= 1e-9 * kth
        below = np.count_nonzero((own_distance < kth) & ~tied, axis=1)[:, None]
        share_of_tied = (k - below) / np.maximum(1, tied.sum(axis=1))[:, None]
        embedding_weight = np.where(tied, share_of_tied, np.where(own_distance < kth, 1.0, 0.0))
        return by_embedding, sum_embedding, sum_random, own.copy(), embedding_weight


#: Bytes of embedding sides that ``Ahead`` works out and holds before the grid is done, at most
#: (each query's distances to every image, float64, and their order, int32): 120 MB for 1,000
#: queries at 10,000 images, whose quality numbers then take 0.3 s instead of 0.6 s after the
#: grid. The blocks beyond are worked out at the end, as ``layout_quality`` does.
AHEAD_BYTES = 128 << 20


class Ahead:
    """The quality numbers of a layout that is still being made, their embedding side worked out
    while it is made.

    Each query's distances to every image and their order do not depend on the grid, and are
    about half of the numbers' work. From ``start()`` on, ``Ahead`` works them out on one
    thread, block by block, while the caller goes on making the grid (refinement's swaps keep
    to one core); ``layout_quality(cells, cols)`` then adds the grid's side and gives the
    numbers that ``layout_quality`` gives, bit for bit. BLAS keeps to one thread from
    ``start()`` on, as in ``layout_quality``: start it after any BLAS work whose numbers depend
    on BLAS's threads (a PCA's eigenvectors). A context manager: leaving it stops what has not
    begun and gives BLAS its threads back.
    """

    def __init__(
        self, embeddings: np.ndarray, *, k: int = NEIGHBOURS_K, sample_size: int = SAMPLE_SIZE,
        seed: int = SAMPLE_SEED,
    ):  # fmt: skip
        self.embeddings, self.k, self.sample_size, self.seed = embeddings, k, sample_size, seed
        self._plan, self._futures, self._pool, self._limits = None, [], None, None

    def start(self) -> None:
        """Begin the embedding side, up to ``AHEAD_BYTES`` of it, on one thread (once)."""
        points = _points(self.embeddings)
        if self._pool is not None or len(points) < 3:
            return
        self._plan = plan = _Plan(points, self.sample_size, self.seed, self.k)
        self._limits = threadpool_limits(1, user_api="blas")
        self._pool = ThreadPoolExecutor(1)
        held = 0
        for index in plan.blocks:
            held += len(index) * plan.n_points * 12
            if held > AHEAD_BYTES:
                break
            self._futures.append(self._pool.submit(plan.held_side, index))

    def layout_quality(self, cell_of_image: np.ndarray, cols: int, *, p: int = DPQ_P, ties: str = "expected"):
        """``layout_quality`` of the embeddings laid out as ``cell_of_image``."""
        if self._plan is None:  # never started: nothing is ahead
            return layout_quality(
                self.embeddings, cell_of_image, cols, p=p, k=self.k, sample_size=self.sample_size,
                seed=self.seed, ties=ties,
            )  # fmt: skip
        if ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
        try:
            # A block not begun yet is scored whole at the end; the others wait for their side.
            ahead = [None if future.cancel() else future for future in self._futures]
            ahead += [None] * (len(self._plan.blocks) - len(ahead))
            return _scored(self._plan, cell_of_image, cols, p, ties, ahead)
        finally:
            self.close()

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a block under way finishes first
        if self._limits is not None:
            self._limits.restore_original_limits()
        self._plan, self._futures, self._pool, self._limits = None, [], None, None

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    points = _points(embeddings)
    if len(points) < 3:
        return _trivial(len(points), p, k)
    return _scored(_Plan(points, sample_size, seed, k), cell_of_image, cols, p, ties)


def _points(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as the quality numbers take them: float32 vectors stay float32 (a float64
    copy is 10 GB at a million 1,280-d vectors); the dot products are then float32 and the rest
    float64 (``_distances``)."""
    points = np.asarray(embeddings)
    return points if points.dtype in (np.float32, np.float64) else points.astype(np.float64)


def _trivial(n_points: int, p: int, k: int) -> dict:
    """The numbers of fewer than three images: any layout keeps what there is to keep."""
    return {
        "dpq": 1.0,
        "dpq_authors": 1.0,
        "dpq_p": p,
        "neighbourhood_preservation": 1.0,
        "k": k,
        "queries": n_points,
        "sampled": False,
    }


def _scored(plan: _Plan, cell_of_image: np.ndarray, cols: int, p: int, ties: str, ahead=None) -> dict:
    """``layout_quality`` of ``plan``'s points laid out as ``cell_of_image``; ``ahead``: a future
    per block of queries whose embedding side was started ahead (None: worked out here)."""
    n_points = plan.n_points
    queries = plan.queries
    k = plan.k
    grid_cells = grid_positions(cell_of_image, cols).astype(np.int64)
    ring_rank = _ring_ranks(grid_cells)
    n_rings = int(ring_rank.max()) + 1
    ranks = np.arange(1, n_points)

    def block(work: tuple) -> tuple:
        """Each order's distances summed over a block of queries (D_k is then the running sum at
        k over k: a sum of running sums is the running sum of the sums, taken once at the end),
        the random-pair distance's sum and the shared neighbours', from the block's embedding
        side, worked out here or ahead (``Ahead``); the rest is done ``plan.rows_at_once``
        queries at a time, a query per row."""
        index, ahead = work
        distances, sides = plan.embedding_side(index) if ahead is None else ahead.result()
        at_once = plan.rows_at_once
        parts = (
            score(index[start : start + at_once], distances[start : start + at_once], side)
            for start, side in zip(range(0, len(index), at_once), sides, strict=True)
        )
        return _summed(parts)

    def score(index: np.ndarray, embedding_distance: np.ndarray, side: tuple) -> tuple:
        """``block``'s sums for these queries, given their distances to every point and the
        rest of their embedding side (``_Plan.embedding_side``)."""
        by_embedding, sum_embedding, sum_random, own, embedding_weight = side
        queries_here = np.arange(len(index))[:, None]
        # Squared grid distances, exact in integers, and their rings (0 only for the query).
        grid_distance = (grid_cells[index, None, 0] - grid_cells[None, :, 0]) ** 2
        grid_distance += (grid_cells[index, None, 1] - grid_cells[None, :, 1]) ** 2
        ring = ring_rank[grid_distance]
        del grid_distance
        # The authors' order: by ring, nearest in the embedding first within one (a stable
        # sort of the rings in embedding order; a radix sort when they fit 16 bits).
        within = np.argsort(np.take_along_axis(ring, by_embedding, axis=1), axis=1, kind="stable")
        authors_order = np.take_along_axis(by_embedding, within, axis=1)[:, 1:]  # the query first
        del within
        sum_authors = np.take_along_axis(embedding_distance, authors_order, axis=1).sum(axis=0)
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
        # Neighbourhood preservation: the embedding's k nearest (``embedding_weight``), each
        # counted up to its weight among the k nearest on the grid.
        if ties == "expected":
            own_ring = np.take_along_axis(ring, own, axis=1).astype(np.int64)
            grid_weight = np.where(
                own_ring < ring_of_kth, 1.0, np.where(own_ring == ring_of_kth, kth_share, 0.0)
            )
            grid_weight[own_ring == 0] = 0.0  # the query itself, where a twin came first
        else:
            within_k = np.zeros(embedding_distance.shape, dtype=bool)
            np.put_along_axis(within_k, authors_order[:, :k], True, axis=1)
            grid_weight = np.take_along_axis(within_k, own, axis=1).astype(np.float64)
        shared_neighbours = float(np.minimum(embedding_weight, grid_weight).sum())
        return sum_embedding, sum_grid, sum_authors, sum_random, shared_neighbours

    # Blocks of queries on QUALITY_THREADS threads (numpy's sorts and products let go of the
    # GIL), each block's memory within _CHUNK_BYTES / threads. BLAS keeps to one thread in
    # each: its own threads on top oversubscribed two cores (0.79 s against 0.60 s at 10,000
    # photos, the same numbers). The sums are added in block order as the blocks come back,
    # so the numbers do not depend on which thread finished first, and only a few blocks'
    # sums (3 x N each) are held at once, whatever N.
    work = zip(plan.blocks, ahead if ahead is not None else [None] * len(plan.blocks), strict=True)
    with ThreadPoolExecutor(QUALITY_THREADS) as pool, threadpool_limits(1, user_api="blas"):
        totals = _summed(pool.map(block, work))
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
