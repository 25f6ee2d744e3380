"""Stage 2, reduce: t-SNE (openTSNE) from N x D embeddings to N x 2 in the unit square.

Embeddings are L2-normalised first, so euclidean t-SNE sees cosine geometry,
which is what CNN features are compared by, then projected by PCA onto their
first ``PCA_DIMS`` principal components (exact, via the D x D covariance), which
keeps the neighbourhoods t-SNE looks at and makes the nearest-neighbour search
cheap at 100,000 points. openTSNE's choices are resolved here, by N, and
recorded in ``reduce.json``: exact neighbours below 20,000 points and Annoy
above; Barnes-Hut gradients below 10,000 and FFT-interpolated above; from
1,000 points on, 125 iterations of early exaggeration and 150 of the main
phase (openTSNE's 250 and 500 below), enough for a grid.
All are deterministic for a seed and a thread count, and the thread count is fixed by N
(one thread below 150 points, two from there).

The map keeps its true shape (aspect ratio) in ``coords.npy``; fitting it to
the grid is assign's job. ``import_embeddings`` brings vectors made elsewhere
(CLIP, ...) into the work directory in place of ``embed``.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import numpy as np

from gridtsne.errors import OptionMismatch, StageError
from gridtsne.options import ReduceOptions
from gridtsne.stage import Context, Stage
from gridtsne.vectors import in_parts, match_rows, nearest_unit_rows, normalise, pca, row_keys
from gridtsne.workdir import (
    COORDS,
    EMBEDDINGS,
    IMAGES,
    REDUCE_STATE,
    Workdir,
    file_hash,
    load_state,
    save_json,
    save_npy,
    save_state,
)  # fmt: skip

#: Fewer points than this get a PCA layout: t-SNE has no neighbourhoods to keep.
MIN_TSNE_POINTS = 5
#: Dimensions kept by PCA before t-SNE (openTSNE's and scikit-learn's advice: ~50).
PCA_DIMS = ReduceOptions.default("pca_dims")
#: t-SNE threads (faster than one on 2 cores, the same DPQ_16: docs/benchmarks.md).
#: openTSNE's map depends on the thread
#: count (its gradient sums are split between threads), so the count is fixed,
#: never taken from the machine (nor are BLAS's: ``vectors.LAYOUT_BLAS_THREADS``): the same
#: inputs and seed give the same map on any number of cores (of one kind of CPU: OpenBLAS
#: picks its kernels by CPU, and another kernel may round otherwise).
TSNE_JOBS = 2
#: Below this many points t-SNE runs on one thread: its gradient is too little work to share,
#: and two threads wait on each other at every step of an iteration. Quiet, one thread took
#: 0.66-1.12 of two's time at 50-100 points; beside one other busy process 0.21-0.41 at 50-150,
#: as a waiting thread spins on the core the other process needs (``benchmarks/tsne_threads.py``,
#: docs/benchmarks.md). From 200 points two were faster on a quiet machine.
TWO_THREADS_FROM_POINTS = 150


def tsne_jobs(n_points: int) -> int:
    """t-SNE's threads for ``n_points``: fixed by N, never by the machine (see ``TSNE_JOBS``)."""
    return TSNE_JOBS if n_points >= TWO_THREADS_FROM_POINTS else 1


