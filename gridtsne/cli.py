"""The command line: parse options, call a stage's ``run``, report.

stdout carries data (output paths, JSON with ``--json``); stderr carries
progress bars and messages. Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

import click

from gridtsne import __version__, assign, embed, export, pipeline, reduce, render
from gridtsne.images import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS
from gridtsne.workdir import ENV_VAR, Interrupted, StageError, Workdir, default_workdir

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
        "-w",
        "--workdir",
        type=click.Path(file_okay=False),
        default=None,
        help="Work directory for the artifacts. Default: $GRIDTSNE_WORKDIR, else ./gridtsne-work "
        "(for `all`: OUT's name with .gridtsne, beside it).",
    )(command)


output_options = _with(
    click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
)


def _extensions(ctx, param, value):
    if value is None:
        return DEFAULT_EXTENSIONS
    return tuple(f".{ext.strip().lstrip('.').lower()}" for ext in value.split(",") if ext.strip())


embed_options = _with(
    click.option(
        "--ext",
        "extensions",
        callback=_extensions,
        default=None,
        metavar="LIST",
        help="Extensions a folder walk looks at, comma-separated (e.g. jpg,png). "
        "Default: " + ",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS) + ".",
    ),
    click.option("--hidden", is_flag=True, help="Also look inside hidden files and folders."),
    click.option("-0", "--null", is_flag=True, help="Paths read from stdin (PATH '-') are NUL-separated."),
    click.option(
        "--model",
        default=None,
        metavar="PATH.onnx",
        help="An ONNX image model to use instead of the shipped EfficientNet-Lite0.",
    ),
    click.option(
        "--preprocess",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="PATH.json",
        help="Preprocessing of --model (resize_short_side, crop_size, mean, std). "
        "Default: the .json file beside the model.",
    ),
    click.option(
        "--provider",
        default="cpu",
        show_default=True,
        help="onnxruntime execution provider: cpu, cuda (needs onnxruntime-gpu), ...",
    ),
    click.option(
        "--threads",
        type=click.IntRange(0),
        default=embed.DEFAULT_THREADS,
        show_default=True,
        help="onnxruntime threads (0: onnxruntime decides).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=embed.DEFAULT_BATCH_SIZE,
        show_default=True,
        help="Images per model call.",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse, unread, images whose header claims more pixels (decompression bombs).",
    ),
    click.option(
        "--cache",
        "cache_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Embedding cache folder, to share between work directories. "
        "Default: $GRIDTSNE_CACHE, else WORK/cache.",
    ),
)


def _read_paths(paths: tuple[str, ...], null: bool) -> list[str]:
    """PATHS, with '-' replaced by the paths on stdin (one a line, or NUL-separated with -0)."""
    if "-" not in paths:
        return list(paths)
    data = sys.stdin.buffer.read()
    listed = [os.fsdecode(p) for p in (data.split(b"\0") if null else data.splitlines()) if p.strip()]
    return [path for given in paths for path in (listed if given == "-" else [given])]


def _start_embed(paths, settings: dict) -> tuple[list[str], embed.Model, dict]:
    """Split embed's options into the model to load and the keyword arguments of embed.run."""
    settings = dict(settings)
    model = embed.load_model(
        settings.pop("model"), settings.pop("preprocess"), settings.pop("threads"), settings.pop("provider")
    )
    return _read_paths(paths, settings.pop("null")), model, settings


reduce_options = _with(
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Random seed: the same seed and inputs give the same grid.",
    ),
    click.option(
        "--perplexity",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="t-SNE perplexity. Default: 30, or (N-1)/3 for fewer than 91 images.",
    ),
    click.option(
        "--pca-dims",
        type=click.IntRange(2),
        default=reduce.PCA_DIMS,
        show_default=True,
        help="Principal components kept before t-SNE.",
    ),
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
    click.option(
        "--grid",
        callback=_grid,
        default=None,
        metavar="ROWSxCOLS",
        help="Grid shape, e.g. 12x16. Default: the smallest near-square grid.",
    ),
    click.option(
        "--aspect",
        callback=_aspect,
        default=None,
        metavar="W:H",
        help="Grid shape, e.g. 16:9: the smallest grid of about that width:height in cells "
        "that holds every image. Ignored with --grid.",
    ),
    click.option(
        "--solver",
        type=click.Choice(assign.SOLVER_CHOICES),
        default="auto",
        show_default=True,
        help=f"exact: optimal, cubic time; blocks: scalable, near-optimal; auto: exact up to "
        f"{assign.EXACT_MAX_CELLS} cells.",
    ),
    click.option(
        "--subset",
        is_flag=True,
        help="With more images than cells, keep a representative subset instead of failing; "
        "the left-out images are listed in assign.json.",
    ),
    click.option(
        "--refine/--no-refine",
        default=True,
        show_default=True,
        help="Sort the grid locally against the embeddings after the assignment.",
    ),
)


