"""Stage 2, reduce: t-SNE (openTSNE) from N x D embeddings to N x 2 in the unit square.

Embeddings are L2-normalised first, so euclidean t-SNE sees cosine geometry,
which is what CNN features are compared by, then projected by PCA onto their
first ``PCA_DIMS`` principal components (exact, via the D x D covariance), which
keeps the neighbourhoods t-SNE looks at and makes the nearest-neighbour search
cheap at 100,000 points. openTSNE's choices are resolved here, by N, and
recorded in ``reduce.json``: exact neighbours below 1,000 points and Annoy
above; Barnes-Hut gradients below 10,000 and FFT-interpolated above. All are
deterministic for a seed and a thread count, and the thread count is fixed.

The map keeps its true shape (aspect ratio) in ``coords.npy``; fitting it to
the grid is assign's job. ``import_embeddings`` brings vectors made elsewhere
(CLIP, ...) into the work directory in place of ``embed``.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from gridtsne.errors import OptionMismatch, StageError
from gridtsne.options import ReduceOptions
from gridtsne.stage import Context, Stage
from gridtsne.vectors import normalise, pca
from gridtsne.workdir import COORDS, EMBEDDINGS, IMAGES, Workdir, save_json, save_npy

#: Fewer points than this get a PCA layout: t-SNE has no neighbourhoods to keep.
MIN_TSNE_POINTS = 5
#: Dimensions kept by PCA before t-SNE (openTSNE's and scikit-learn's advice: ~50).
PCA_DIMS = ReduceOptions.default("pca_dims")
#: t-SNE threads (faster than one on 2 cores, the same DPQ_16: docs/benchmarks.md).
#: openTSNE's map depends on the thread
#: count (its gradient sums are split between threads), so the count is fixed,
#: never taken from the machine: the same inputs and seed give the same map anywhere.
TSNE_JOBS = 2
#: openTSNE's own switch-over sizes for its "auto" choices.
ANNOY_FROM_POINTS = 1000
FFT_FROM_POINTS = 10_000


def default_perplexity(n_points: int) -> float:
    """openTSNE's 30 for large sets; for small ones as large as the set allows.

    Perplexity is the effective number of neighbours; openTSNE needs
    3 x perplexity < N, so 20 images get about 6.
    """
    return float(max(1.0, min(30.0, (n_points - 1) / 3.0)))


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


def tsne_settings(n_points: int, perplexity: float | None = None, pca_dims: int = PCA_DIMS) -> dict:
    """Every openTSNE setting used for ``n_points``, "auto" choices resolved."""
    return {
        "perplexity": default_perplexity(n_points) if perplexity is None else float(perplexity),
        "pca_dims": pca_dims,
        "neighbors": "exact" if n_points < ANNOY_FROM_POINTS else "annoy",
        "negative_gradient_method": "bh" if n_points < FFT_FROM_POINTS else "fft",
        "initialization": "pca",
        "metric": "euclidean",
        "learning_rate": "auto",
        "early_exaggeration_iter": 250,
        "n_iter": 500,
        "n_jobs": TSNE_JOBS,
    }


def tsne_2d(
    embeddings: np.ndarray,
    *,
    perplexity: float | None = None,
    seed: int = 0,
    pca_dims: int = PCA_DIMS,
) -> tuple[np.ndarray, float | None]:
    """2-D map of the embeddings in [0, 1]^2, and t-SNE's final KL divergence.

    Deterministic for a given seed.
    """
    x = normalise(np.array(embeddings, dtype=np.float64), copy=False)  # one float64 copy, not two
    n_points = len(x)
    if n_points < MIN_TSNE_POINTS:
        return to_unit_square(pca(x, 2)), None
    from openTSNE import TSNE

    settings = tsne_settings(n_points, perplexity, pca_dims)
    perplexity = settings.pop("perplexity")
    if not 0 < perplexity < n_points / 3:
        raise ValueError(
            f"perplexity {perplexity:g} is out of range for {n_points} points: below {n_points / 3:.1f}"
        )
    if x.shape[1] > settings.pop("pca_dims"):
        x = pca(x, pca_dims)
    embedding = TSNE(n_components=2, perplexity=perplexity, random_state=seed, verbose=False, **settings).fit(
        x
    )
    return to_unit_square(np.asarray(embedding)), float(embedding.kl_divergence)


def _opentsne_version() -> str | None:
    try:
        return metadata.version("openTSNE")
    except metadata.PackageNotFoundError:
        return None


def import_embeddings(
    workdir: Workdir, vectors_path: str | Path, paths_file: str | Path | None = None
) -> int:
    """Copy N x D vectors (and optionally their image paths) into the work directory.

    ``vectors_path`` is a ``.npy`` float array, one row per image;
    ``paths_file`` a text file with one image path per line, in the same
    order. They become ``embeddings.npy`` and ``images.json``, as if ``embed``
    had made them, so assign and render work on them (render needs the
    paths). Without paths, a stale ``images.json`` is removed, so that render
    never draws other images; ``embed.json`` is removed too, as it describes
    embeddings that are gone. Returns N.
    """
    try:
        vectors = np.load(vectors_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read {vectors_path} as a .npy array: {error}") from None
    if vectors.ndim != 2 or len(vectors) == 0 or not np.issubdtype(vectors.dtype, np.number):
        raise StageError(
            f"{vectors_path} holds a {vectors.dtype} array of shape {vectors.shape}: "
            "give an N x D array of numbers, one row per image"
        )
    if not np.isfinite(vectors).all():
        raise StageError(f"{vectors_path} holds NaN or infinite values")
    images = None
    if paths_file is not None:
        try:
            lines = [line.strip() for line in Path(paths_file).read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as error:
            raise StageError(
                f"{paths_file} is not UTF-8 text (byte {error.start}): give one path a line, in UTF-8"
            ) from None
        paths = [line for line in lines if line]
        if len(paths) != len(vectors):
            raise StageError(
                f"{paths_file} lists {len(paths)} paths for the {len(vectors)} rows "
                f"of {vectors_path}: give one path per row, in the same order"
            )
        base = Path(paths_file).parent
        images = {
            "images": [{"path": str((base / p) if not Path(p).is_absolute() else Path(p))} for p in paths],
            "skipped": [],
            "source": {
                "embeddings": str(Path(vectors_path).absolute()),
                "paths": str(Path(paths_file).absolute()),
            },
        }
    # embed's outputs are replaced, so its manifest no longer describes them.
    workdir.manifest_path("embed").unlink(missing_ok=True)
    save_npy(workdir.file(EMBEDDINGS), vectors.astype(np.float32))
    if images is not None:
        save_json(workdir.file(IMAGES), images)
    else:
        workdir.file(IMAGES).unlink(missing_ok=True)
    return len(vectors)


class ReduceStage(Stage):
    """``embeddings.npy`` -> ``coords.npy``: the t-SNE map."""

    name = "reduce"
    options_type = ReduceOptions
    reads = (EMBEDDINGS,)
    writes = (COORDS,)

    def compute(self, workdir: Workdir, options: ReduceOptions, context: Context, prepared) -> dict:
        embeddings = workdir.load_embeddings()
        settings = tsne_settings(len(embeddings), options.perplexity, options.pca_dims)
        if len(embeddings) >= MIN_TSNE_POINTS and not 0 < settings["perplexity"] < len(embeddings) / 3:
            raise OptionMismatch(
                "perplexity",
                f"{settings['perplexity']:g} is out of range for {len(embeddings)} images: "
                f"give a value below {len(embeddings) / 3:.1f}, or leave it out",
            )
        coords, kl_divergence = tsne_2d(
            embeddings, perplexity=options.perplexity, seed=options.seed, pca_dims=options.pca_dims
        )
        save_npy(workdir.file(COORDS), coords)
        return {
            "points": len(coords),
            "dimension": int(embeddings.shape[1]),
            "perplexity": settings.pop("perplexity"),
            "kl_divergence": kl_divergence,
            "method": "tsne" if kl_divergence is not None else "pca",
            "tsne": settings,
            "opentsne_version": _opentsne_version(),
        }

    def describe(self, summary: dict) -> str:
        kl = summary["kl_divergence"]
        kl = f", KL divergence {kl:.3f}" if kl is not None else ""
        return f"reduce: {summary['points']} points, perplexity {summary['perplexity']:.3g}{kl}"


STAGE = ReduceStage()


def run(
    workdir: Workdir,
    options: ReduceOptions | dict | None = None,
    context: Context | None = None,
    *,
    skip_if_fresh: bool = False,
) -> dict:
    """Map ``embeddings.npy`` to 2-D; returns a summary."""
    return STAGE.run(workdir, options, context, skip_if_fresh=skip_if_fresh)
