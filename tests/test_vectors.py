"""vectors: normalising and PCA, shared by reduce, assign and refine."""

import numpy as np

from gridtsne.vectors import normalise, pca


def test_pca_is_deterministic_and_keeps_the_dimensions_asked_for():
    x = np.random.default_rng(8).normal(size=(300, 64))
    assert np.array_equal(pca(x, 10), pca(x.copy(), 10))
    assert pca(x, 10).shape == (300, 10)


def test_a_layout_is_the_same_whatever_the_machine_s_cores():
    """OpenBLAS takes its thread count from the cores, and its products and LAPACK's
    eigenvectors gave other last bits for other counts: the same photos and seed made another
    PCA, t-SNE map and grid on a machine with 1 or 4 cores than on 2. The count is fixed now.
    scikit-learn's exact neighbour search takes its OpenMP threads from the cores too: its
    queries are split between them, and give the same neighbours."""
    import scipy.linalg  # noqa: F401 (loads scipy's OpenBLAS, so that the limit reaches it)
    from threadpoolctl import ThreadpoolController

    from gridtsne import assign, reduce

    rng = np.random.default_rng(10)
    x = (rng.normal(size=(8, 1280))[rng.integers(0, 8, 300)] + 0.5 * rng.normal(size=(300, 1280))).astype(
        np.float32
    )
    results = []
    for cores in (1, 2, 4):
        with ThreadpoolController().limit(limits=cores):  # BLAS and OpenMP
            coords, _ = reduce.tsne_2d(x)
            cells, _ = assign.layout(coords, x, 18, 18)
            results.append((pca(x, 50, unit_rows=True), pca(x, 256), coords, cells))
    for result in results[1:]:
        for ours, first in zip(result, results[0], strict=True):
            assert np.array_equal(ours, first)


def test_pca_of_fewer_points_than_dimensions_matches_the_covariance_route():
    x = np.random.default_rng(9).normal(size=(40, 100))
    through_gram = pca(x, 5)  # N <= D: the N x N Gram matrix
    centred = x - x.mean(axis=0)
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ rows[:5].T
    expected *= np.sign(expected[np.abs(expected).argmax(axis=0), np.arange(5)])
    assert np.allclose(through_gram, expected, atol=1e-8)


def test_pca_of_unit_rows_chunk_by_chunk_matches_an_svd_of_them_all(monkeypatch):
    """reduce's PCA at N > D: float32 rows scaled and multiplied a chunk at a time, never
    copied whole, give the components of an SVD of all the scaled rows at once."""
    from gridtsne import vectors as vectors_module

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3000, 64)) * 0.9 ** np.arange(64)).astype(np.float32)
    monkeypatch.setattr(vectors_module, "PCA_CHUNK_ROWS", 256)  # twelve chunks
    ours = pca(x, 8, unit_rows=True)
    rows = normalise(x.astype(np.float64))
    centred = rows - rows.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ directions[:8].T
    expected *= np.sign(expected[np.abs(expected).argmax(axis=0), np.arange(8)])
    assert ours.dtype == np.float64
    assert np.allclose(ours, expected, atol=1e-8)


def test_normalise_gives_unit_rows_and_leaves_zero_rows_alone():
    rows = normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.tolist() == [[0.6, 0.8], [0.0, 0.0]]


def test_normalising_needs_no_temporary_copy_of_the_vectors():
    """At a million 1,280-d photos a temporary of N x D is 4.9 GB: scaling in place allocates
    next to nothing, a copy allocates the copy alone, and both give the same numbers."""
    import tracemalloc

    vectors = np.random.default_rng(0).normal(size=(80_000, 64)).astype(np.float32)  # 20 MB
    size = vectors.nbytes
    tracemalloc.start()
    try:
        copied = normalise(vectors)
        _, copy_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        in_place = normalise(vectors.copy(), copy=False)
        in_place_peak = tracemalloc.get_traced_memory()[1] - before - size  # less the .copy() itself
    finally:
        tracemalloc.stop()
    assert copy_peak < 1.3 * size, copy_peak / size
    assert in_place_peak < 0.3 * size, in_place_peak / size
    assert np.array_equal(copied, in_place)
    assert np.allclose(np.linalg.norm(copied, axis=1), 1.0, atol=1e-6)


def test_the_exact_search_finds_the_most_similar_rows_among_those_allowed(monkeypatch):
    """New photos are placed by their most similar staying photos: the search must find exactly
    those, nearest first, whatever the chunking, and never a row it was told to leave out."""
    from gridtsne import vectors as vectors_module

    rng = np.random.default_rng(3)
    rows = normalise(rng.normal(size=(500, 32)).astype(np.float32))
    queries = normalise(rng.normal(size=(70, 32)).astype(np.float32))
    among = rng.random(500) < 0.7
    similarity = queries @ rows.T
    similarity[:, ~among] = -np.inf
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    monkeypatch.setattr(vectors_module, "SEARCH_CHUNK_BYTES", 8 * 500 * 16)  # 16 queries at a time
    found, distance = vectors_module.nearest_unit_rows(queries, rows, k=5, among=among)
    assert np.array_equal(found, expected)
    assert among[found].all()
    assert np.allclose(distance, np.linalg.norm(queries[:, None, :] - rows[found], axis=2), atol=1e-5)
    assert (np.diff(distance, axis=1) >= 0).all()