#: Barnes-Hut's accuracy (openTSNE's default; only the Barnes-Hut gradient reads it).
BH_THETA = 0.5
#: Exact nearest neighbours (openTSNE's "exact": scikit-learn's brute-force search) below this
#: many points, Annoy from there. openTSNE switches at 1,000, but on 50 dimensions the exact
#: search was faster up to 20,000 (1,024 points: 0.02 s against Annoy's 0.09; 10,000: 0.50 s
#: against 0.98) and its true neighbours kept as much or more: over ten seeds NP@10 rose on the
#: 1,024 subsets, emoji and openclipart, and DPQ_16 stayed within its noise
#: (``benchmarks/layout_settings.py``, docs/benchmarks.md). It grows as N^2: 5.8 s against 4.9 at 40,000.
ANNOY_FROM_POINTS = 20_000
#: openTSNE's own switch-over size for its "auto" gradient.
FFT_FROM_POINTS = 10_000
#: Iterations of early exaggeration and of the main phase from SHORT_FROM_POINTS points on
#: (openTSNE's defaults, 250 and 500, below). A grid needs a rougher map than a picture of
#: the map: refinement then moves every photo against the vectors themselves, and the grids
#: from 125 + 150 iterations score as those from 250 + 500 on the real collections of 1,000
#: photos and more (docs/benchmarks.md). The main phase costs more per iteration as the map
#: spreads out (the FFT grid grows with it): its last 350 iterations were over half of
#: reduce's time at 10,000 photos. From 800 photos, with LARGE_SET_PERPLEXITY, both DPQ_16
#: and NP@10 rose over twenty seeds (820 to 999 photos took half the time they did, when
#: the switch was at 1,000); from 700 NP@10 fell on one subset of three, and below 600 it
#: fell on three collections of five (docs/benchmarks.md): there the long schedule is kept.
EARLY_EXAGGERATION_ITER = 125
MAIN_ITER = 150
SHORT_FROM_POINTS = 800


#: Perplexity from SHORT_FROM_POINTS points on. With the short schedule, 10 keeps a photo's
#: nearest neighbours beside it more often than openTSNE's 30 (NP@10 0.324 against 0.315 at
#: 10,000 real photos, DPQ_16 0.943 against 0.939, seeds 0-2), never less on the collections
#: of 800 and more, and t-SNE's neighbour search (3 x perplexity neighbours) is a third of
#: 30's. Below 600, 30 keeps more (clipart, objects and portraits: NP@10 0.01-0.02 higher;
#: docs/benchmarks.md).
LARGE_SET_PERPLEXITY = 10.0


def default_perplexity(n_points: int) -> float:
    """``LARGE_SET_PERPLEXITY`` from SHORT_FROM_POINTS points on; below, openTSNE's 30, or as
    large as the set allows.

    Perplexity is the effective number of neighbours; openTSNE needs
    3 x perplexity < N, so 20 images get about 6.
    """
    if n_points >= SHORT_FROM_POINTS:
        return LARGE_SET_PERPLEXITY
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
        "theta": BH_THETA,
        "initialization": "pca",
        "metric": "euclidean",
        "learning_rate": "auto",
        "early_exaggeration_iter": EARLY_EXAGGERATION_ITER if n_points >= SHORT_FROM_POINTS else 250,
        "n_iter": MAIN_ITER if n_points >= SHORT_FROM_POINTS else 500,
        "n_jobs": tsne_jobs(n_points),
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
    raw, kl_divergence = tsne_map(embeddings, perplexity=perplexity, seed=seed, pca_dims=pca_dims)
    return to_unit_square(raw), kl_divergence


def _prepared(embeddings: np.ndarray, pca_dims: int) -> np.ndarray:
    """What t-SNE sees: unit rows (cosine geometry) on their first ``pca_dims`` components."""
    if np.shape(embeddings)[1] <= pca_dims:
        return normalise(np.array(embeddings, dtype=np.float64), copy=False)
    # Chunk by chunk: no float64 copy of N x D (10 GB at a million 1,280-d vectors).
    return pca(embeddings, pca_dims, unit_rows=True)


def _checked_perplexity(settings: dict, n_points: int) -> float:
    perplexity = settings.pop("perplexity")
    if not 0 < perplexity < n_points / 3:
        raise ValueError(
            f"perplexity {perplexity:g} is out of range for {n_points} points: below {n_points / 3:.1f}"
        )
    return perplexity


