"""The command line: parse flags into a stage's options, call the stage, report.

stdout carries data (output paths, JSON with ``--json``); stderr carries
progress bars and messages. Exit codes: 0 success, 1 failure, 2 usage error.
Every flag of a stage option is made by ``stage_option`` from the options
dataclass (``gridtsne.options``), which holds its default and checks its value.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click

from gridtsne import __version__, assign, embed, export, pipeline, reduce, render
from gridtsne.errors import GridtsneError, Interrupted, OptionError, OptionMismatch
from gridtsne.options import (
    FITS,
    FORMATS,
    SOLVERS,
    AssignOptions,
    EmbedOptions,
    PipelineOptions,
    ReduceOptions,
    RenderOptions,
    StageOptions,
)
from gridtsne.serve import config as serve_defaults  # stdlib only: no server is imported
from gridtsne.stage import Context
from gridtsne.workdir import ENV_VAR, Workdir, default_workdir

MAX_SKIPS_LISTED = 10
#: Set to show the Python traceback of an unexpected error instead of one line.
DEBUG_VAR = "GRIDTSNE_DEBUG"


def flag_of(name: str) -> str:
    """An option's command-line flag: the dataclass field ``pca_dims`` is ``--pca-dims``."""
    return "--" + name.replace("_", "-")


def stage_option(options_type: type[StageOptions], name: str, *decls: str, help: str, **extra):
    """The click option of one stage option: its default (shown in --help) comes from the dataclass.

    Values reach the dataclass as typed on the command line; it checks them,
    so that the command line, JSON and Python refuse the same values alike.
    """
    default = options_type.default(name)
    decls = decls or (flag_of(name),)
    if isinstance(default, bool):
        return click.option(*decls, name, default=default, show_default=True, help=help, **extra)
    shown = ",".join(default) if isinstance(default, tuple) else default
    return click.option(
        *decls, name, default=None, show_default=str(shown) if shown not in (None, "") else False,
        help=help, **extra,
    )  # fmt: skip


def build(options_type: type[StageOptions], **values) -> StageOptions:
    """The options from the flags given (None: not given, so the default), checked."""
    return options_type(**{name: value for name, value in values.items() if value is not None})


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
    )(command)  # fmt: skip


output_options = _with(
    click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
)

jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(1), default=None, help="Threads decoding images. Default: up to 4."
)


def _check_cluster(ctx, param, value: str | None) -> str | None:
    """A usage error for a malformed address; a missing Dask extra is one line, exit 1."""
    if value is None:
        return None
    from gridtsne import cluster  # imports no Dask itself

    try:
        cluster.check_address(value)
    except OptionError as error:
        raise click.BadParameter(error.worded(flag_of)) from None
    try:
        cluster.require_dask()
    except GridtsneError as error:
        raise click.ClickException(str(error)) from None
    return value


cluster_option = click.option(
    "--cluster", metavar="ADDRESS", default=None, callback=_check_cluster,
    help="Run the per-photo work on a Dask cluster: a scheduler address (tcp://HOST:8786), or "
    "local[:N] for N worker processes here. Needs gridtsne[dask]; see docs/cluster.md.",
)  # fmt: skip

embed_options = _with(
    stage_option(EmbedOptions, "ext", metavar="LIST",
                 help="Extensions a folder walk looks at, comma-separated (e.g. jpg,png)."),
    stage_option(EmbedOptions, "hidden", is_flag=True, help="Also look inside hidden files and folders."),
    click.option("-0", "--null", is_flag=True, help="Paths read from stdin (PATH '-') are NUL-separated."),
    stage_option(EmbedOptions, "model", metavar="PATH.onnx",
                 help="An ONNX image model to use instead of the shipped EfficientNet-Lite0."),
    stage_option(EmbedOptions, "preprocess", metavar="PATH.json",
                 help="Preprocessing of --model (resize_short_side, crop_size, mean, std). "
                 "Default: the .json file beside the model."),
    stage_option(EmbedOptions, "provider",
                 help="onnxruntime execution provider: cpu, cuda (needs onnxruntime-gpu), ..."),
    stage_option(EmbedOptions, "threads", help="onnxruntime threads (0: onnxruntime decides)."),
    stage_option(EmbedOptions, "batch_size", help="Images per model call."),
    stage_option(EmbedOptions, "max_pixels",
                 help="Refuse, unread, images whose header claims more pixels (decompression bombs)."),
    stage_option(EmbedOptions, "cache", metavar="DIR",
                 help="Embedding cache folder, to share between work directories. "
                 "Default: $GRIDTSNE_CACHE, else WORK/cache."),
)  # fmt: skip

