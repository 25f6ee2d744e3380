"""gridtsne: lay a photo collection out on a grid so that similar photos are neighbours.

The Python API, for notebooks and programs (the command line is a thin shell over it):

- ``mosaic(photos, output, ...)``: photos to a picture or web page, as ``gridtsne all``;
- ``layout(vectors, ...)``: N x D vectors to a grid cell each, in memory, no files;
- each stage alone: ``embed.run(Workdir(...), EmbedOptions(...))``, and likewise
  ``reduce``, ``assign`` and ``render``, with their options dataclasses.

Errors a user can fix are ``GridtsneError``s (``OptionError`` names the option).
"""

from __future__ import annotations

import os as _os

# Before numpy or scipy load OpenBLAS, which reads it then: its idle threads sleep after about
# a millisecond (2^20 cycles) instead of spinning for 0.1 s (2^28). numpy and scipy each
# bring an OpenBLAS of their own, and on two cores one's spinning thread slowed the other's
# next call (scipy's eigh after numpy's product: 0.10 s against 0.055 s) and openTSNE's
# threads: a layout of 1,024 photos took 1.0-1.2 s against 1.2-1.3 s, the same grid
# (docs/benchmarks.md). A value set by the user is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

__version__ = "0.2.0.dev0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from gridtsne.errors import GridtsneError, OptionError, StageError  # noqa: E402
from gridtsne.options import (  # noqa: E402
    AssignOptions,
    EmbedOptions,
    PipelineOptions,
    ReduceOptions,
    RenderOptions,
)
from gridtsne.workdir import Workdir  # noqa: E402

if TYPE_CHECKING:
    import os

    import numpy as np

__all__ = [
    "AssignOptions",
    "EmbedOptions",
    "GridtsneError",
    "OptionError",
    "PipelineOptions",
    "ReduceOptions",
    "RenderOptions",
    "StageError",
    "Workdir",
    "layout",
    "mosaic",
]


def mosaic(
    photos: list[str | os.PathLike],
    output: str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    **options: Any,
) -> list[dict]:
    """Lay ``photos`` (files and folders) out on a grid and render it to ``output``, as
    ``gridtsne all`` does: stages that are fresh in ``workdir`` are skipped.

    ``options`` are those of the command line by name (``seed=3``, ``grid="10x12"``,
    ``tile=96``); a web page takes ``labels``, a CSV file or a list of ``(path, label)``
    pairs, to colour its photos by. Returns each stage's summary. The work directory defaults to
    ``output``'s name with ``.gridtsne``.
    """
    from gridtsne import pipeline
    from gridtsne.stage import Context
    from gridtsne.workdir import default_workdir

    settings = PipelineOptions.from_flat({**options, "paths": list(photos), "output": output})
    work = Workdir(workdir if workdir is not None else default_workdir(output))
    pipeline.check_start(work, settings, named=workdir is not None)
    with work.lock():
        return pipeline.run_all(work, settings, Context(progress=progress), force=force)


def layout(
    vectors: np.ndarray,
    *,
    seed: int = ReduceOptions.default("seed"),
    perplexity: float | None = None,
    grid: tuple[int, int] | str | None = None,
    aspect: tuple[float, float] | str | None = None,
    solver: str = AssignOptions.default("solver"),
    refine: bool = AssignOptions.default("refine"),
) -> tuple[np.ndarray, int, int]:
    """The grid cell (row-major, -1 for none) of each of N vectors, and the grid's rows and cols.

    The reduce and assign stages on arrays, with their defaults: the same
    vectors and seed give the same grid as ``gridtsne all`` on the same photos.
    """
    import numpy as np

    from gridtsne import assign, reduce

    reduce_options = ReduceOptions(seed=seed, perplexity=perplexity)
    assign_options = AssignOptions(grid=grid, aspect=aspect, solver=solver, refine=refine)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0 or not np.isfinite(vectors).all():
        raise ValueError(f"vectors must be a non-empty N x D array of finite numbers, not {vectors.shape}")
    coords, _ = reduce.tsne_2d(vectors, perplexity=reduce_options.perplexity, seed=reduce_options.seed,
                               pca_dims=reduce_options.pca_dims)  # fmt: skip
    rows, cols = assign_options.grid or assign.grid_shape(len(coords), assign_options.aspect or (1.0, 1.0))
    cells, _ = assign.layout(coords, vectors, rows, cols, solver=assign_options.solver,
                             refine_grid=assign_options.refine)  # fmt: skip
    return cells, rows, cols