def tsne_map(
    embeddings: np.ndarray,
    *,
    perplexity: float | None = None,
    seed: int = 0,
    pca_dims: int = PCA_DIMS,
    on_progress=None,
) -> tuple[np.ndarray, float | None]:
    """The t-SNE map in t-SNE's own units (N x 2 float64) and its KL divergence (None: PCA).

    ``on_progress(fraction)`` is told every ``PROGRESS_EVERY`` iterations how far the optimisation is."""
    n_points = len(embeddings)
    if n_points < MIN_TSNE_POINTS:
        return pca(normalise(np.array(embeddings, dtype=np.float64)), 2), None
    from openTSNE import TSNE

    settings = tsne_settings(n_points, perplexity, pca_dims)
    perplexity = _checked_perplexity(settings, n_points)
    del settings["pca_dims"]
    x = _prepared(embeddings, pca_dims)
    if settings["neighbors"] == "annoy":
        settings["neighbors"] = _annoy_index(x, min(n_points - 1, int(3 * perplexity)), seed)
    if on_progress is not None:
        on_progress(PREPARED_SHARE)  # PCA done; the neighbour search and affinities come next
        settings.update(
            _progress_callbacks(on_progress, settings["early_exaggeration_iter"] + settings["n_iter"])
        )
    embedding = TSNE(n_components=2, perplexity=perplexity, random_state=seed, verbose=False, **settings).fit(
        x
    )
    return np.asarray(embedding, dtype=np.float64), float(embedding.kl_divergence)


def _annoy_index(x: np.ndarray, k: int, seed: int):
    """openTSNE's Annoy neighbour index (the same trees, seed and neighbours), queried in
    ``TSNE_JOBS`` contiguous chunks of points on as many threads: openTSNE hands joblib one
    task per point, whose dispatch took half the search at 10,000 points (1.2 s against 0.56 s
    on two cores; Annoy lets go of the GIL while it searches)."""
    from openTSNE.dependencies.annoy import AnnoyIndex
    from openTSNE.nearest_neighbors import Annoy

    class ChunkedAnnoy(Annoy):
        def build(self):
            n_points = len(self.data)
            self.index = AnnoyIndex(self.data.shape[1], "euclidean")
            # As openTSNE seeds it: a draw from a RandomState of the seed.
            self.index.set_seed(np.random.RandomState(self.random_state).randint(np.iinfo(np.int32).max))
            for point, row in enumerate(self.data):
                self.index.add_item(point, row)
            self.index.build(n_trees=ANNOY_TREES, n_jobs=self.n_jobs)
            indices = np.zeros((n_points, self.k), dtype=np.int64)
            distances = np.zeros((n_points, self.k))

            def search(points: range) -> None:
                for point in points:
                    # The point itself comes first and is dropped.
                    found, found_distances = self.index.get_nns_by_item(
                        point, self.k + 1, include_distances=True
                    )
                    indices[point], distances[point] = found[1:], found_distances[1:]

            in_parts(search, n_points, self.n_jobs)
            return indices, distances

    return ChunkedAnnoy(x, k, metric="euclidean", n_jobs=TSNE_JOBS, random_state=seed)


#: Trees in the Annoy index of t-SNE's neighbour search (openTSNE's, after FIt-SNE).
ANNOY_TREES = 50

#: Iterations between two progress reports of t-SNE (each also computes the KL divergence):
#: at 10,000 photos about a second apart.
PROGRESS_EVERY = 25
#: The share of reduce's progress reported once PCA is done, before the iterations.
PREPARED_SHARE = 0.1


def _progress_callbacks(on_progress, iterations: int) -> dict:
    """openTSNE's callback settings that tell ``on_progress`` the share of ``iterations`` done
    (openTSNE counts each phase from zero, so the calls are counted here)."""
    calls = [0]

    def callback(iteration, error, embedding) -> bool:
        calls[0] += 1
        done = min(1.0, calls[0] * PROGRESS_EVERY / iterations)
        on_progress(PREPARED_SHARE + (1.0 - PREPARED_SHARE) * done)
        return False  # True would stop the optimisation

    return {"callbacks": [callback], "callbacks_every_iters": PROGRESS_EVERY}