reduce_options = _with(
    stage_option(ReduceOptions, "seed", help="Random seed: the same seed and inputs give the same grid."),
    stage_option(ReduceOptions, "perplexity",
                 help="t-SNE perplexity. Default: 10 from 800 images, else 30 (or (N-1)/3 below 91)."),
    stage_option(ReduceOptions, "pca_dims", help="Principal components kept before t-SNE."),
    stage_option(ReduceOptions, "relayout_above", metavar="SHARE",
                 help="When more than this share of the photos is new, lay the map out afresh "
                 "instead of updating it."),
)  # fmt: skip

# One flag for reduce, assign and all (both stages' options have it).
relayout_option = stage_option(
    ReduceOptions, "relayout", is_flag=True,
    help="Lay out afresh. Without it, a layout is updated when photos come and go: the photos "
    "that stay keep their place and cell, the new ones join their kin.",
)  # fmt: skip

assign_options = _with(
    stage_option(AssignOptions, "grid", metavar="ROWSxCOLS",
                 help="Grid shape, e.g. 12x16. Default: the smallest near-square grid."),
    stage_option(AssignOptions, "aspect", metavar="W:H",
                 help="Grid shape, e.g. 16:9: the smallest grid of about that width:height in cells "
                 "that holds every image. Ignored with --grid."),
    stage_option(AssignOptions, "solver", type=click.Choice(SOLVERS),
                 help=f"exact: optimal, cubic time; blocks: scalable, near-optimal; auto: exact up to "
                 f"{assign.EXACT_MAX_CELLS} cells."),
    stage_option(AssignOptions, "subset", is_flag=True,
                 help="With more images than cells, keep a representative subset instead of failing; "
                 "the left-out images are listed in assign.json."),
    stage_option(AssignOptions, "refine", "--refine/--no-refine",
                 help="Sort the grid locally against the embeddings after the assignment."),
    stage_option(AssignOptions, "room", metavar="SHARE",
                 help="Leave this share of the cells empty (0 to 0.5), spread among the photos, so that "
                 "photos added later join their kin while the others keep their cells."),
)  # fmt: skip

render_options = _with(
    stage_option(RenderOptions, "tile", help="Tile size in pixels (the web page's full zoom)."),
    stage_option(RenderOptions, "fit", type=click.Choice(FITS),
                 help="crop: fill the tile, cutting the edges; pad: whole photo on the background; "
                 "stretch: whole photo squeezed to a square."),
    stage_option(RenderOptions, "gap", help="Pixels of background between tiles."),
    stage_option(RenderOptions, "background",
                 help="Colour of empty cells, gaps and margins: a name or #RRGGBB."),
    stage_option(RenderOptions, "quality", help="JPEG/WebP quality (also of the web page's tiles)."),
    stage_option(RenderOptions, "format", type=click.Choice(FORMATS),
                 help="Output format; auto: from OUTPUT's extension. Needed when OUTPUT is - (stdout)."),
    stage_option(RenderOptions, "preview", metavar="PX",
                 help="Web page: long side of the preview of each photo that the details panel "
                 "shows (written into the page folder); 0: none."),
    stage_option(RenderOptions, "labels", metavar="CSV",
                 help="Web page: colour the photos by label and name the map's regions by them: a CSV "
                 "file of path,label rows (paths relative to the CSV's folder, or absolute). "
                 "Default: the folders are the labels."),
    stage_option(RenderOptions, "overwrite", is_flag=True,
                 help="Write over an existing OUTPUT that gridtsne did not write (never over a photo)."),
)  # fmt: skip

# OUTPUT is checked with --format by RenderOptions and render.format_of: with it, any name will do.
output_argument = click.argument("output", type=click.Path(dir_okay=False, allow_dash=True))


