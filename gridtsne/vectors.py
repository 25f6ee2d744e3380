"""Operations on embedding vectors that more than one stage needs: normalising and PCA."""

from __future__ import annotations

import numpy as np


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows left as they are), so that euclidean
    distances between rows order pairs as cosine similarity does."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` principal components of x (N x D), signs fixed for determinism.

    Through the D x D covariance when N > D, so memory stays N x D at any N;
    through the N x N Gram matrix when N <= D, where that is the smaller
    problem. Only the ``dims`` largest eigenpairs are computed.
    """
    from scipy.linalg import eigh  # scipy is slow to import; most runs never get here

    centred = x - x.mean(axis=0)
    gram = len(x) <= x.shape[1]
    matrix = centred @ centred.T if gram else centred.T @ centred
    keep = min(dims, len(matrix))
    variances, vectors = eigh(matrix, subset_by_index=[len(matrix) - keep, len(matrix) - 1])
    variances, vectors = variances[::-1], vectors[:, ::-1]
    if gram:
        projected = vectors * np.sqrt(np.maximum(variances, 0.0))
    else:
        projected = centred @ vectors
    largest = projected[np.abs(projected).argmax(axis=0), np.arange(projected.shape[1])]
    projected = projected * np.where(largest < 0, -1.0, 1.0)
    if projected.shape[1] < dims:
        projected = np.hstack([projected, np.zeros((len(x), dims - projected.shape[1]))])
    return projected