#: Placing new photos searches the staying ones exactly, in the full embedding, while there
#: are at most this many (new, staying) pairs: at 10,000 photos (1,000 new) the search takes
#: a tenth of a second, where openTSNE's affinities of every staying photo took half a second
#: and their PCA most of another (docs/benchmarks.md). Above, openTSNE's own neighbour index
#: over PCA-50 (Annoy from ``ANNOY_FROM_POINTS`` staying photos). Where new photos sit on the
#: map only matters to coords.npy (assign places them by their kin), so their placing is cheap.
EXACT_PLACING_PAIRS = 100_000_000

#: A new photo starts on the map where its nearest staying photo is (openTSNE's median start
#: over this many neighbours; its default, 25, starts it between them, often between two
#: clusters) and then moves for ``PLACING_ITERATIONS`` of t-SNE against the fixed map. Placing
#: a tenth of the 10,000 kept aside, the new photos' KL divergence came out at 9,933 after 50
#: iterations from there against 10,610 after 250 from the median of 25, and they lay nearer
#: their kin (benchmarks/placing.py); the grid is the same (assign places new photos by their kin).
PLACING_START_NEIGHBOURS = 1
PLACING_ITERATIONS = 50


def _affinities_to_kept(unit_rows: np.ndarray, kept: np.ndarray):
    """openTSNE affinities whose ``to_new`` (all that ``TSNEEmbedding.transform`` asks of them)
    finds a new photo's neighbours among the ``kept`` ``unit_rows`` by an exact search.

    ``PerplexityBasedNN`` would first build the neighbour graph of every staying photo, which
    placing never uses."""
    import scipy.sparse
    from openTSNE.affinity import Affinities, joint_probabilities_nn

    class AffinitiesToKept(Affinities):
        # The arrays live on the instance, not in a closure: a class made in a function is
        # freed only by the cyclic garbage collector, and would keep them (the unit rows:
        # 49 MB at 10,000 photos) alive after placing, under the assignment that follows.
        def __init__(self, unit_rows, kept):
            super().__init__()
            self.unit_rows, self.kept = unit_rows, kept
            self.n_kept = int(np.count_nonzero(kept))
            self.kept_row = np.cumsum(kept) - 1  # each row's place among the kept ones
            # The staying photos' own affinities: never used by ``transform``, only checked for shape.
            self.P = scipy.sparse.csr_matrix((self.n_kept, self.n_kept))

        def to_new(self, data, perplexity=5.0, return_distances=False):
            found, distances = nearest_unit_rows(data, self.unit_rows, k=int(3 * perplexity), among=self.kept)
            self.nearest = found[:, 0]  # each new photo's nearest staying photo: its kin, for assign
            perplexity = min(perplexity, found.shape[1] / 3)  # few staying photos: as openTSNE does
            neighbours = self.kept_row[found]  # rows of the kept photos' map
            probabilities = joint_probabilities_nn(
                neighbours, distances, [perplexity], symmetrize=False, normalization="point-wise",
                n_reference_samples=self.n_kept, n_jobs=TSNE_JOBS,
            )  # fmt: skip
            return (probabilities, neighbours, distances) if return_distances else probabilities

    return AffinitiesToKept(unit_rows, kept)