def reports_errors(command):
    """Errors a user can fix become one line on stderr: a bad option exits 2, anything else 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OptionMismatch as error:
            raise click.ClickException(f"{flag_of(error.option)}: {error.worded(flag_of)}") from None
        except OptionError as error:
            raise click.BadParameter(error.worded(flag_of), param_hint=f"'{flag_of(error.option)}'") from None
        except Interrupted as interrupted:
            click.echo(f"gridtsne: {interrupted}", err=True)
            sys.exit(130)
        except GridtsneError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("gridtsne: interrupted; finished stages are kept, rerun to continue", err=True)
            sys.exit(130)
        except OSError as error:  # a full disk, a read-only folder, a file in the way
            where = f"{error.filename}: " if error.filename else ""
            raise click.ClickException(f"{where}{error.strerror or error}") from None
        except MemoryError:
            raise click.ClickException(
                "out of memory: try a smaller --tile, --batch-size or --jobs"
            ) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: a usage error or an exit, already worded
        except Exception as error:  # a bug: one line for the user, the traceback on request
            if os.environ.get(DEBUG_VAR):
                raise
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {error}. This is a bug in gridtsne; "
                f"rerun with {DEBUG_VAR}=1 to see where, and report it"
            ) from None

    return wrapper


def _report(summary: dict, quiet: bool) -> None:
    """One line per stage on stderr; photos render could not read listed (the first few)."""
    if quiet:
        return
    stage = pipeline.BY_NAME[summary["stage"]]
    if not summary["ran"]:
        click.echo(f"{stage.name}: fresh, skipped", err=True)
        return
    click.echo(f"{stage.describe(summary)} [{summary['seconds']:.1f} s]", err=True)
    unreadable = summary.get("unreadable") or []
    for entry in unreadable[:MAX_SKIPS_LISTED]:
        click.echo(f"  unreadable now: {entry['path']}: {entry['reason']}", err=True)
    if len(unreadable) > MAX_SKIPS_LISTED:
        click.echo(f"  ... and {len(unreadable) - MAX_SKIPS_LISTED} more, listed in render.json", err=True)


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


def _context(quiet: bool, jobs: int | None = None, cluster: str | None = None) -> Context:
    """Progress and messages on stderr unless quiet; the picture of a render to - on stdout."""
    on_message = (lambda text: None) if quiet else (lambda text: click.echo(text, err=True))
    return Context(
        progress=not quiet, jobs=jobs, on_message=on_message, stdout=sys.stdout.buffer, cluster=cluster
    )


def _workdir(named: str | None, default: os.PathLike | None = None) -> Workdir:
    """The work directory named with -w, else the default; a file there is a usage error."""
    work = Workdir(named or default or default_workdir())
    if work.path.exists() and not work.path.is_dir():
        raise click.UsageError(f"{work.path} is a file, not a work directory: name another with -w")
    return work


def _emit(data, as_json: bool, plain: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif plain is not None:
        click.echo(plain)


def _read_paths(paths: tuple[str, ...], null: bool) -> list[str]:
    """PATHS, with '-' replaced by the paths on stdin (one a line, or NUL-separated with -0)."""
    if "-" not in paths:
        return list(paths)
    data = sys.stdin.buffer.read()
    listed = [os.fsdecode(p) for p in (data.split(b"\0") if null else data.splitlines()) if p.strip()]
    return [path for given in paths for path in (listed if given == "-" else [given])]


def _check_output(options: RenderOptions, as_json: bool) -> None:
    """Usage errors of OUTPUT with --format and --json: exit 2 before any work."""
    render.format_of(options.output, options.format)
    if options.output == render.STDOUT and as_json:
        raise click.UsageError("--json cannot share stdout with the picture: leave it out with -")


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
@stage_option(EmbedOptions, "shard", metavar="K/N",
              help="Embed only the K-th of N slices of the inputs, into the cache.")  # fmt: skip
@jobs_option
@cluster_option
@output_options
@reports_errors
def embed_command(paths, workdir, null, jobs, cluster, quiet, as_json, **values):
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
        gridtsne embed /shared/photos -w work --cluster tcp://scheduler:8786
    """
    options = build(EmbedOptions, paths=_read_paths(paths, null), **values)
    wd = _workdir(workdir)
    # Shards only add files to the cache, so several may run at once beside each other.
    with wd.lock() if options.shard is None else contextlib.nullcontext():
        summary = embed.run(wd, options, _context(quiet, jobs, cluster))
        _report(summary, quiet)
        if options.shard is None:
            _list_skipped(wd, quiet)
    _emit(summary, as_json)


@main.command("reduce")
@workdir_option
@reduce_options
@relayout_option
@click.option("--embeddings", "vectors", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="VECTORS.npy",
              help="Use these N x D vectors (CLIP, ...) instead of embed's: they are copied into the "
              "work directory as embeddings.npy.")  # fmt: skip