# OUTPUT is checked with --format (in _check_output): with it, any name will do.
output_argument = click.argument("output", type=click.Path(dir_okay=False, allow_dash=True))


def _colour(ctx, param, value):
    try:
        render.parse_colour(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


render_options = _with(
    click.option(
        "--tile",
        "tile_px",
        type=click.IntRange(4),
        default=render.DEFAULT_TILE_PX,
        show_default=True,
        help="Tile size in pixels (the web page's full zoom).",
    ),
    click.option(
        "--fit",
        type=click.Choice(render.FITS),
        default="crop",
        show_default=True,
        help="crop: fill the tile, cutting the edges; pad: whole photo on the background; "
        "stretch: whole photo squeezed to a square.",
    ),
    click.option(
        "--gap",
        "gap_px",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Pixels of background between tiles.",
    ),
    click.option(
        "--background",
        default="black",
        show_default=True,
        callback=_colour,
        help="Colour of empty cells, gaps and margins: a name or #RRGGBB.",
    ),
    click.option(
        "--quality",
        type=click.IntRange(1, 100),
        default=90,
        show_default=True,
        help="JPEG/WebP quality (also of the web page's tiles).",
    ),
    click.option(
        "--format",
        "image_format",
        type=click.Choice(render.FORMATS),
        default="auto",
        show_default=True,
        help="Output format; auto: from OUTPUT's extension. Needed when OUTPUT is - (stdout).",
    ),
)


def _check_output(output: str, image_format: str, as_json: bool) -> None:
    """Usage errors of OUTPUT with --format and --json: exit 2 before any work."""
    try:
        render.format_of(output, image_format)
    except StageError as error:
        raise click.UsageError(str(error)) from None
    if output == render.STDOUT and as_json:
        raise click.UsageError("--json cannot share stdout with the picture: leave it out with -")


def jobs_option(command):
    return click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1),
        default=None,
        help="Threads decoding images. Default: up to 4.",
    )(command)


