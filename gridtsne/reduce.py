"""Stage 2, reduce: t-SNE (openTSNE) from N x D embeddings to N x 2 in the unit square.

Embeddings are L2-normalised first, so euclidean t-SNE sees cosine geometry,
which is what CNN features are compared by. The map keeps its true shape
(aspect ratio) in ``coords.npy``; fitting it to the grid is assign's job.
"""

from __future__ import annotations

import time

import numpy as np

from gridtsne.workdir import COORDS, EMBEDDINGS, StageError, Workdir, file_hash, save_npy

STAGE = "reduce"

#: Fewer points than this get a PCA layout: t-SNE has no neighbourhoods to keep.
MIN_TSNE_POINTS = 5


def default_perplexity(n_points: int) -> float:
    """openTSNE's 30 for large sets; for small ones as large as the set allows.

    Perplexity is the effective number of neighbours; openTSNE needs
    3 x perplexity < N, so 20 images get about 6.
    """
    return float(max(1.0, min(30.0, (n_points - 1) / 3.0)))


def normalise(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def to_unit_square(points: np.ndarray) -> np.ndarray:
    """Scale and centre into [0, 1]^2 with one factor for both axes (shape kept)."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    extent = float((high - low).max())
    if extent == 0:
        return np.full(points.shape, 0.5, dtype=np.float32)
    scaled = (points - low) / extent
    scaled += (1.0 - scaled.max(axis=0)) / 2.0
    return scaled.astype(np.float32)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    if projected.shape[1] < 2:
        projected = np.hstack([projected, np.zeros((len(x), 2 - projected.shape[1]))])
    return projected


def tsne_2d(
    embeddings: np.ndarray, *, perplexity: float | None = None, seed: int = 0, n_jobs: int = 1
) -> tuple[np.ndarray, float | None]:
    """2-D map of the embeddings in [0, 1]^2, and t-SNE's final KL divergence.

    Deterministic for a given seed.
    """
    x = normalise(np.asarray(embeddings, dtype=np.float64))
    n_points = len(x)
    if n_points < MIN_TSNE_POINTS:
        return to_unit_square(_pca_2d(x)), None
    from openTSNE import TSNE

    perplexity = default_perplexity(n_points) if perplexity is None else float(perplexity)
    if not 0 < perplexity < n_points / 3:
        raise StageError(
            f"--perplexity {perplexity:g} is out of range for {n_points} images: "
            f"give a value below {n_points / 3:.1f}, or leave it out"
        )
    embedding = TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        metric="euclidean",
        random_state=seed,
        n_jobs=n_jobs,
        verbose=False,
    ).fit(x)
    return to_unit_square(np.asarray(embedding)), float(embedding.kl_divergence)


def parameters(seed: int, perplexity: float | None) -> dict:
    return {"seed": seed, "perplexity": perplexity}


def current_inputs(workdir: Workdir) -> dict:
    return {EMBEDDINGS: file_hash(workdir.require(EMBEDDINGS))}


def run(
    workdir: Workdir,
    *,
    seed: int = 0,
    perplexity: float | None = None,
    n_jobs: int = 1,
    skip_if_fresh: bool = False,
) -> dict:
    started = time.perf_counter()
    params = parameters(seed, perplexity)
    inputs = current_inputs(workdir)
    if skip_if_fresh and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary
    embeddings = workdir.load_array(EMBEDDINGS)
    coords, kl_divergence = tsne_2d(embeddings, perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    save_npy(workdir.file(COORDS), coords)
    results = {
        "points": len(coords),
        "perplexity": perplexity if perplexity is not None else default_perplexity(len(coords)),
        "kl_divergence": kl_divergence,
    }
    return workdir.finish_stage(STAGE, params, inputs, {COORDS: workdir.file(COORDS)}, started, results)
