"""The command line: parse options, call a stage's ``run``, report.

stdout carries data (output paths, JSON with ``--json``); stderr carries
progress bars and messages. Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from gridtsne import __version__, assign, embed, pipeline, reduce, render
from gridtsne.images import DEFAULT_MAX_PIXELS
from gridtsne.workdir import StageError, Workdir, default_workdir

MAX_SKIPS_LISTED = 10


def _with(*options):
    """One decorator that applies several click options, in the order listed."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def workdir_option(command):
    return click.option(
        "-w", "--workdir", type=click.Path(file_okay=False), default=None,
        help="Work directory for the artifacts. Default: $GRIDTSNE_WORKDIR, else ./gridtsne-work "
             "(for `all`: OUT's name with .gridtsne, beside it).",
    )(command)


output_options = _with(
    click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
)

embed_options = _with(
        click.option("--model", default=None, metavar="PATH.onnx",
                     help="An ONNX image model to use instead of the shipped EfficientNet-Lite0."),
        click.option("--preprocess", type=click.Path(dir_okay=False), default=None, metavar="PATH.json",
                     help="Preprocessing of --model (resize_short_side, crop_size, mean, std). "
                          "Default: the .json file beside the model."),
        click.option("--batch-size", type=click.IntRange(1), default=embed.DEFAULT_BATCH_SIZE,
                     show_default=True, help="Images per model call."),
        click.option("--threads", type=click.IntRange(0), default=0,
                     help="onnxruntime threads (0: onnxruntime decides)."),
        click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
                     help="Refuse images whose header claims more pixels (decompression bombs)."),
)

reduce_options = _with(
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Random seed: the same seed and inputs give the same grid."),
    click.option("--perplexity", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="t-SNE perplexity. Default: 30, or (N-1)/3 for fewer than 91 images."),
    click.option("--pca-dims", type=click.IntRange(2), default=reduce.PCA_DIMS, show_default=True,
                 help="Principal components kept before t-SNE."),
)


