"""Stage 1, embed: one feature vector per image from a CNN run by onnxruntime.

Writes ``images.json`` (every file looked at: embedded, or skipped with its
reason), ``embeddings.npy`` (float32 N x D, row i = image i) and the
``embed.json`` manifest. Photos are decoded on threads while the model runs,
and every vector goes into the content-addressed cache (``cache.py``) as its
batch completes, so nothing is computed twice and an interrupted run resumes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gridtsne import images as imagelib
from gridtsne.cache import ENV_VAR as CACHE_ENV_VAR
from gridtsne.cache import EmbeddingCache, Record
from gridtsne.errors import Interrupted, OptionMismatch, StageError
from gridtsne.options import DEFAULT_MODEL, EmbedOptions
from gridtsne.stage import Context, Plan, Stage
from gridtsne.workdir import EMBEDDINGS, IMAGES, Workdir, file_hash, jsonable, save_json, save_npy


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes the model's input: resize, centre crop, normalise.

    Pixels are 0..255 RGB; the model sees ``(pixel - mean) / std``, NCHW float32.
    """

    resize_short_side: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    @classmethod
    def from_json(cls, path: Path) -> Preprocessing:
        try:
            spec = json.loads(Path(path).read_text())
            return cls(
                resize_short_side=int(spec.get("resize_short_side", cls.resize_short_side)),
                crop_size=int(spec.get("crop_size", cls.crop_size)),
                mean=tuple(float(v) for v in spec.get("mean", cls.mean)),
                std=tuple(float(v) for v in spec.get("std", cls.std)),
            )
        except (OSError, ValueError, TypeError) as error:
            raise OptionMismatch("preprocess", f"cannot read preprocessing from {path}: {error}") from None


#: Crop before scaling when scaling the whole picture would make more than this many crops'
#: worth of pixels (an aspect beyond about 12:1 with the shipped model): a 16 x 100,000
#: strip would otherwise become 256 x 1,600,000 pixels before its centre is cut out.
CROP_FIRST_ABOVE = 16


