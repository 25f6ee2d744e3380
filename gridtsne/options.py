"""The options of each stage: one frozen dataclass per stage, the single home of their defaults.

The command line builds them from its flags, ``all`` composes the four
(``PipelineOptions``), each stage's manifest records them (``to_dict``), and
the HTTP service and the cluster runner read them from JSON (``from_dict``).
A field's name is its command-line flag without the dashes (``pca_dims`` is
``--pca-dims``), so one name serves every front end. Values are checked and
normalised when an object is made, whatever made it: a bad value raises
``OptionError`` naming the option.

This module imports no stage, so that anything may import it cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gridtsne.errors import OptionError

#: What a folder walk looks at. A file named on the command line is tried
#: whatever its name: Pillow, not the extension, decides what is an image.
DEFAULT_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".jp2", ".ppm", ".pgm", ".pnm",
    # Further formats Pillow decodes (issue 20: a walk must not leave them out unseen).
    ".j2k", ".jpx", ".jpf", ".mpo", ".tga", ".ico", ".pcx", ".sgi", ".rgb", ".rgba", ".bw",
    ".psd", ".qoi", ".xpm", ".dds", ".icns",
)  # fmt: skip
#: Pillow's own decompression-bomb threshold: refuse headers that claim more.
DEFAULT_MAX_PIXELS = 178_956_970
#: The shipped model's name (``--model`` left out).
DEFAULT_MODEL = "efficientnet-lite0"
#: The largest seed numpy's and openTSNE's generators take.
MAX_SEED = 2**32 - 1

#: The names of each choice; the stage modules hold what each name does.
SOLVERS = ("auto", "exact", "blocks")
FITS = ("crop", "pad", "stretch")
FORMATS = ("auto", "jpeg", "png", "webp", "tiff", "html")


# Parsers: the text or JSON value of an option -> its typed value, or ValueError.


def parse_grid(text: str) -> tuple[int, int]:
    """``"12x16"`` -> (12, 16): rows x columns."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (rows := int(match[1]), cols := int(match[2])):
        raise ValueError(f"{text!r} is not ROWSxCOLS, e.g. 10x12")
    return rows, cols