def reports_errors(command):
    """User-fixable errors become one message and exit 1; Ctrl-C exits 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StageError as error:
            raise click.ClickException(str(error)) from None
        except Interrupted as interrupted:
            click.echo(f"gridtsne: {interrupted}", err=True)
            sys.exit(130)
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
        shard = f" (shard {summary['shard']}, into the cache)" if "shard" in summary else ""
        reused = f" ({summary['reused']} from cache)" if summary["reused"] else ""
        skipped = (
            f", {summary['skipped']} skipped: {embed.describe_skips(summary['skipped_by_reason'])}"
            if summary["skipped"]
            else ""
        )
        click.echo(
            f"embed: {summary['embedded']} images embedded{shard}{reused}{skipped} {seconds}", err=True
        )
    elif stage == "reduce":
        kl = summary["kl_divergence"]
        kl = f", KL divergence {kl:.3f}" if kl is not None else ""
        click.echo(
            f"reduce: {summary['points']} points, perplexity {summary['perplexity']:.3g}{kl} {seconds}",
            err=True,
        )
    elif stage == "assign":
        left_out = f", {len(summary['left_out'])} left out" if summary.get("left_out") else ""
        click.echo(
            f"assign: {summary['placed']} images on a {summary['rows']}x{summary['cols']} grid"
            f"{left_out}, {summary['empty_cells']} empty cells, solver {summary['solver']}, "
            f"{_quality_text(summary['quality'])} {seconds}",
            err=True,
        )
    elif stage == "render":
        missing = f", {len(summary['unreadable'])} unreadable" if summary["unreadable"] else ""
        cached = f", {summary['from_cache']} from the tile cache" if summary.get("from_cache") else ""
        click.echo(
            f"render: {summary['output']} ({summary['width']}x{summary['height']} px, "
            f"{summary['tiles']} tiles{cached}{missing}) {seconds}",
            err=True,
        )
        for entry in summary["unreadable"][:MAX_SKIPS_LISTED]:
            click.echo(f"  unreadable now: {entry['path']}: {entry['reason']}", err=True)
        if len(summary["unreadable"]) > MAX_SKIPS_LISTED:
            click.echo(
                f"  ... and {len(summary['unreadable']) - MAX_SKIPS_LISTED} more, listed in render.json",
                err=True,
            )


def _quality_text(quality: dict) -> str:
    return (
        f"DPQ_{quality['dpq_p']} {quality['dpq']:.3f}, neighbourhood preservation "
        f"(k={quality['k']}) {quality['neighbourhood_preservation']:.3f}"
    )


def _list_skipped(workdir: Workdir, quiet: bool) -> None:
    if quiet:
        return
    skipped = workdir.load_images()["skipped"]
    for entry in skipped[:MAX_SKIPS_LISTED]:
        click.echo(f"  skipped {entry['path']}: {entry['reason']}", err=True)
    if len(skipped) > MAX_SKIPS_LISTED:
        click.echo(
            f"  ... and {len(skipped) - MAX_SKIPS_LISTED} more, listed in {workdir.file('images.json')}",
            err=True,
        )


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


def _shard(ctx, param, value):
    try:
        return None if value is None else embed.parse_shard(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@main.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@workdir_option
@embed_options
@click.option(
    "--shard",
    callback=_shard,
    default=None,
    metavar="K/N",
    help="Embed only the K-th of N slices of the inputs, into the cache.",
)
@jobs_option
@output_options
@reports_errors
def embed_command(paths, workdir, shard, jobs, quiet, as_json, **settings):
    """Compute a feature vector for every image under PATHS (files, folders, or - for stdin).

    Writes images.json, embeddings.npy and embed.json. Files that are not
    readable images are skipped and listed with a reason in images.json.
    Vectors are cached by file content as each batch completes: a rerun
    embeds only new or changed photos, and an interrupted run resumes.
    With --shard K/N only the K-th of N slices is embedded, into the cache
    alone; a later run without --shard assembles every slice.

    \b
    Example:
        gridtsne embed ./photos -w work
        find /photos -name '*.jpg' -print0 | gridtsne embed -0 - -w work
        gridtsne embed ./photos -w work --shard 2/4     # then: gridtsne embed ./photos -w work
    """
    wd = Workdir(workdir or default_workdir())
    paths, model, settings = _start_embed(paths, settings)
    # Shards only add files to the cache, so several may run at once beside each other.
    with wd.lock() if shard is None else contextlib.nullcontext():
        summary = embed.run(wd, paths, model=model, jobs=jobs, shard=shard, progress=not quiet, **settings)
        _report(summary, quiet)
        if shard is None:
            _list_skipped(wd, quiet)
    _emit(summary, as_json)


@main.command("reduce")
@workdir_option
@reduce_options
@click.option(
    "--embeddings",
    "vectors",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="VECTORS.npy",
    help="Use these N x D vectors (CLIP, ...) instead of embed's: they are copied into the "
    "work directory as embeddings.npy.",
)
@click.option(
    "--paths",
    "paths_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="PATHS.txt",
    help="With --embeddings: the image of each row, one path a line, for render.",
)
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
        summary = assign.run(
            wd,
            grid=grid,
            aspect=aspect,
            solver=solver,
            subset=subset,
            refine=refine,
            on_message=_message(quiet),
        )
    _report(summary, quiet)
    _emit(summary, as_json)


@main.command("render")
@output_argument
@workdir_option
@render_options
@jobs_option
@output_options
@reports_errors
def render_command(
    output, workdir, tile_px, fit, gap_px, background, quality, image_format, jobs, quiet, as_json
):
    """Draw the mosaic to OUTPUT and print its path.

    OUTPUT's extension picks the format: .jpg/.jpeg, .png, .webp, .tif/.tiff,
    or .html for a zoomable web page (a folder named after it, with
    index.html). - writes the picture to stdout, in the --format given.
    Photos are decoded at the size needed and their tiles cached in the work
    directory, so another layout at the same --tile decodes nothing again.

    \b
    Example:
        gridtsne render mosaic.jpg -w work --tile 96 --background white
        gridtsne render gallery.html -w work              # open gallery/index.html
        gridtsne render - --format png -w work | other-tool
    """
    _check_output(output, image_format, as_json)
    wd = Workdir(workdir or default_workdir())
    with wd.lock():
        summary = render.run(
            wd,
            output,
            tile_px=tile_px,
            background=background,
            fit=fit,
            gap_px=gap_px,
            quality=quality,
            image_format=image_format,
            jobs=jobs,
            progress=not quiet,
            stdout=sys.stdout.buffer,
        )
    _report(summary, quiet)
    if output != render.STDOUT:
        _emit(summary, as_json, plain=summary["output"])


@main.command("export")
@workdir_option
@click.option(
    "--format",
    "table_format",
    type=click.Choice(export.FORMATS),
    default="auto",
    show_default=True,
    help="auto: from -o's extension, else csv.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file instead of stdout.",
)
@reports_errors
def export_command(workdir, table_format, output):
    """Print each photo's grid position and t-SNE coordinates, one row per photo.

    Columns: index (row in images.json and embeddings.npy), path, row, col,
    cell (row * cols + col), x, y (coords.npy, in [0, 1]). Skipped files
    have no row.

    \b
    Example:
        gridtsne export -w work > positions.csv
        gridtsne export -w work --format jsonl | jq -r 'select(.row == 0) | .path'
        gridtsne export -w work -o positions.json
    """
    wd = Workdir(workdir or default_workdir())
    text = export.export(wd, export.format_of(output, table_format))
    if output == "-":
        click.echo(text, nl=False)
    else:
        export.save(output, text)
        click.echo(str(output), err=True)


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
def all_command(
    photos,
    output,
    workdir,
    seed,
    perplexity,
    pca_dims,
    grid,
    aspect,
    solver,
    subset,
    refine,
    tile_px,
    fit,
    gap_px,
    background,
    quality,
    image_format,
    jobs,
    force,
    quiet,
    as_json,
    **embed_settings,
):
    """Run every stage from PHOTOS to the mosaic OUTPUT, skipping fresh ones.

    A stage is fresh when its inputs and options are unchanged since it last
    ran, so a rerun only redoes what changed, as Make would. The work
    directory defaults to OUTPUT's name with .gridtsne, beside it.

    \b
    Example:
        gridtsne all ./photos mosaic.jpg
        gridtsne all ./photos mosaic.jpg --seed 3     # reruns reduce, assign, render
        gridtsne all ./photos gallery.html            # a zoomable web page
    """
    _check_output(output, image_format, as_json)
    if output == render.STDOUT and not (workdir or os.environ.get(ENV_VAR)):
        raise click.UsageError("with - as OUTPUT, name the work directory: -w DIR")
    wd = Workdir(workdir or default_workdir(output))

    def stage_done(summary):
        _report(summary, quiet)
        if summary["stage"] == "embed" and summary["ran"]:
            _list_skipped(wd, quiet)

    with wd.lock():
        photos, model, embed_settings = _start_embed(photos, embed_settings)
        summaries = pipeline.run_all(
            wd,
            photos,
            output,
            model=model,
            embed_settings=embed_settings,
            seed=seed,
            perplexity=perplexity,
            pca_dims=pca_dims,
            grid=grid,
            aspect=aspect,
            solver=solver,
            subset=subset,
            refine=refine,
            on_message=_message(quiet),
            tile_px=tile_px,
            background=background,
            fit=fit,
            gap_px=gap_px,
            quality=quality,
            image_format=image_format,
            jobs=jobs,
            progress=not quiet,
            force=force,
            on_stage_done=stage_done,
            stdout=sys.stdout.buffer,
        )
    if output != render.STDOUT:
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