def place_new_points(
    embeddings: np.ndarray,
    kept_map: np.ndarray,
    kept: np.ndarray,
    *,
    perplexity: float | None = None,
    seed: int = 0,
    pca_dims: int = PCA_DIMS,
    with_kin: bool = False,
    overwrite: bool = False,
):
    """The map of all rows (t-SNE units) with the ``kept`` rows fixed at ``kept_map``.

    The other rows are new photos: openTSNE optimises them against the fixed
    map of the kept ones (``TSNEEmbedding.transform``: each starts where its
    nearest kept photo is and moves under its neighbours' attraction), so the
    map the user knows stays as it was and the new photos join their kin.

    ``with_kin``: (map, kin), kin the row of each new photo's nearest kept row in the
    embedding (cosine) and -1 for a kept row, which assign would otherwise search for again
    (a seventh of a 10% update's time at 10,000 photos); None where the placing searched
    openTSNE's approximate index instead of every kept row. ``overwrite``: the embeddings
    may be scaled in place (the caller's own array, not used after), which saves a copy of
    N x D: an update's peak memory (docs/benchmarks.md).
    """
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN

    kept = np.asarray(kept, dtype=bool)
    points = np.empty((len(embeddings), 2), dtype=np.float64)
    points[kept] = kept_map
    if kept.all():
        return (points, np.full(len(points), -1, dtype=np.int64)) if with_kin else points
    n_kept, n_new = int(kept.sum()), int((~kept).sum())
    if n_kept * n_new <= EXACT_PLACING_PAIRS:
        unit = normalise(np.asarray(embeddings, dtype=np.float32), copy=not overwrite)
        affinities, new_rows = _affinities_to_kept(unit, kept), unit[~kept]
    else:
        settings = tsne_settings(n_kept, perplexity, pca_dims)
        perplexity = _checked_perplexity(settings, n_kept)
        x = _prepared(embeddings, pca_dims)
        affinities = PerplexityBasedNN(
            x[kept], perplexity=perplexity, method=settings["neighbors"], n_jobs=TSNE_JOBS, random_state=seed
        )
        new_rows = x[~kept]
    reference = TSNEEmbedding(
        np.ascontiguousarray(kept_map), affinities, n_jobs=tsne_jobs(len(points)), random_state=seed,
        negative_gradient_method="fft",  # for the new points alone, 8 times as fast as BH at 9,000
    )  # fmt: skip
    # openTSNE centres its copy of the map on the middle of its extent when it first lays its
    # interpolation grid, which it does after the new points start at their neighbours' median:
    # they then started off by that shift and ended about as far from their kin. Laid here
    # first, the grid's frame is the one they start and move in, and they are moved back by the
    # shift into the staying photos' frame, which keeps their places.
    middle = (reference.max(axis=0) + reference.min(axis=0)) / 2
    reference.prepare_interpolation_grid()
    points[~kept] = np.asarray(
        reference.transform(new_rows, k=PLACING_START_NEIGHBOURS, n_iter=PLACING_ITERATIONS), dtype=np.float64
    ) + np.asarray(middle)
    kin = None
    if getattr(affinities, "nearest", None) is not None:  # the exact search found them
        kin = np.full(len(points), -1, dtype=np.int64)
        kin[~kept] = affinities.nearest
    return (points, kin) if with_kin else points


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


#: A map keeps its kept photos fixed only while this many stay; fewer are no map to keep.
MIN_KEPT_POINTS = 2 * MIN_TSNE_POINTS


def layout_id(points: np.ndarray) -> str:
    """The name of a fresh layout, carried by every update of it (assign follows it)."""
    return hashlib.blake2b(np.ascontiguousarray(points).tobytes(), digest_size=8).hexdigest()