@click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PATHS.txt",
              help="With --embeddings: the image of each row, one path a line, for render.")  # fmt: skip
@output_options
@reports_errors
def reduce_command(workdir, vectors, paths_file, quiet, as_json, **values):
    """Map the embeddings to 2-D with t-SNE (coords.npy, reduce.json).

    \b
    Example:
        gridtsne reduce -w work --seed 1
        gridtsne reduce -w work --embeddings clip.npy --paths clip_paths.txt
    """
    if paths_file and not vectors:
        raise click.UsageError("--paths goes with --embeddings")
    options = build(ReduceOptions, **values)
    wd = _workdir(workdir)
    with wd.lock():
        if vectors:
            reduce.import_embeddings(wd, vectors, paths_file)
        summary = reduce.run(wd, options, _context(quiet))
    _report(summary, quiet)
    _emit(summary, as_json)


@main.command("assign")
@workdir_option
@assign_options
@relayout_option
@output_options
@reports_errors
def assign_command(workdir, quiet, as_json, **values):
    """Snap the 2-D map onto grid cells and measure the layout (grid.npy, assign.json).

    \b
    Example:
        gridtsne assign -w work --grid 10x12
        gridtsne assign -w work --aspect 16:9
        gridtsne assign -w work --grid 20x20 --subset     # keep 400 representative images
    """
    options = build(AssignOptions, **values)
    wd = _workdir(workdir)
    with wd.lock():
        summary = assign.run(wd, options, _context(quiet))
    _report(summary, quiet)
    _emit(summary, as_json)