def parse_aspect(text: str) -> tuple[float, float]:
    """``"16:9"`` -> (16.0, 9.0): width : height of the grid, in cells."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)\s*", text)
    if not match or 0 in (width := float(match[1]), height := float(match[2])):
        raise ValueError(f"{text!r} is not WIDTH:HEIGHT, e.g. 16:9")
    return width, height


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"{text!r} is not K/N, e.g. 2/8") from None
    if not 1 <= index <= count:
        raise ValueError(f"shard {text}: K must be between 1 and N")
    return index, count


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour name or hex code (``white``, ``#202020``) -> RGB."""
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a colour: use a name like 'black' or a code like '#202020'"
        ) from None


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                value = int(value)
            else:
                raise ValueError(f"{value!r} is not a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range: give a whole number {bounds}")
        return value

    return parse


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _positive_number(value: Any) -> float:
    number = _number(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{value} must be a number above 0")
    return number


def _share(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError(f"{value} is not a share from 0 to 1")
    return number


def _room(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 0.5:
        raise ValueError(f"{value} is not a share from 0 to 0.5")
    return number


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _text(value: Any) -> str:
    """A string; a path object (``pathlib.Path``) becomes its string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"{value!r} is not a string")
    return value


def _choice(names: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in names:
            raise ValueError(f"{value!r} is not one of {', '.join(names)}")
        return value

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{value!r} is not a list of strings")
    return tuple(_text(item) for item in value)


def _pair(parse_text: Callable[[str], tuple], separator: str) -> Callable[[Any], tuple | None]:
    """A pair given as text (``"12x16"``) or as a two-item list; None or "auto" for the default."""

    def parse(value: Any) -> tuple | None:
        if value is None or value == "auto":
            return None
        if isinstance(value, list | tuple) and len(value) == 2:
            value = f"{value[0]}{separator}{value[1]}"
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a pair")
        return parse_text(value)

    return parse


def _extensions(value: Any) -> tuple[str, ...]:
    """``"jpg,png"`` or ``["jpg", ".PNG"]`` -> ``(".jpg", ".png")``."""
    items = value.split(",") if isinstance(value, str) else _texts(value)
    extensions = tuple(f".{item.strip().lstrip('.').lower()}" for item in items if item.strip())
    if not extensions:
        raise ValueError("give at least one extension, e.g. jpg,png")
    return extensions


def _shard(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        value = f"{value[0]}/{value[1]}"
    return parse_shard(_text(value))


def _colour(value: Any) -> str:
    parse_colour(_text(value))
    return value


def _labels(value: Any) -> str | tuple[tuple[str, str], ...] | None:
    """A labels CSV file (a path), or labels inline: ``[{"path": ..., "label": ...}, ...]`` or
    ``[[path, label], ...]``. What the file holds is read, and checked, by render."""
    if value is None or isinstance(value, str | os.PathLike):
        return None if value is None else _text(value) or None
    if not isinstance(value, list | tuple):
        raise ValueError('give a CSV file of path,label rows, or a list of {"path", "label"} objects')
    pairs = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, Mapping) and set(item) == {"path", "label"}:
            item = (item["path"], item["label"])
        if not (isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(v, str) for v in item)):
            raise ValueError(f'item {number}: give {{"path": TEXT, "label": TEXT}}, not {item!r:.80}')
        if not item[0].strip() or not item[1].strip():
            raise ValueError(f"item {number}: the {'path' if not item[0].strip() else 'label'} is empty")
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def option(default: Any, parse: Callable[[Any], Any], *, fresh: bool = True, **extra: Any):
    """A dataclass field with its parser; ``fresh=False`` for options that change how a
    stage runs but not what it makes (so changing them never makes the stage stale)."""
    return field(default=default, metadata={"parse": parse, "fresh": fresh, **extra})


class StageOptions:
    """What every stage's options share: checking, freshness parameters, JSON."""

    stage: ClassVar[str]

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            try:
                value = spec.metadata["parse"](getattr(self, spec.name))
            except (ValueError, TypeError) as error:
                raise OptionError(spec.name, str(error)) from None
            object.__setattr__(self, spec.name, value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one option (what the command line shows)."""
        return next(spec.default for spec in dataclasses.fields(cls) if spec.name == name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageOptions:
        """Options from JSON: unknown names are refused, every value is checked."""
        if not isinstance(data, Mapping):
            raise OptionError(cls.stage, f"the {cls.stage} options must be a JSON object")
        for name in data:
            if name not in cls.names():
                raise OptionError(
                    name, f"{cls.stage} has no option {name!r}: known are {', '.join(cls.names())}"
                )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Every option, as JSON takes it (tuples become lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self.names()}

    def freshness(self) -> dict[str, Any]:
        """The options that decide what the stage makes: a change in one makes it stale."""
        return {spec.name: _jsonable(getattr(self, spec.name)) for spec in dataclasses.fields(self)
                if spec.metadata["fresh"]}  # fmt: skip

    def replace(self, **changes: Any) -> StageOptions:
        return dataclasses.replace(self, **changes)


def _jsonable(value: Any) -> Any:
    return [_jsonable(item) for item in value] if isinstance(value, tuple | list) else value


@dataclass(frozen=True)
class EmbedOptions(StageOptions):
    """embed: which files to look at, and the model that turns each into a vector."""

    stage: ClassVar[str] = "embed"
    #: Files and folders to embed (folders are walked).
    paths: tuple[str, ...] = option((), _texts)
    #: Extensions a folder walk looks at.
    ext: tuple[str, ...] = option(DEFAULT_EXTENSIONS, _extensions)
    #: Also look inside hidden files and folders.
    hidden: bool = option(False, _flag)
    #: Refuse, unread, images whose header claims more pixels.
    max_pixels: int = option(DEFAULT_MAX_PIXELS, _integer(1))
    #: An ONNX model file; None: the shipped EfficientNet-Lite0.
    model: str | None = option(None, _optional(_text))
    #: The preprocessing JSON of ``model``; None: the .json file beside it.
    preprocess: str | None = option(None, _optional(_text))
    #: onnxruntime execution provider: cpu, cuda, ...
    provider: str = option("cpu", _text, fresh=False)
    #: onnxruntime threads (0: onnxruntime decides).
    threads: int = option(0, _integer(0), fresh=False)
    #: Images per model call.
    batch_size: int = option(32, _integer(1), fresh=False)
    #: Embedding cache folder; None: $GRIDTSNE_CACHE, else WORK/cache.
    cache: str | None = option(None, _optional(_text), fresh=False)
    #: Embed only the K-th of N slices of the inputs, into the cache.
    shard: tuple[int, int] | None = option(None, _shard, fresh=False)
    #: Files and folders never to embed (``all`` puts its own output here). Not a freshness
    #: parameter: what it leaves out shows in the files found, which are.
    exclude: tuple[str, ...] = option((), _texts, fresh=False)


@dataclass(frozen=True)
class ReduceOptions(StageOptions):
    """reduce: the t-SNE map."""

    stage: ClassVar[str] = "reduce"
    #: Random seed: the same seed and inputs give the same grid.
    seed: int = option(0, _integer(0, MAX_SEED))
    #: t-SNE perplexity; None: 10 from 800 images, else 30 (or (N-1)/3 below 91).
    perplexity: float | None = option(None, _optional(_positive_number))
    #: Principal components kept before t-SNE.
    pca_dims: int = option(50, _integer(2))
    #: Lay the map out afresh instead of updating the last one (photos keep their places).
    relayout: bool = option(False, _flag, fresh=False)
    #: An update with more than this share of new photos lays the map out afresh.
    relayout_above: float = option(0.25, _share, fresh=False)


@dataclass(frozen=True)
class AssignOptions(StageOptions):
    """assign: the grid's shape and how the map is snapped onto it."""

    stage: ClassVar[str] = "assign"
    #: (rows, cols); None: the smallest near-square grid (or of ``aspect``).
    grid: tuple[int, int] | None = option(None, _pair(parse_grid, "x"))
    #: (width, height) in cells of the smallest grid that holds every image; ignored with ``grid``.
    aspect: tuple[float, float] | None = option(None, _pair(parse_aspect, ":"))
    #: The assignment solver.
    solver: str = option("auto", _choice(SOLVERS))
    #: With more images than cells, keep a representative subset.
    subset: bool = option(False, _flag)
    #: Sort the grid locally against the embeddings after the assignment.
    refine: bool = option(True, _flag)
    #: Share of the grid's cells left empty, spread among the photos, so that photos added
    #: later find a cell beside their kin and the others keep theirs.
    room: float = option(0.0, _room)
    #: Assign afresh instead of updating the last grid (photos keep their cells).
    relayout: bool = option(False, _flag, fresh=False)

    def freshness(self) -> dict[str, Any]:
        # The grid wins over the aspect, so an aspect given beside a grid changes nothing.
        return {**super().freshness(), "aspect": None if self.grid else _jsonable(self.aspect)}


@dataclass(frozen=True)
class RenderOptions(StageOptions):
    """render: where the mosaic goes and how its tiles look."""

    stage: ClassVar[str] = "render"
    #: The picture or page to write; "-" for stdout.
    output: str = option("-", _text)
    #: Tile size in pixels.
    tile: int = option(128, _integer(4, 4096))
    #: How a photo fills its square tile.
    fit: str = option("crop", _choice(FITS))
    #: Pixels of background between tiles.
    gap: int = option(0, _integer(0, 4096))
    #: Colour of empty cells, gaps and margins.
    background: str = option("black", _colour)
    #: JPEG/WebP quality (also of the web page's tiles).
    quality: int = option(90, _integer(1, 100))
    #: Output format; "auto": from the output's extension.
    format: str = option("auto", _choice(FORMATS))
    #: Long side in pixels of the previews a web page's details panel shows; 0: none.
    preview: int = option(384, _integer(0, 4096))
    #: Web page: the label of each photo, to colour the map by and name its regions: a CSV file
    #: of path,label rows (paths relative to its folder), or a list of (path, label) pairs
    #: (relative to the working folder); None: the folders are the labels.
    labels: str | tuple[tuple[str, str], ...] | None = option(None, _labels)
    #: Write over an existing output file that gridtsne did not write.
    overwrite: bool = option(False, _flag, fresh=False)

    def freshness(self) -> dict[str, Any]:
        # "black" and "#000000" draw the same picture; labels inline count by their hash (a
        # labels file by its content, which render adds to its inputs).
        inline = isinstance(self.labels, tuple)
        return {**super().freshness(), "background": list(parse_colour(self.background)),
                "labels": _hash_of(self.to_dict()["labels"]) if inline else self.labels}  # fmt: skip


def _hash_of(value: Any) -> str:
    import hashlib
    import json

    return "sha256:" + hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()


STAGE_OPTIONS: dict[str, type[StageOptions]] = {
    kind.stage: kind for kind in (EmbedOptions, ReduceOptions, AssignOptions, RenderOptions)
}


@dataclass(frozen=True)
class PipelineOptions:
    """The options of all four stages, as ``gridtsne all`` takes them."""

    embed: EmbedOptions = field(default_factory=EmbedOptions)
    reduce: ReduceOptions = field(default_factory=ReduceOptions)
    assign: AssignOptions = field(default_factory=AssignOptions)
    render: RenderOptions = field(default_factory=RenderOptions)

    @classmethod
    def from_flat(cls, data: Mapping[str, Any]) -> PipelineOptions:
        """From one flat mapping of option names (as on the command line) to values."""
        if not isinstance(data, Mapping):
            raise OptionError("options", "the options must be a JSON object")
        by_stage: dict[str, dict[str, Any]] = {stage: {} for stage in STAGE_OPTIONS}
        for name, value in data.items():
            stages = [s for s, kind in STAGE_OPTIONS.items() if name in kind.names()]
            if not stages:
                known = sorted({n for kind in STAGE_OPTIONS.values() for n in kind.names()})
                raise OptionError(name, f"there is no option {name!r}: known are {', '.join(known)}")
            for stage in stages:  # ``relayout`` is reduce's and assign's
                by_stage[stage][name] = value
        return cls(**{stage: STAGE_OPTIONS[stage](**values) for stage, values in by_stage.items()})

    def to_flat(self) -> dict[str, Any]:
        return {
            name: value for stage in STAGE_OPTIONS for name, value in getattr(self, stage).to_dict().items()
        }