def _grid(ctx, param, value):
    if value is None or value == "auto":
        return None
    try:
        return assign.parse_grid(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _aspect(ctx, param, value):
    if value is None:
        return None
    try:
        return assign.parse_aspect(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


assign_options = _with(
    click.option("--grid", callback=_grid, default=None, metavar="ROWSxCOLS",
                 help="Grid shape, e.g. 12x16. Default: the smallest near-square grid."),
    click.option("--aspect", callback=_aspect, default=None, metavar="W:H",
                 help="Grid shape, e.g. 16:9: the smallest grid of about that width:height in cells "
                      "that holds every image. Ignored with --grid."),
    click.option("--solver", type=click.Choice(assign.SOLVER_CHOICES), default="auto", show_default=True,
                 help=f"exact: optimal, cubic time; blocks: scalable, near-optimal; auto: exact up to "
                      f"{assign.EXACT_MAX_CELLS} cells."),
    click.option("--subset", is_flag=True,
                 help="With more images than cells, keep a representative subset instead of failing; "
                      "the left-out images are listed in assign.json."),
    click.option("--refine/--no-refine", default=True, show_default=True,
                 help="Sort the grid locally against the embeddings after the assignment."),
)


def _output(ctx, param, value):
    try:
        render.output_format(value)
    except StageError as error:
        raise click.BadParameter(str(error)) from None
    return value


output_argument = click.argument("output", type=click.Path(dir_okay=False), callback=_output)


def _colour(ctx, param, value):
    try:
        render.parse_colour(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


render_options = _with(
        click.option("--tile", "tile_px", type=click.IntRange(4), default=render.DEFAULT_TILE_PX,
                     show_default=True, help="Tile size in pixels."),
        click.option("--background", default="black", show_default=True, callback=_colour,
                     help="Colour of empty cells and margins: a name or #RRGGBB."),
        click.option("--fit", type=click.Choice(render.FITS), default="crop", show_default=True,
                     help="crop: fill the tile, cutting the edges; fit: whole photo, with margins."),
        click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
                     help="JPEG/WebP quality."),
)


def jobs_option(command):
    return click.option("-j", "--jobs", type=click.IntRange(1), default=None,
                        help="Threads decoding images. Default: up to 4.")(command)


def reports_errors(command):
    """User-fixable errors become one message and exit 1; Ctrl-C exits 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StageError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("gridtsne: interrupted; finished stages are kept, rerun to continue", err=True)
            sys.exit(130)

    return wrapper


def _report(summary: dict, quiet: bool) -> None:
    """One line per stage on stderr; skipped files listed (the first few)."""
    if quiet:
        return
    stage = summary["stage"]
    if not summary["ran"]:
        click.echo(f"{stage}: fresh, skipped", err=True)
        return
    seconds = f"[{summary['seconds']:.1f} s]"
    if stage == "embed":
        skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
        if summary["skipped"]:
            skipped += " (" + ", ".join(f"{n} {why}" for why, n in summary["skipped_by_reason"].items()) + ")"
        reused = f" ({summary['reused']} from cache)" if summary["reused"] else ""
        click.echo(f"embed: {summary['embedded']} images embedded{reused}{skipped} {seconds}", err=True)
    elif stage == "reduce":
        kl = summary["kl_divergence"]
        kl = f", KL divergence {kl:.3f}" if kl is not None else ""
        click.echo(f"reduce: {summary['points']} points, perplexity {summary['perplexity']:.3g}{kl} "
                   f"{seconds}", err=True)
    elif stage == "assign":
        left_out = f", {len(summary['left_out'])} left out" if summary.get("left_out") else ""
        click.echo(f"assign: {summary['placed']} images on a {summary['rows']}x{summary['cols']} grid"
                   f"{left_out}, {summary['empty_cells']} empty cells, solver {summary['solver']}, "
                   f"{_quality_text(summary['quality'])} {seconds}", err=True)
    elif stage == "render":
        missing = f", {len(summary['unreadable'])} unreadable" if summary["unreadable"] else ""
        click.echo(f"render: {summary['output']} ({summary['width']}x{summary['height']} px, "
                   f"{summary['tiles']} tiles{missing}) {seconds}", err=True)
        for entry in summary["unreadable"]:
            click.echo(f"  unreadable now: {entry['path']}: {entry['reason']}", err=True)


def _quality_text(quality: dict) -> str:
    return (f"DPQ_{quality['dpq_p']} {quality['dpq']:.3f}, neighbourhood preservation "
            f"(k={quality['k']}) {quality['neighbourhood_preservation']:.3f}")


def _list_skipped(workdir: Workdir, quiet: bool) -> None:
    if quiet:
        return
    skipped = workdir.load_images()["skipped"]
    for entry in skipped[:MAX_SKIPS_LISTED]:
        click.echo(f"  skipped {entry['path']}: {entry['reason']}", err=True)
    if len(skipped) > MAX_SKIPS_LISTED:
        click.echo(f"  ... and {len(skipped) - MAX_SKIPS_LISTED} more, listed in "
                   f"{workdir.file('images.json')}", err=True)


def _message(quiet: bool):
    """A callback that prints a stage's message on stderr, unless quiet."""
    return (lambda text: None) if quiet else (lambda text: click.echo(text, err=True))


def _emit(data, as_json: bool, plain: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif plain is not None:
        click.echo(plain)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gridtsne")
def main():
    """Lay a photo collection out on a grid so that similar photos are neighbours.

    Four stages share a work directory of plain .npy/.json files, so each can
    be rerun alone: embed (CNN features), reduce (t-SNE to 2-D), assign (snap to
    a grid), render (the mosaic). `all` runs the ones that are not fresh.

    \b
    Example:
        gridtsne all ./photos mosaic.jpg
    """


@main.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@workdir_option
@embed_options
@jobs_option
@output_options
@reports_errors
def embed_command(paths, workdir, model, preprocess, batch_size, threads, max_pixels, jobs, quiet, as_json):
    """Compute a feature vector for every image under PATHS (files or folders).

    Writes images.json, embeddings.npy and embed.json. Files that are not
    readable images are skipped and listed with a reason in images.json.

    \b
    Example:
        gridtsne embed ./photos -w work
    """
    wd = Workdir(workdir or default_workdir())
    with wd.lock():
        loaded = embed.load_model(model, preprocess, threads)
        summary = embed.run(wd, list(paths), model=loaded, batch_size=batch_size, jobs=jobs,
                            max_pixels=max_pixels, progress=not quiet)
        _report(summary, quiet)
        _list_skipped(wd, quiet)
    _emit(summary, as_json)


@main.command("reduce")
@workdir_option
@reduce_options
@click.option("--embeddings", "vectors", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="VECTORS.npy",
              help="Use these N x D vectors (CLIP, ...) instead of embed's: they are copied into the "
                   "work directory as embeddings.npy.")
@click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PATHS.txt",
              help="With --embeddings: the image of each row, one path a line, for render.")
@output_options
@reports_errors
def reduce_command(workdir, seed, perplexity, pca_dims, vectors, paths_file, quiet, as_json):
    """Map the embeddings to 2-D with t-SNE (coords.npy, reduce.json).

    \b
    Example:
        gridtsne reduce -w work --seed 1
        gridtsne reduce -w work --embeddings clip.npy --paths clip_paths.txt
    """
    if paths_file and not vectors:
        raise click.UsageError("--paths goes with --embeddings")
    wd = Workdir(workdir or default_workdir())
    with wd.lock():
        if vectors:
            reduce.import_embeddings(wd, vectors, paths_file)
        summary = reduce.run(wd, seed=seed, perplexity=perplexity, pca_dims=pca_dims)
    _report(summary, quiet)
    _emit(summary, as_json)


@main.command("assign")
@workdir_option
@assign_options
@output_options
@reports_errors
def assign_command(workdir, grid, aspect, solver, subset, refine, quiet, as_json):
    """Snap the 2-D map onto grid cells and measure the layout (grid.npy, assign.json).

    \b
    Example:
        gridtsne assign -w work --grid 10x12
        gridtsne assign -w work --aspect 16:9
        gridtsne assign -w work --grid 20x20 --subset     # keep 400 representative images
    """
    wd = Workdir(workdir or default_workdir())
    with wd.lock():
        summary = assign.run(wd, grid=grid, aspect=aspect, solver=solver, subset=subset, refine=refine,
                             on_message=_message(quiet))
    _report(summary, quiet)
    _emit(summary, as_json)


@main.command("render")
@output_argument
@workdir_option
@render_options
@jobs_option
@output_options
@reports_errors
def render_command(output, workdir, tile_px, background, fit, quality, jobs, quiet, as_json):
    """Draw the mosaic to OUTPUT (.jpg, .png or .webp) and print its path.

    \b
    Example:
        gridtsne render mosaic.jpg -w work --tile 96 --background white
    """
    wd = Workdir(workdir or default_workdir())
    with wd.lock():
        summary = render.run(wd, output, tile_px=tile_px, background=background, fit=fit,
                             quality=quality, jobs=jobs, progress=not quiet)
    _report(summary, quiet)
    _emit(summary, as_json, plain=summary["output"])


@main.command("all")
@click.argument("photos", nargs=-1, required=True, type=click.Path())
@output_argument
@workdir_option
@embed_options
@reduce_options
@assign_options
@render_options
@jobs_option
@click.option("--force", is_flag=True, help="Rerun every stage, fresh or not.")
@output_options
@reports_errors
def all_command(photos, output, workdir, model, preprocess, batch_size, threads, max_pixels, seed,
                perplexity, pca_dims, grid, aspect, solver, subset, refine, tile_px, background, fit,
                quality, jobs, force, quiet, as_json):
    """Run every stage from PHOTOS to the mosaic OUTPUT, skipping fresh ones.

    A stage is fresh when its inputs and options are unchanged since it last
    ran, so a rerun only redoes what changed, as Make would. The work
    directory defaults to OUTPUT's name with .gridtsne, beside it.

    \b
    Example:
        gridtsne all ./photos mosaic.jpg
        gridtsne all ./photos mosaic.jpg --seed 3     # reruns reduce, assign, render
    """
    wd = Workdir(workdir or default_workdir(output))

    def stage_done(summary):
        _report(summary, quiet)
        if summary["stage"] == "embed" and summary["ran"]:
            _list_skipped(wd, quiet)

    with wd.lock():
        loaded = embed.load_model(model, preprocess, threads)
        summaries = pipeline.run_all(
            wd, list(photos), output, model=loaded, seed=seed, perplexity=perplexity, pca_dims=pca_dims,
            grid=grid, aspect=aspect, solver=solver, subset=subset, refine=refine, on_message=_message(quiet),
            tile_px=tile_px, background=background, fit=fit, quality=quality, jobs=jobs,
            progress=not quiet, force=force, on_stage_done=stage_done,
            batch_size=batch_size, max_pixels=max_pixels,
        )
    _emit(summaries, as_json, plain=summaries[-1]["output"])


@main.command("status")
@workdir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@reports_errors
def status_command(workdir, as_json):
    """Show which stages are done, and whether each is fresh or stale and why.

    Exits 0 whatever the state; use --json for scripts.

    \b
    Example:
        gridtsne status -w work --json | jq '.stages[] | select(.fresh | not)'
    """
    wd = Workdir(workdir or default_workdir())
    report = pipeline.stage_status(wd)
    if as_json:
        click.echo(json.dumps({"workdir": str(wd.path), "stages": report}, indent=2))
        return
    click.echo(f"work directory: {wd.path}")
    for entry in report:
        state = "fresh" if entry["fresh"] else ("stale" if entry["done"] else "not run")
        why = f" ({entry['reason']})" if entry["done"] and not entry["fresh"] else ""
        click.echo(f"  {entry['stage']:<7} {state}{why}")
        if entry["stage"] == "assign" and entry["done"] and entry["results"].get("quality"):
            click.echo(f"          {_quality_text(entry['results']['quality'])}")
