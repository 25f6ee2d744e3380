"""vectors: normalising and PCA, shared by reduce, assign and refine."""

import numpy as np

from gridtsne.vectors import normalise, pca


def test_pca_is_deterministic_and_keeps_the_dimensions_asked_for():
    x = np.random.default_rng(8).normal(size=(300, 64))
    assert np.array_equal(pca(x, 10), pca(x.copy(), 10))
    assert pca(x, 10).shape == (300, 10)


def test_pca_of_fewer_points_than_dimensions_matches_the_covariance_route():
    x = np.random.default_rng(9).normal(size=(40, 100))
    through_gram = pca(x, 5)  # N <= D: the N x N Gram matrix
    centred = x - x.mean(axis=0)
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ rows[:5].T
    expected *= np.sign(expected[np.abs(expected).argmax(axis=0), np.arange(5)])
    assert np.allclose(through_gram, expected, atol=1e-8)


def test_normalise_gives_unit_rows_and_leaves_zero_rows_alone():
    rows = normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.tolist() == [[0.6, 0.8], [0.0, 0.0]]
