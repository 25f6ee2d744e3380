"""reduce: t-SNE to the unit square, deterministic, sized for small collections."""

import numpy as np
import pytest

from gridtsne import reduce


def clusters(n_per_cluster=15, dimension=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dimension)) * 5
    points = np.concatenate([c + rng.normal(size=(n_per_cluster, dimension)) for c in centres])
    return points.astype(np.float32), np.repeat(np.arange(3), n_per_cluster)


def test_same_seed_same_map_and_the_map_fills_the_unit_square():
    points, _ = clusters()
    first, kl = reduce.tsne_2d(points, seed=3)
    second, _ = reduce.tsne_2d(points, seed=3)
    assert np.array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == (45, 2)
    assert first.min() >= 0 and first.max() <= 1
    assert np.isclose(np.ptp(first, axis=0).max(), 1.0)
    assert kl is not None and kl > 0


def test_clusters_in_feature_space_stay_apart_on_the_map():
    points, labels = clusters()
    coords, _ = reduce.tsne_2d(points)
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    same = labels[:, None] == labels[None]
    assert distance[same].mean() * 3 < distance[~same].mean()


def test_default_perplexity_fits_small_collections_and_is_local_for_large_ones():
    assert reduce.default_perplexity(799) == 30
    assert reduce.default_perplexity(800) == reduce.default_perplexity(100_000) == 10
    assert reduce.default_perplexity(20) < 20 / 3
    points, _ = clusters(n_per_cluster=3)
    coords, _ = reduce.tsne_2d(points)  # 9 points: openTSNE's 30 would fail
    assert coords.shape == (9, 2)


def test_too_few_for_tsne_still_gets_a_layout():
    for n in (1, 2, 4):
        coords, kl = reduce.tsne_2d(np.random.default_rng(n).random((n, 8)))
        assert coords.shape == (n, 2) and kl is None
        assert coords.min() >= 0 and coords.max() <= 1


def test_an_impossible_perplexity_is_a_clear_error():
    points, _ = clusters(n_per_cluster=3)
    with pytest.raises(ValueError, match="perplexity"):
        reduce.tsne_2d(points, perplexity=30)


def test_unit_square_keeps_the_shape_of_the_cloud():
    square = reduce.to_unit_square(np.array([[0, 0], [4, 0], [4, 2], [0, 2]]))
    assert square.tolist() == [[0, 0.25], [1, 0.25], [1, 0.75], [0, 0.75]]


def test_same_seed_same_map_with_approximate_neighbours(monkeypatch):
    # From ANNOY_FROM_POINTS points openTSNE's neighbours come from Annoy; the map must
    # still depend on the seed alone (the switch lowered here: 20,000 points take too long).
    assert reduce.tsne_settings(19_999)["neighbors"] == "exact"
    assert reduce.tsne_settings(20_000)["neighbors"] == "annoy"
    monkeypatch.setattr(reduce, "ANNOY_FROM_POINTS", 1000)
    rng = np.random.default_rng(7)
    points = rng.normal(size=(1000, 8)) + np.repeat(rng.normal(scale=4, size=(4, 8)), 250, axis=0)
    assert reduce.tsne_settings(1000)["neighbors"] == "annoy"
    first, _ = reduce.tsne_2d(points, seed=5)
    assert np.array_equal(first, reduce.tsne_2d(points, seed=5)[0])
    assert not np.array_equal(first, reduce.tsne_2d(points, seed=6)[0])
    # The thread count, on which openTSNE's map depends, is fixed by N, not by the machine:
    # one thread for a few photos, whose gradient is too little work to share.
    assert reduce.tsne_settings(1000)["n_jobs"] == reduce.tsne_settings(20_000)["n_jobs"] == 2
    assert reduce.tsne_settings(149)["n_jobs"] == 1 and reduce.tsne_settings(150)["n_jobs"] == 2


def test_pca_first_is_recorded_and_the_settings_follow_the_size():
    small, large = reduce.tsne_settings(500), reduce.tsne_settings(100_000)
    assert small["neighbors"] == "exact" and small["negative_gradient_method"] == "bh"
    assert large["neighbors"] == "annoy" and large["negative_gradient_method"] == "fft"
    assert small["pca_dims"] == reduce.PCA_DIMS == 50


def test_the_threaded_neighbour_search_finds_what_opentsne_s_annoy_finds():
    # reduce queries openTSNE's Annoy index in two chunks instead of a joblib task a point:
    # the same trees and seed, so the same neighbours and the same map.
    from openTSNE.nearest_neighbors import Annoy

    points = np.random.default_rng(3).normal(size=(1500, 20))
    ours = reduce._annoy_index(points, 30, seed=7).build()
    theirs = Annoy(points, 30, metric="euclidean", n_jobs=reduce.TSNE_JOBS, random_state=7).build()
    assert np.array_equal(ours[0], theirs[0])
    assert np.allclose(ours[1], theirs[1])


def test_placing_new_photos_frees_its_search_rows_without_waiting_for_the_garbage_collector():
    # The affinities that search the staying photos hold their unit rows (49 MB at 10,000
    # photos); once placing is done they must go at once, not when the cyclic garbage
    # collector next runs, or an update's assignment starts with them still resident.
    import gc
    import weakref

    unit_rows = np.eye(20, 8, dtype=np.float32)
    kept = np.arange(20) < 15
    alive = weakref.ref(unit_rows)
    gc.disable()
    try:
        affinities = reduce._affinities_to_kept(unit_rows, kept)
        assert affinities.to_new(unit_rows[15:], perplexity=2).shape == (5, 15)
        del affinities, unit_rows
        assert alive() is None
    finally:
        gc.enable()


WATCH_NUMPY = """
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:  # what OpenBLAS will read as numpy loads it
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
sys.meta_path.insert(0, Watch())
import gridtsne.cli
print(seen)
"""


def test_openblas_threads_are_told_to_sleep_soon_before_numpy_loads_and_a_users_value_wins():
    """numpy's and scipy's OpenBLAS each keep idle threads spinning for 0.1 s by default,
    which on two cores halves the other's speed: gridtsne shortens that before numpy loads
    OpenBLAS (it reads the setting then), unless the user set it."""
    import os
    import subprocess
    import sys

    for preset, expected in ((None, "['20']"), ("7", "['7']")):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
        if preset:
            env["OPENBLAS_THREAD_TIMEOUT"] = preset
        result = subprocess.run([sys.executable, "-c", WATCH_NUMPY], capture_output=True, text=True, env=env)
        assert result.stdout.strip() == expected, result.stderr
