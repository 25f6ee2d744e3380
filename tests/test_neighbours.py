"""The most similar photos of each photo (neighbours.py) against numpy's exact answer."""

import numpy as np
import pytest

from gridtsne import neighbours


def exact_top(vectors, k):
    unit = vectors.astype(np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = unit / np.where(norms == 0, 1, norms)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    index = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(similarity, index, axis=1)


def clustered(n, dims, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dims))
    return np.abs(centres[rng.integers(0, 30, n)] + rng.normal(scale=0.7, size=(n, dims))).astype(np.float32)


@pytest.mark.parametrize("n", [5, 13, 300, 1200])
def test_the_exact_search_finds_numpys_top_12_on_the_full_vectors(n):
    vectors = np.random.default_rng(n).normal(size=(n, 40)).astype(np.float32)
    index, similarity = neighbours.most_similar(vectors, jobs=2)
    expected, expected_similarity = exact_top(vectors, min(12, n - 1))
    assert index.shape == expected.shape and index.dtype == np.int32
    assert (index == expected).mean() > 0.999  # float32 may swap two values within 1e-6 of each other
    assert np.allclose(similarity, expected_similarity, atol=1e-5)
    assert not (index == np.arange(n)[:, None]).any()  # never its own neighbour


def test_blocks_of_rows_give_the_same_answer_as_one_block(monkeypatch):
    vectors = clustered(700, 24)
    whole = neighbours.most_similar(vectors)
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 700 * 4 * 50)  # 50 rows a block
    blocks = neighbours.most_similar(vectors, jobs=2)
    assert np.allclose(whole[1], blocks[1], atol=1e-6)
    # The same photos in the same order, but for two whose similarities are equal to within
    # float32 rounding: BLAS may round a product of 50 rows unlike one of 700 (on some CPUs).
    differ = whole[0] != blocks[0]
    assert differ.mean() < 0.001
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row = np.nonzero(differ)[0]
    exact = np.einsum("nd,nd->n", unit[row].astype(np.float64), unit[whole[0][differ]].astype(np.float64))
    swapped = np.einsum("nd,nd->n", unit[row].astype(np.float64), unit[blocks[0][differ]].astype(np.float64))
    assert np.allclose(exact, swapped, atol=1e-6)
    assert all(set(a) == set(b) for a, b in zip(whole[0][row], blocks[0][row], strict=True))


def test_the_reduced_search_ranks_on_the_full_vectors_and_finds_nearly_all_of_the_exact_top_12():
    vectors = clustered(1500, 200)
    index, similarity = neighbours.most_similar(vectors, jobs=2, exact=False)
    expected, _ = exact_top(vectors, 12)
    recall = np.mean([len(set(a) & set(b)) / 12 for a, b in zip(index, expected, strict=True)])
    assert recall > 0.97
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    full = np.einsum("nd,nkd->nk", unit, unit[index])
    assert np.allclose(similarity, full, atol=1e-5)  # the full vectors' own similarity
    assert (np.diff(similarity, axis=1) <= 1e-6).all()  # most similar first


def test_ties_go_to_the_lower_index_and_zero_vectors_are_similar_to_nothing():
    vectors = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]], np.float32)
    index, similarity = neighbours.most_similar(vectors, k=3)
    assert index[0].tolist() == [1, 2, 3] and index[2].tolist() == [0, 1, 3]
    assert similarity[4].tolist() == [0, 0, 0]
    assert neighbours.most_similar(vectors[:1])[0].shape == (1, 0)


def test_top_of_rows_by_thresholds_agrees_with_a_full_sort():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(40, 5000)).astype(np.float32)
    values[:, ::7] = 0.5  # many ties
    columns, top = neighbours.top_of_rows(values.copy(), 20)
    order = np.lexsort((np.broadcast_to(np.arange(5000), values.shape), -values), axis=1)[:, :20]
    assert np.array_equal(columns, order)
    assert np.array_equal(top, np.take_along_axis(values, order, axis=1))
