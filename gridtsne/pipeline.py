"""The stages in order: ``all`` (run what is stale, skip what is fresh) and ``status``."""

from __future__ import annotations

from gridtsne import assign, embed, reduce, render
from gridtsne.workdir import StageError, Workdir

STAGES = ("embed", "reduce", "assign", "render")


def stage_status(workdir: Workdir) -> list[dict]:
    """Each stage's state, judged against the parameters it was last run with.

    ``done``: false when it never ran; ``fresh``: true when nothing it read or
    wrote has changed since; ``reason``: why it is stale.
    """
    report = []
    modules = {"embed": embed, "reduce": reduce, "assign": assign, "render": render}
    for stage in STAGES:
        manifest = workdir.read_manifest(stage)
        entry = {"stage": stage, "done": manifest is not None, "fresh": False, "reason": "never run"}
        if manifest is not None:
            entry["finished"] = manifest["finished"]
            entry["results"] = manifest["results"]
            try:
                module = modules[stage]
                inputs = (
                    module.current_inputs(manifest["params"])
                    if stage == "embed"
                    else module.current_inputs(workdir)
                )
                reason = workdir.staleness(stage, manifest["params"], inputs)
            except StageError as error:
                reason = str(error)
            entry["fresh"], entry["reason"] = reason is None, reason
        report.append(entry)
    # A stage is only as fresh as the stages before it.
    for before, after in zip(report, report[1:], strict=False):
        if not before["fresh"] and after["fresh"]:
            after["fresh"], after["reason"] = False, f"waits for {before['stage']}"
    return report


def run_all(
    workdir: Workdir,
    paths: list[str],
    output: str,
    *,
    model: embed.Model,
    embed_settings: dict | None = None,
    seed: int = 0,
    perplexity: float | None = None,
    pca_dims: int = reduce.PCA_DIMS,
    grid: tuple[int, int] | None = None,
    aspect: tuple[float, float] | None = None,
    solver: str = "auto",
    subset: bool = False,
    refine: bool = True,
    tile_px: int = render.DEFAULT_TILE_PX,
    background: str = "black",
    fit: str = "crop",
    gap_px: int = 0,
    quality: int = 90,
    image_format: str = "auto",
    jobs: int | None = None,
    progress: bool = True,
    force: bool = False,
    on_stage_done=lambda summary: None,
    stdout=None,
    on_message=lambda text: None,
) -> list[dict]:
    """Run every stage that is not fresh, in order, as Make would."""
    skip = not force
    summaries = []
    for step in (
        lambda: embed.run(
            workdir,
            paths,
            model=model,
            exclude=render.paths_written(output, image_format),
            jobs=jobs,
            progress=progress,
            skip_if_fresh=skip,
            **(embed_settings or {}),
        ),
        lambda: reduce.run(workdir, seed=seed, perplexity=perplexity, pca_dims=pca_dims, skip_if_fresh=skip),
        lambda: assign.run(
            workdir,
            grid=grid,
            aspect=aspect,
            solver=solver,
            subset=subset,
            refine=refine,
            skip_if_fresh=skip,
            on_message=on_message,
        ),
        lambda: render.run(
            workdir,
            output,
            tile_px=tile_px,
            background=background,
            fit=fit,
            gap_px=gap_px,
            quality=quality,
            image_format=image_format,
            jobs=jobs,
            progress=progress,
            skip_if_fresh=skip,
            stdout=stdout,
        ),
    ):
        summaries.append(step())
        on_stage_done(summaries[-1])
    return summaries
