"""quality: DPQ_16 and neighbourhood preservation, on layouts whose answer is known."""

import numpy as np
import pytest

from gridtsne import quality


def grid_shaped(rows, cols, scale=3.0):
    """An embedding that *is* a grid: image i sits at cell i's (row, col), scaled."""
    row, col = np.divmod(np.arange(rows * cols), cols)
    return np.stack([row, col], axis=1).astype(float) * scale


def test_a_layout_that_reproduces_a_grid_shaped_embedding_scores_1():
    embedding = grid_shaped(12, 15)
    result = quality.layout_quality(embedding, np.arange(180), cols=15)
    assert result["dpq"] == pytest.approx(1.0)
    assert result["neighbourhood_preservation"] == pytest.approx(1.0)
    assert result["dpq_p"] == 16 and result["k"] == 10 and not result["sampled"]


def test_the_same_embedding_mirrored_on_the_grid_is_still_perfect():
    embedding = grid_shaped(8, 8)
    mirrored = (7 - np.arange(64) // 8) * 8 + np.arange(64) % 8
    assert quality.layout_quality(embedding, mirrored, cols=8)["dpq"] == pytest.approx(1.0)


@pytest.mark.parametrize("data", ["gaussian", "grid"])
def test_a_random_layout_scores_about_0(data):
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(400, 16)) if data == "gaussian" else grid_shaped(20, 20)
    result = quality.layout_quality(embedding, rng.permutation(400), cols=20)
    assert abs(result["dpq"]) < 0.05
    assert result["neighbourhood_preservation"] < 0.1


def test_a_partly_kept_layout_scores_between():
    rng = np.random.default_rng(2)
    embedding = grid_shaped(16, 16)
    cells = np.arange(256)
    swapped = rng.choice(256, 64, replace=False)
    cells[swapped] = cells[rng.permutation(swapped)]
    result = quality.layout_quality(embedding, cells, cols=16)
    assert 0.2 < result["dpq"] < 0.95 and 0.2 < result["neighbourhood_preservation"] < 0.95


def test_empty_cells_are_allowed():
    embedding = grid_shaped(10, 10)[:90]
    assert quality.layout_quality(embedding, np.arange(90), cols=10)["dpq"] == pytest.approx(1.0)


def test_large_sets_are_measured_on_a_seeded_sample_close_to_the_full_answer():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 12))
    embedding = centres[np.repeat(np.arange(8), 150)] + rng.normal(scale=0.5, size=(1200, 12))
    cells = np.arange(1200)  # clusters in bands of rows
    full = quality.layout_quality(embedding, cells, cols=40, sample_size=1200)
    sampled = quality.layout_quality(embedding, cells, cols=40, sample_size=300)
    again = quality.layout_quality(embedding, cells, cols=40, sample_size=300)
    assert sampled["sampled"] and sampled["queries"] == 300 and not full["sampled"]
    assert sampled == again
    assert sampled["dpq"] == pytest.approx(full["dpq"], abs=0.05)


def test_favourable_ties_follow_the_authors_convention():
    # The authors' code orders a ring of equal grid distance nearest-first,
    # which lifts a random layout above 0; the default does not.
    rng = np.random.default_rng(4)
    embedding, cells = rng.normal(size=(180, 20)), rng.permutation(180)
    favourable = quality.layout_quality(embedding, cells, cols=15, ties="favourable")["dpq"]
    default = quality.layout_quality(embedding, cells, cols=15)
    assert favourable > default["dpq"] + 0.2
    assert default["dpq_authors"] == pytest.approx(favourable, abs=1e-12)  # the same, from one pass


def test_the_numbers_do_not_depend_on_the_threads_that_score_them(monkeypatch):
    """Blocks of queries are scored on two threads: the numbers are those of one thread,
    whichever block finishes first, and the same on every run."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(1500, 24)).astype(np.float32)
    cells = rng.permutation(40 * 40)[:1500]
    two = [quality.layout_quality(vectors, cells, 40, ties=ties) for ties in quality.TIES]
    assert two == [quality.layout_quality(vectors, cells, 40, ties=ties) for ties in quality.TIES]
    monkeypatch.setattr(quality, "QUALITY_THREADS", 1)
    one = [quality.layout_quality(vectors, cells, 40, ties=ties) for ties in quality.TIES]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-12), key


def direct_count(embedding, cells, cols, k=10, p=16):
    """The three numbers counted the plain way, one query at a time over every other image."""
    n = len(embedding)
    distance = np.sqrt(((embedding[:, None] - embedding[None]) ** 2).sum(axis=2))
    row_col = np.stack(np.divmod(cells, cols), axis=1)
    grid = ((row_col[:, None] - row_col[None]) ** 2).sum(axis=2)
    best, expected, authors = np.zeros(n - 1), np.zeros(n - 1), np.zeros(n - 1)
    shared = shared_authors = 0.0
    for query in range(n):
        others = np.delete(np.arange(n), query)
        apart, ring = distance[query, others], grid[query, others]
        best += np.sort(apart)
        by_authors = np.lexsort((apart, ring))  # by ring, nearest in the embedding first
        authors += apart[by_authors]
        rings, counts = np.unique(ring, return_counts=True)
        expected += np.repeat([apart[ring == r].mean() for r in rings], counts)
        # The embedding's k nearest, those tied at the k-th place (a pair of twins) sharing it.
        kth = np.sort(apart)[k - 1]
        tied = np.abs(apart - kth) <= 1e-9 * kth
        below = (apart < kth) & ~tied
        in_embedding = np.where(tied, (k - below.sum()) / tied.sum(), below.astype(float))
        kth_ring = np.sort(ring)[k - 1]
        share = (k - (ring < kth_ring).sum()) / (ring == kth_ring).sum()
        on_grid = np.where(ring < kth_ring, 1.0, np.where(ring == kth_ring, share, 0.0))
        shared += np.minimum(in_embedding, on_grid).sum()
        shared_authors += np.minimum(in_embedding, np.isin(np.arange(n - 1), by_authors[:k])).sum()
    random = distance.sum() / (n * (n - 1))

    def norm(total):
        gain = np.clip((random - np.cumsum(total) / np.arange(1, n) / n) / random, 0, None)
        return np.linalg.norm(gain, ord=p)

    return {
        "dpq": norm(expected) / norm(best),
        "dpq_authors": norm(authors) / norm(best),
        "neighbourhood_preservation": shared / (k * n),
        "favourable_np": shared_authors / (k * n),
    }


def test_the_numbers_are_those_of_a_direct_count_where_photos_have_exact_twins():
    """An exact twin is a photo's nearest neighbour, whichever of the two sorts first."""
    rng = np.random.default_rng(6)
    embedding = rng.normal(size=(240, 12))
    embedding[200:] = embedding[:40]  # 40 twins
    cells = rng.permutation(16 * 16)[:240]
    for twin in range(200, 220):  # 20 twins beside each other: swapped into the next cell
        beside = cells[twin - 200] + (1 if cells[twin - 200] % 16 < 15 else -1)
        holder = np.flatnonzero(cells == beside)
        cells[holder], cells[twin] = cells[twin], beside
    direct = direct_count(embedding, cells, 16)
    counted = quality.layout_quality(embedding, cells, 16)
    favourable = quality.layout_quality(embedding, cells, 16, ties="favourable")
    for key in ("dpq", "dpq_authors", "neighbourhood_preservation"):
        assert counted[key] == pytest.approx(direct[key], abs=1e-6), key
    assert favourable["neighbourhood_preservation"] == pytest.approx(direct["favourable_np"], abs=1e-6)
