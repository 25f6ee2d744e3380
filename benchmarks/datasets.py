"""Embedding sets the benchmarks share: the sample photos' embeddings and synthetic ones.

The synthetic set is a hierarchical Gaussian mixture in 1280-d, shaped like
CNN features: 8 broad groups, 40 subgroups inside them, images around the
subgroups, all non-negative (as after a ReLU). Seeded, so every run and every
script sees the same vectors.
"""

import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def mixture(n_points: int, dimension: int = 1280, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups = rng.normal(size=(8, dimension))
    subgroups = groups[rng.integers(0, 8, 40)] + rng.normal(scale=0.6, size=(40, dimension))
    member_of = rng.integers(0, 40, n_points)
    points = np.empty((n_points, dimension), dtype=np.float32)
    for start in range(0, n_points, 10_000):  # in slices: 100,000 x 1280 at once is 1 GB of float64
        stop = min(n_points, start + 10_000)
        noise = rng.normal(scale=0.5, size=(stop - start, dimension))
        points[start:stop] = np.abs(subgroups[member_of[start:stop]] + noise)
    return points


def sample_images() -> np.ndarray:
    """Embeddings of sample_images/ (250 photos) by the shipped model, computed once per run."""
    from gridtsne import embed
    from gridtsne.options import EmbedOptions
    from gridtsne.workdir import Workdir

    with tempfile.TemporaryDirectory() as tmp:
        embed.run(Workdir(tmp), EmbedOptions(paths=[str(REPO / "sample_images")]))
        return np.load(Path(tmp) / "embeddings.npy")