def preprocess(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """An RGB picture -> a 3 x crop x crop float32 array, ready for the model."""
    scale = prep.resize_short_side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    left = (size[0] - prep.crop_size) // 2
    top = (size[1] - prep.crop_size) // 2
    if size[0] * size[1] > CROP_FIRST_ABOVE * prep.crop_size**2 and min(left, top) >= 0:
        # Only the centre is scaled: the region the else branch keeps, to within a few grey levels.
        crop = prep.crop_size
        x_scale, y_scale = image.width / size[0], image.height / size[1]
        box = (left * x_scale, top * y_scale, (left + crop) * x_scale, (top + crop) * y_scale)
        image = image.resize((crop, crop), Image.BICUBIC, box=box)
    else:
        image = image.resize(size, Image.BICUBIC)
        image = image.crop((left, top, left + prep.crop_size, top + prep.crop_size))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class Model:
    """An ONNX image model: NCHW float32 in, one feature vector per image out.

    A 4-D output (N x C x H x W feature maps) is global-average-pooled.
    """

    def __init__(self, path: Path, prep: Preprocessing, name: str, threads: int = 0, provider: str = "cpu"):
        self.path = Path(path)
        self.name = name
        self.prep = prep
        self.sha256 = file_hash(self.path)
        self.threads, self.provider_asked = threads, provider
        self._session = None

    def load(self) -> Model:
        """Start onnxruntime on the model (once). Until then a Model only names its weights,
        which is all a driver that sends the work to a cluster needs: its workers, not
        the driver, must have the execution provider (a GPU)."""
        if self._session is not None:
            return self
        import onnxruntime

        self.provider = _provider_name(self.provider_asked, onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(str(self.path), options, providers=[self.provider])
        except Exception as error:  # onnxruntime raises its own unrelated types
            raise OptionMismatch("model", f"cannot load the ONNX model {self.path}: {error}") from None
        model_input = session.get_inputs()[0]
        fixed_size = [d for d in model_input.shape[2:] if isinstance(d, int)]
        if fixed_size and fixed_size != [self.prep.crop_size] * len(fixed_size):
            raise OptionMismatch(
                "preprocess",
                f"{self.path.name} takes {'x'.join(map(str, fixed_size))} pixel input but the "
                f"preprocessing crops to {self.prep.crop_size}: set crop_size in its preprocessing JSON",
            )
        self.input_name, self._session = model_input.name, session
        return self

    @property
    def session(self):
        return self.load()._session

    @property
    def cache_key(self) -> str:
        """Names the cache folder: the same bytes and preprocessing give the same vectors."""
        digest = hashlib.sha256(json.dumps(self.describe_weights(), sort_keys=True).encode())
        return f"{self.name}-{digest.hexdigest()[:16]}"

    def describe_weights(self) -> dict:
        return jsonable({"sha256": self.sha256, "preprocessing": asdict(self.prep)})

    def describe(self) -> dict:
        return jsonable(
            {
                "name": self.name,
                "path": str(self.path),
                "sha256": self.sha256,
                "preprocessing": asdict(self.prep),
            }
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self.input_name: batch})[:1]
        if features.ndim == 4:
            features = features.mean(axis=(2, 3))
        return np.asarray(features, dtype=np.float32).reshape(len(batch), -1)


def _provider_name(provider: str, available: list[str]) -> str:
    """``cpu``/``cuda``/... or a full onnxruntime provider name -> the full name, if installed."""
    full = (
        provider
        if provider.endswith("ExecutionProvider")
        else {
            "cpu": "CPUExecutionProvider",
            "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider",
            "rocm": "ROCMExecutionProvider",
            "coreml": "CoreMLExecutionProvider",
            "directml": "DmlExecutionProvider",
            "openvino": "OpenVINOExecutionProvider",
        }.get(provider.lower(), provider)
    )
    if full not in available:
        raise OptionMismatch(
            "provider",
            f"onnxruntime here has no {full}: available are {', '.join(available)}"
            + (" (for CUDA, install onnxruntime-gpu)" if full == "CUDAExecutionProvider" else ""),
        )
    return full


def model_for(options: EmbedOptions) -> Model:
    """The model ``options`` name, loaded once per process (and again if its file changes)."""
    try:
        stamp = os.stat(options.model)[6:9] if options.model not in (None, DEFAULT_MODEL) else None
    except OSError:
        stamp = None  # load_model says what is wrong
    return _loaded(options.model, options.preprocess, options.threads, options.provider, stamp)


def release_models() -> None:
    """Let the loaded models go (onnxruntime keeps a few hundred MB of arena per model)."""
    _loaded.cache_clear()


@functools.lru_cache(maxsize=4)
def _loaded(path, preprocessing, threads, provider, stamp) -> Model:
    return load_model(path, preprocessing, threads, provider, start=False)


def load_model(
    path: str | None = None,
    preprocessing: str | None = None,
    threads: int = 0,
    provider: str = "cpu",
    *,
    start: bool = True,
) -> Model:
    """The shipped EfficientNet-Lite0, or a user's ONNX file.

    A user's model takes its preprocessing from ``preprocessing`` (a JSON
    file), else from a JSON file of the same name beside it, else defaults.
    """
    if path is None or path == DEFAULT_MODEL:
        folder = resources.files("gridtsne.models")
        model_path = Path(str(folder / "efficientnet_lite0.onnx"))
        spec = Path(str(folder / "efficientnet_lite0.json"))
        name = DEFAULT_MODEL
    else:
        model_path = Path(path).absolute()
        if not model_path.is_file():
            raise OptionMismatch("model", f"no such model file: {model_path}")
        spec = model_path.with_suffix(".json")
        name = model_path.name
    if preprocessing is not None:
        spec = Path(preprocessing)
        if not spec.is_file():
            raise OptionMismatch("preprocess", f"no such preprocessing file: {spec}")
    prep = Preprocessing.from_json(spec) if spec.is_file() else Preprocessing()
    model = Model(model_path, prep, name, threads, provider)
    return model.load() if start else model


def embed_arrays(model: Model, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Embed preprocessed images (each 3 x H x W) in one batch."""
    return model(np.stack(arrays))


@dataclass(slots=True)
class _Item:
    """One input file on its way through the pipeline.

    ``array`` (the model's input, 600 KB) is held only until its batch is
    embedded; what is left is the record of the file, kept for every file.
    """

    path: Path
    bytes: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    array: np.ndarray | None = None
    computed: bool = False
    reason: str = ""


def _prepare(path: Path, cache: EmbeddingCache, prep: Preprocessing, max_pixels: int) -> _Item:
    """Identify one file and, unless its vector is cached, decode it. Never raises for a bad file."""
    item = _Item(path)
    try:
        stat = path.stat()
        item.bytes, item.mtime_ns = stat.st_size, stat.st_mtime_ns
        item.sha256 = cache.sha_of_unchanged(str(path), stat.st_size, stat.st_mtime_ns) or (
            imagelib.content_hash(path)
        )
        if item.sha256 not in cache.by_sha:
            image, item.size = imagelib.open_image(
                path, draft_px=prep.resize_short_side, max_pixels=max_pixels
            )
            item.array = preprocess(image, prep)
    except imagelib.UnreadableImage as error:
        item.reason = str(error)
    except FileNotFoundError:
        item.reason = "missing: the file disappeared"
    except MemoryError:  # one picture too large for what is free now must not end the run
        item.array = None
        item.reason = "too large: out of memory preparing it for the model"
    return item


def _prepared_batches(paths, prepare, batch_size: int, jobs: int) -> Iterator[list[_Item]]:
    """Decode batches on ``jobs`` threads while the caller runs the model.

    At most two batches are in flight, so memory stays bounded for any N;
    closing the generator (Ctrl-C) cancels what has not started.
    """
    batches = (paths[i : i + batch_size] for i in range(0, len(paths), batch_size))
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        in_flight = collections.deque(
            [pool.submit(prepare, path) for path in batch] for batch in islice(batches, 2)
        )
        while in_flight:
            futures = in_flight.popleft()
            following = next(batches, None)
            if following is not None:
                in_flight.append([pool.submit(prepare, path) for path in following])
            yield [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_shard(path: Path, shard: tuple[int, int]) -> bool:
    """Whether ``path`` belongs to shard K of N: a stable hash of its name decides."""
    index, count = shard
    return int(hashlib.sha1(str(path).encode()).hexdigest(), 16) % count == index - 1


def default_cache_dir(workdir: Workdir) -> Path:
    """``$GRIDTSNE_CACHE`` to share one cache between work directories, else ``WORK/cache``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or workdir.file("cache"))


def _find(options: EmbedOptions) -> imagelib.Found:
    return imagelib.find_images(options.paths, options.ext, options.exclude, options.hidden)


class EmbedStage(Stage):
    """Every image under the paths -> ``images.json`` and ``embeddings.npy``."""

    name = "embed"
    options_type = EmbedOptions
    writes = (IMAGES, EMBEDDINGS)

    def plan(self, workdir: Workdir, options: EmbedOptions) -> Plan:
        model = model_for(options)
        found = _find(options)
        parameters = {
            **options.freshness(),
            "paths": [os.path.abspath(p) for p in options.paths],
            "ext": sorted(options.ext),
            "model": model.describe(),
        }
        return Plan(parameters, {"files": imagelib.fingerprint(found.files)}, (model, found))

    def inputs(self, workdir: Workdir, options: EmbedOptions) -> dict:
        """Which files exist now, with their sizes and times."""
        return {"files": imagelib.fingerprint(_find(options).files)}

    def run(self, workdir, options=None, context=None, *, skip_if_fresh=False) -> dict:
        options = self.coerce(options)
        if options.shard is not None:
            return fill_cache(workdir, options, context or Context())
        return super().run(workdir, options, context, skip_if_fresh=skip_if_fresh)

    def compute(self, workdir: Workdir, options: EmbedOptions, context: Context, prepared) -> dict:
        model, found = prepared
        embedded, vectors, skipped, results = _embed_found(workdir, options, context, model, found)
        if not embedded:
            raise StageError(
                f"no image could be embedded from {', '.join(map(str, options.paths))}"
                + (
                    f" ({len(skipped)} skipped: {describe_skips(results['skipped_by_reason'])})"
                    if skipped
                    else ""
                )
            )
        save_npy(workdir.file(EMBEDDINGS), np.stack(vectors).astype(np.float32))
        left_out = {**found.left_out, "extensions": found.other_extensions} if found.left_out else {}
        save_json(workdir.file(IMAGES), {"images": embedded, "skipped": skipped, "left_out": left_out})
        return {
            **results,
            "dimension": len(vectors[0]),
            "left_out": sum(found.left_out.values()),
            "left_out_by_kind": found.left_out,
            "other_extensions": found.other_extensions,
        }

    def describe(self, summary: dict) -> str:
        shard = f" (shard {summary['shard']}, into the cache)" if "shard" in summary else ""
        reused = f" ({summary['reused']} from cache)" if summary["reused"] else ""
        skipped = (
            f", {summary['skipped']} skipped: {describe_skips(summary['skipped_by_reason'])}"
            if summary["skipped"]
            else ""
        )
        left_out = f", left out: {describe_left_out(summary)}" if summary.get("left_out") else ""
        return f"embed: {summary['embedded']} images embedded{shard}{reused}{skipped}{left_out}"


STAGE = EmbedStage()


def run(
    workdir: Workdir,
    options: EmbedOptions | dict | None = None,
    context: Context | None = None,
    *,
    skip_if_fresh: bool = False,
) -> dict:
    """Embed every image under ``options.paths`` into ``workdir``; returns a summary.

    With ``options.shard=(K, N)`` only the K-th of N slices is embedded, into the
    cache alone; a later run without a shard assembles every slice from it.
    """
    return STAGE.run(workdir, options, context, skip_if_fresh=skip_if_fresh)


def fill_cache(workdir: Workdir, options: EmbedOptions, context: Context) -> dict:
    """Embed the shard ``options.shard`` of the inputs into the cache alone: no artifact, no manifest."""
    started = time.perf_counter()
    embedded, _, _, results = _embed_found(workdir, options, context, model_for(options), _find(options))
    shard = f"{options.shard[0]}/{options.shard[1]}"
    return {"stage": "embed", "ran": True, "shard": shard, **results,
            "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def _embed_found(workdir: Workdir, options: EmbedOptions, context: Context, model: Model, found) -> tuple:
    """Embed the files found (those of ``options.shard`` only, if set) through the cache:
    the images.json entries, their vectors, the skipped files, and the counts."""
    cache = EmbeddingCache(options.cache or default_cache_dir(workdir), model.cache_key)
    files = [path for path in found.files if options.shard is None or in_shard(path, options.shard)]
    if not context.cluster:
        model.load()  # a missing provider or a model that does not fit: said before any work
    if context.cluster:  # the same items, made on a Dask cluster (imported only then)
        from gridtsne import cluster

        outcome = cluster.embed_files(files, cache, options, context)
    else:
        outcome = _embed_files(files, cache, model, options.batch_size, context.jobs, options.max_pixels,
                               context.progress, lambda done: context.on_progress("embed", done))  # fmt: skip
    embedded, vectors = [], []
    skipped = [{"path": str(path), "reason": reason} for path, reason in found.skipped]
    for item in outcome:
        if item.reason:
            skipped.append({"path": str(item.path), "reason": item.reason})
            continue
        record = cache.by_sha[item.sha256]
        embedded.append({"path": str(item.path), "bytes": item.bytes, "sha256": item.sha256,
                         "width": record.width, "height": record.height})  # fmt: skip
        vectors.append(record.vector)
    computed = sum(item.computed for item in outcome)
    results = {
        "embedded": len(embedded),
        "computed": computed,
        "reused": len(embedded) - computed,
        "skipped": len(skipped),
        "skipped_by_reason": dict(collections.Counter(imagelib.reason_kind(s["reason"]) for s in skipped)),
    }
    cache.note_used([item.sha256 for item in outcome if not item.reason and not item.computed])
    if options.shard is None and embedded:
        cache.compact()
    return embedded, vectors, skipped, results


def _embed_files(
    files: list[Path],
    cache: EmbeddingCache,
    model: Model,
    batch_size: int,
    jobs: int,
    max_pixels: int,
    progress: bool,
    on_progress=lambda fraction: None,
) -> list[_Item]:
    """Run the model over every file not yet cached, saving each batch as it completes."""
    outcome: list[_Item] = []
    computed = 0
    batches = _prepared_batches(
        files, lambda path: _prepare(path, cache, model.prep, max_pixels), batch_size, jobs
    )
    bar = tqdm(
        total=len(files), unit="img", desc="embed", disable=None if progress else True, file=sys.stderr
    )
    try:
        with contextlib.closing(batches):
            for batch in batches:
                fresh = [item for item in batch if item.array is not None]
                vectors = embed_arrays(model, [item.array for item in fresh]) if fresh else []
                records = [_record(item, vector) for item, vector in zip(fresh, vectors, strict=True)]
                # Known content under a new name or time: index it, so the next run need not read it.
                records += [
                    _record(item, cache.by_sha[item.sha256].vector, cache.by_sha[item.sha256])
                    for item in batch
                    if item.array is None
                    and not item.reason
                    and cache.sha_of_unchanged(str(item.path), item.bytes, item.mtime_ns) is None
                ]
                cache.add(records)
                for item in fresh:
                    item.array, item.computed = None, True
                computed += len(fresh)
                outcome.extend(batch)
                bar.update(len(batch))
                on_progress(len(outcome) / len(files))
    except KeyboardInterrupt:
        raise Interrupted(
            f"embed interrupted after {len(outcome)} of {len(files)} files; the {computed} embeddings "
            "made so far are saved in the cache: run the same command again to continue"
        ) from None
    finally:
        bar.close()
    return outcome


def _record(item: _Item, vector: np.ndarray, known: Record | None = None) -> Record:
    width, height = (known.width, known.height) if known else item.size
    return Record(str(item.path), item.bytes, item.mtime_ns, item.sha256, width, height, vector)


def describe_left_out(summary: dict) -> str:
    """``"30 not an image extension (.txt 10, .json 8, ...), 2 hidden files"``: what a walk left
    out, so that every file in a folder is accounted for."""
    extensions = sorted(summary.get("other_extensions", {}).items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{suffix} {count}" for suffix, count in extensions[:5])
    more = ", ..." if len(extensions) > 5 else ""
    parts = []
    for kind, count in sorted(summary["left_out_by_kind"].items(), key=lambda item: (-item[1], item[0])):
        detail = f" ({shown}{more})" if kind == "not an image extension" and shown else ""
        plural = "s" if count != 1 and kind.startswith("hidden") else ""
        parts.append(f"{count} {kind}{plural}{detail}")
    return ", ".join(parts)


def describe_skips(by_reason: dict[str, int]) -> str:
    """``{"not an image": 2, "truncated": 1}`` -> ``"2 not an image, 1 truncated"``."""
    ordered = sorted(by_reason.items(), key=lambda kind_count: (-kind_count[1], kind_count[0]))
    return ", ".join(f"{count} {kind}" for kind, count in ordered)