class ReduceStage(Stage):
    """``embeddings.npy`` -> ``coords.npy``: the t-SNE map, updated in place when photos change."""

    name = "reduce"
    options_type = ReduceOptions
    reads = (EMBEDDINGS,)
    writes = (COORDS,)  # and REDUCE_STATE: bookkeeping for the next update, not an artifact to guard

    def may_skip(self, options: ReduceOptions) -> bool:
        return not options.relayout  # a relayout is asked for: it runs even when fresh

    def plan_update(self, workdir: Workdir, options: ReduceOptions, keys: np.ndarray, context: Context):
        """The earlier map's state and each row's earlier row (-1: new), or why to start afresh."""
        if options.relayout:
            return None, "asked (--relayout)"
        loaded = load_state(workdir.file(REDUCE_STATE))
        if loaded is None:
            return None, "no earlier map"
        meta, arrays = loaded
        earlier = {name: meta.get(name) for name in ("seed", "perplexity", "pca_dims")}
        if earlier != {"seed": options.seed, "perplexity": options.perplexity, "pca_dims": options.pca_dims}:
            return None, "the map's options changed"
        old_keys, old_map = arrays.get("keys"), arrays.get("map")
        if old_keys is None or old_map is None or old_map.shape != (len(old_keys), 2):
            return None, "the earlier map's state is damaged"
        earlier_row = match_rows(old_keys, keys)
        kept = int((earlier_row >= 0).sum())
        if kept < MIN_KEPT_POINTS or (options.perplexity or 0) * 3 >= kept:
            return None, f"only {kept} of the photos were on the earlier map"
        new_share = 1.0 - kept / len(keys)
        if new_share > options.relayout_above:
            context.on_message(
                f"reduce: {new_share:.0%} of the photos are new, above --relayout-above "
                f"{options.relayout_above:g}: laying the map out afresh"
            )
            return None, f"{new_share:.0%} of the photos are new"
        return (meta, old_map, earlier_row), None

    def compute(self, workdir: Workdir, options: ReduceOptions, context: Context, prepared) -> dict:
        embeddings = workdir.load_embeddings()
        settings = tsne_settings(len(embeddings), options.perplexity, options.pca_dims)
        if len(embeddings) >= MIN_TSNE_POINTS and not 0 < settings["perplexity"] < len(embeddings) / 3:
            raise OptionMismatch(
                "perplexity",
                f"{settings['perplexity']:g} is out of range for {len(embeddings)} images: "
                f"give a value below {len(embeddings) / 3:.1f}, or leave it out",
            )
        keys = row_keys(embeddings)
        update, why_fresh = self.plan_update(workdir, options, keys, context)
        tsne_options = {"perplexity": options.perplexity, "seed": options.seed, "pca_dims": options.pca_dims}
        kin_state = {}
        if update is None:
            points, kl_divergence = tsne_map(
                embeddings, **tsne_options, on_progress=lambda done: context.on_progress("reduce", done)
            )
            meta = {**tsne_options, "layout": layout_id(points), "updates": 0}
            change = {"mode": "fresh", "why": why_fresh}
        else:
            meta, old_map, earlier_row = update
            kept = earlier_row >= 0
            # The stage's own array, hashed above and not read after: scaled in place.
            points, kin = place_new_points(
                embeddings, old_map[earlier_row[kept]], kept, **tsne_options, with_kin=True, overwrite=True
            )
            if kin is not None:
                kin_state["kin"] = kin
            kl_divergence = None
            meta = {**meta, "updates": int(meta.get("updates", 0)) + 1}
            change = {"mode": "update", "kept": int(kept.sum()), "new": int((~kept).sum()),
                      "removed": len(old_map) - int(kept.sum())}  # fmt: skip
        # The state first: killed before coords.npy, a rerun finds every photo on this map.
        # With each new photo's kin where the placing found it (``place_new_points``).
        # With the hash of the vectors the keys are of, so that assign, reading the same file,
        # takes the keys from here instead of hashing every row again (a twentieth of an update).
        state_meta = {**meta, "embeddings": file_hash(workdir.require(EMBEDDINGS))}
        save_state(workdir.file(REDUCE_STATE), state_meta, keys=keys, map=points, **kin_state)
        coords = to_unit_square(points)
        save_npy(workdir.file(COORDS), coords)
        return {
            "points": len(coords),
            "dimension": int(embeddings.shape[1]),
            "perplexity": settings.pop("perplexity"),
            "kl_divergence": kl_divergence,
            "method": "pca" if len(coords) < MIN_TSNE_POINTS else "tsne",
            "layout": meta["layout"],
            "updates": meta["updates"],
            **change,
            "tsne": settings,
            "opentsne_version": _opentsne_version(),
        }

    def describe(self, summary: dict) -> str:
        kl = summary["kl_divergence"]
        kl = f", KL divergence {kl:.3f}" if kl is not None else ""
        if summary.get("mode") == "update":
            return (
                f"reduce: map updated, {summary['kept']} photos kept their place, {summary['new']} new "
                f"placed among them, {summary['removed']} removed"
            )
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