@main.command("render")
@output_argument
@workdir_option
@render_options
@jobs_option
@cluster_option
@output_options
@reports_errors
def render_command(output, workdir, jobs, cluster, quiet, as_json, **values):
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
        gridtsne render gallery.html -w work --labels labels.csv
        gridtsne render - --format png -w work | other-tool
    """
    options = build(RenderOptions, output=output, **values)
    _check_output(options, as_json)
    wd = _workdir(workdir)
    with wd.lock():
        summary = render.run(wd, options, _context(quiet, jobs, cluster))
    _report(summary, quiet)
    if output != render.STDOUT:
        _emit(summary, as_json, plain=summary["output"])


@main.command("export")
@workdir_option
@click.option("--format", "table_format", type=click.Choice(export.FORMATS), default="auto",
              show_default=True, help="auto: from -o's extension, else csv.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write to this file instead of stdout.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Write over an existing file that gridtsne did not write.")
@reports_errors
def export_command(workdir, table_format, output, overwrite):
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
    wd = _workdir(workdir)
    text = export.export(wd, export.format_of(output, table_format))
    if output == "-":
        click.echo(text, nl=False)
        return
    with wd.lock():
        render.may_write_over(wd, Path(output).absolute(), overwrite)
        export.save(output, text)
        wd.remember_written([output])
    click.echo(str(output), err=True)


@main.command("all")
@click.argument("photos", nargs=-1, required=True, type=click.Path())
@output_argument
@workdir_option
@embed_options
@reduce_options
@assign_options
@relayout_option
@render_options
@jobs_option
@cluster_option
@click.option("--force", is_flag=True, help="Rerun every stage, fresh or not.")
@output_options
@reports_errors
def all_command(photos, output, workdir, null, jobs, cluster, force, quiet, as_json, **values):
    """Run every stage from PHOTOS to the mosaic OUTPUT, skipping fresh ones.

    A stage is fresh when its inputs and options are unchanged since it last
    ran, so a rerun only redoes what changed, as Make would. The work
    directory defaults to OUTPUT's name with .gridtsne, beside it.

    \b
    Example:
        gridtsne all ./photos mosaic.jpg
        gridtsne all ./photos mosaic.jpg --seed 3     # reruns reduce, assign, render
        gridtsne all ./photos gallery.html            # a zoomable web page
        gridtsne all ./photos mosaic.jpg --cluster local:4     # 4 worker processes
    """
    given = {name: value for name, value in values.items() if value is not None}
    options = PipelineOptions.from_flat({**given, "output": output, "paths": _read_paths(photos, null)})
    _check_output(options.render, as_json)
    if output == render.STDOUT and not (workdir or os.environ.get(ENV_VAR)):
        raise click.UsageError("with - as OUTPUT, name the work directory: -w DIR")
    wd = _workdir(workdir, default_workdir(output))
    pipeline.check_start(wd, options, named=bool(workdir or os.environ.get(ENV_VAR)))

    def stage_done(summary):
        _report(summary, quiet)
        if summary["stage"] == "embed" and summary["ran"]:
            _list_skipped(wd, quiet)

    with wd.lock():
        summaries = pipeline.run_all(
            wd, options, _context(quiet, jobs, cluster), force=force, on_stage_done=stage_done
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
    wd = _workdir(workdir)
    report = pipeline.stage_status(wd)
    if as_json:
        click.echo(json.dumps({"workdir": str(wd.path), "stages": report}, indent=2))
        return
    click.echo(f"work directory: {wd.path}")
    for entry in report:
        state = "fresh" if entry["fresh"] else ("not run" if entry["reason"] == "never run" else "stale")
        why = f" ({entry['reason']})" if state == "stale" else ""
        click.echo(f"  {entry['stage']:<7} {state}{why}")
        quality = entry.get("results", {}).get("quality") if entry["stage"] == "assign" else None
        if entry["done"] and isinstance(quality, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                click.echo(f"          {assign.quality_text(quality)}")
            if entry["results"].get("mode") == "update":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    click.echo(f"          updated: {assign.update_text(entry['results'])}")


def _bytes_text(count: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _when_text(seconds: float | None) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M") if seconds else "never"


def _cache_folders(workdir: str | None, cache_dir: str | None) -> tuple[Workdir, Path]:
    wd = _workdir(workdir)
    return wd, Path(cache_dir or embed.default_cache_dir(wd))


cache_folder_options = _with(
    workdir_option,
    click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
                 help="The embedding cache. Default: $GRIDTSNE_CACHE, else WORK/cache."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
)  # fmt: skip


@main.group("cache")
def cache_group():
    """See and prune the caches: embeddings (WORK/cache or $GRIDTSNE_CACHE) and tiles (WORK/thumbs).

    Both only save time: whatever a prune removes is made again when needed.
    """


@cache_group.command("status")
@cache_folder_options
@reports_errors
def cache_status_command(workdir, cache_dir, as_json):
    """Show what each cache holds, what it takes on disk and when it was last used.

    \b
    Example:
        gridtsne cache status -w work
    """
    from gridtsne import cache, tiles

    wd, root = _cache_folders(workdir, cache_dir)
    report = {"embeddings": cache.usage(root), "tiles": tiles.cache_usage(wd.path)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"embedding cache: {root}")
    for row in report["embeddings"] or [{"folder": "(empty)", "vectors": 0, "bytes": 0}]:
        used = f", used {_when_text(row.get('oldest_use'))} to {_when_text(row.get('newest_use'))}"
        click.echo(f"  {Path(row['folder']).name}: {row['vectors']:,} vectors, {_bytes_text(row['bytes'])}"
                   + (used if row.get("newest_use") else ""))  # fmt: skip
    row = report["tiles"]
    click.echo(f"tile cache: {row['folder']}")
    used = f", used {_when_text(row['oldest_use'])} to {_when_text(row['newest_use'])}"
    click.echo(f"  {row['tiles']:,} tiles, {_bytes_text(row['bytes'])}" + (used if row["tiles"] else ""))


@cache_group.command("prune")
@cache_folder_options
@click.option("--older-than", metavar="AGE", default=None,
              help="Remove what no run used for AGE: 30d, 12h, 90m, 2w.")  # fmt: skip
@click.option(
    "--max-size",
    metavar="SIZE",
    default=None,
    help="Then remove the least recently used until each cache takes at most SIZE: 5G, 500M.",
)
@reports_errors
def cache_prune_command(workdir, cache_dir, as_json, older_than, max_size):
    """Remove cached embeddings and tiles not used lately, or beyond a size.

    Safe while other runs use the same caches: a vector or tile removed from
    under a run is computed again. Says what it freed.

    \b
    Example:
        gridtsne cache prune --older-than 30d --max-size 5G
    """
    from gridtsne import cache, tiles

    if older_than is None and max_size is None:
        raise click.UsageError("say what to remove: --older-than AGE, --max-size SIZE, or both")
    age = cache.parse_age(older_than) if older_than is not None else None
    size = cache.parse_size(max_size) if max_size is not None else None
    wd, root = _cache_folders(workdir, cache_dir)
    report = {"embeddings": cache.prune(root, age, size), "tiles": tiles.prune_cache(wd.path, age, size)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for row in report["embeddings"]:
        click.echo(
            f"embeddings {row['folder']}: removed {row['removed']:,} vectors, freed "
            f"{_bytes_text(row['freed_bytes'])}; {row['kept']:,} kept ({_bytes_text(row['bytes'])})"
        )
    row = report["tiles"]
    click.echo(
        f"tiles {row['folder']}: removed {row['removed']:,} tiles, freed "
        f"{_bytes_text(row['freed_bytes'])}; {row['kept']:,} kept ({_bytes_text(row['bytes'])})"
    )


@main.command("serve")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Folder of photos that requests may name; nothing outside it is read.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default="gridtsne-serve",
    show_default=True,
    help="Folder for the job database, uploads, work directories, results and the shared embedding cache.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but a loopback address needs --token-file.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Jobs run at once, each in its own process. Default: half the cores, 1 to 4.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File of the tokens clients send as 'Authorization: Bearer TOKEN', one per line (one per "
    "client: each token's Idempotency-Keys are its own).",
)
@click.option(
    "--queue-limit",
    type=click.IntRange(1),
    default=serve_defaults.DEFAULT_QUEUE_LIMIT,
    show_default=True,
    help="Jobs that may wait; beyond, a submit is answered 429 with Retry-After.",
)
@click.option(
    "--max-upload-mb",
    type=click.IntRange(1),
    default=serve_defaults.DEFAULT_MAX_UPLOAD_MB,
    show_default=True,
    help="Largest uploaded file, in MiB (413 beyond).",
)
@click.option(
    "--max-files",
    type=click.IntRange(1),
    default=serve_defaults.DEFAULT_MAX_FILES,
    show_default=True,
    help="Most files in one upload request (413 beyond).",
)
@click.option(
    "--keep-days",
    type=click.FloatRange(0, min_open=True),
    default=serve_defaults.DEFAULT_KEEP_DAYS,
    show_default=True,
    help="Days a finished job's files, and an upload no job waits for, are kept.",
)
@click.option(
    "--max-data-gb",
    type=click.FloatRange(0, min_open=True),
    default=serve_defaults.DEFAULT_MAX_DATA_GB,
    show_default=True,
    help="Most GB that --data may hold: beyond, the oldest finished jobs and unused uploads go first, "
    "then the least recently used cached embeddings. Never a queued or running job's files.",
)
@click.option(
    "--standby/--no-standby",
    default=True,
    show_default=True,
    help="Keep a worker process waiting with its libraries loaded while a worker's place is free: "
    "the next job starts seconds sooner. --no-standby saves its memory (about 150 MB) while idle.",
)
@reports_errors
def serve_command(
    root, data, host, port, workers, token_file, queue_limit, max_upload_mb, max_files, keep_days,
    max_data_gb, standby,
):  # fmt: skip
    """Serve the asynchronous visualization API over HTTP (docs/serve.md).

    POST /v2/visualizations schedules a mosaic of photos under --root (or of
    uploaded ones) and answers 202 with its id; GET /v2/visualizations/ID is
    polled until it carries output.data.image.url. Each job runs in its own
    process; jobs survive a restart. The OpenAPI page is at /docs. Needs the
    serve extra: pip install -e '.[serve]'.

    \b
    Example:
        gridtsne serve --root ./photos
        curl -X POST localhost:8000/v2/visualizations -H 'Content-Type: application/json' \\
             -d '{"images": ["holiday"], "options": {"tile": 64}}'
        gridtsne serve --root /srv/photos --host 0.0.0.0 --token-file token.txt
    """
    from pathlib import Path

    try:
        from gridtsne.serve import app as serve_app
        from gridtsne.serve.config import ServeConfig, default_workers, is_loopback, read_tokens
    except ImportError as error:
        raise click.ClickException(
            f"gridtsne serve needs the serve extra ({error.name} is missing): pip install -e '.[serve]'"
        ) from None
    tokens = ()
    if token_file:
        try:
            tokens = read_tokens(token_file)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    elif not is_loopback(host):
        raise click.UsageError(f"listening on {host} needs --token-file: only 127.0.0.1 may go without")
    config = ServeConfig(
        root=Path(root).resolve(), data=Path(data).resolve(), workers=workers or default_workers(),
        tokens=tokens, queue_limit=queue_limit, max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_files=max_files, keep_days=keep_days, max_data_bytes=int(max_data_gb * 1e9), standby=standby,
    )  # fmt: skip
    serve_app.serve(config, host, port)
