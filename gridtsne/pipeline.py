"""The stages in order: ``all`` (run what is stale, skip what is fresh) and ``status``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gridtsne import assign, embed, photo_model, reduce, render
from gridtsne.errors import GridtsneError, StageError
from gridtsne.options import PipelineOptions
from gridtsne.stage import Context, Stage
from gridtsne.workdir import Workdir

#: Every stage, in the order data flows through them.
STAGES: tuple[Stage, ...] = (embed.STAGE, reduce.STAGE, assign.STAGE, render.STAGE)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def stage_status(workdir: Workdir) -> list[dict]:
    """Each stage's state, judged against the options it was last run with.

    ``done``: false when it never ran; ``fresh``: true when nothing it read or
    wrote has changed since; ``reason``: why it is stale.
    """
    report = []
    for stage in STAGES:
        manifest = workdir.read_manifest(stage.name)
        entry = {"stage": stage.name, "done": manifest is not None, "fresh": False, "reason": "never run"}
        if manifest is None and workdir.manifest_path(stage.name).exists():
            entry["reason"] = "its manifest is damaged: it will run again"
        if manifest is not None:
            entry["finished"] = manifest.get("finished")
            entry["results"] = manifest["results"]
            try:
                reason = stage.staleness(workdir)
            except GridtsneError as error:
                reason = str(error)
            entry["fresh"], entry["reason"] = reason is None, reason
        report.append(entry)
    # A stage is only as fresh as the stages before it.
    for before, after in zip(report, report[1:], strict=False):
        if not before["fresh"] and after["fresh"]:
            after["fresh"], after["reason"] = False, f"waits for {before['stage']}"
    return report


def check_start(workdir: Workdir, options: PipelineOptions, *, named: bool) -> None:
    """What ``all`` refuses before it creates anything: an output that is a photo or a file
    gridtsne did not write, and (unless the user ``named`` it) a work directory that would
    land inside a folder of photos."""
    render.STAGE.check_destination(workdir, options.render, options.embed.paths)
    if named:
        return
    where = workdir.path.absolute()
    for given in options.embed.paths:
        folder = Path(given).absolute()
        if folder.is_dir() and where.is_relative_to(folder):
            raise StageError(
                f"the work directory would go into the photo folder {folder} (as {where.name}): "
                "name one elsewhere with -w DIR"
            )
        if folder.is_file() and where.parent == folder.parent:
            raise StageError(
                f"the work directory would go among the photos in {folder.parent} (as {where.name}): "
                "name one elsewhere with -w DIR"
            )


def run_all(
    workdir: Workdir,
    options: PipelineOptions,
    context: Context | None = None,
    *,
    force: bool = False,
    on_stage_done: Callable[[dict], None] = lambda summary: None,
) -> list[dict]:
    """Run every stage that is not fresh, in order, as Make would; their summaries."""
    context = context or Context()
    # The picture (or page) may be written into the photo folder: never embed it.
    written = render.paths_written(options.render.output, options.render.format)
    embed_options = options.embed.replace(exclude=(*options.embed.exclude, *map(str, written)))
    summaries = []
    for stage, stage_options in zip(
        STAGES, (embed_options, options.reduce, options.assign, options.render), strict=True
    ):
        summaries.append(stage.run(workdir, stage_options, context, skip_if_fresh=not force))
        on_stage_done(summaries[-1])
        if stage is embed.STAGE:
            photo_model.release_models()  # the later stages need memory more than the model
    return summaries
