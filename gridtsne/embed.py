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
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
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
from gridtsne.workdir import (
    EMBEDDINGS,
    IMAGES,
    Interrupted,
    StageError,
    Workdir,
    file_hash,
    jsonable,
    save_json,
    save_npy,
)

STAGE = "embed"
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_BATCH_SIZE = 32
DEFAULT_JOBS = min(4, os.cpu_count() or 1)
DEFAULT_THREADS = 0


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
            raise StageError(f"cannot read preprocessing from {path}: {error}") from None


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
        import onnxruntime

        self.path = Path(path)
        self.name = name
        self.prep = prep
        self.sha256 = file_hash(self.path)
        self.provider = _provider_name(provider, onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=[self.provider])
        except Exception as error:  # onnxruntime raises its own unrelated types
            raise StageError(f"cannot load the ONNX model {self.path}: {error}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        fixed_size = [d for d in model_input.shape[2:] if isinstance(d, int)]
        if fixed_size and fixed_size != [prep.crop_size] * len(fixed_size):
            raise StageError(
                f"{self.path.name} takes {'x'.join(map(str, fixed_size))} pixel input but the "
                f"preprocessing crops to {prep.crop_size}: set crop_size in its preprocessing JSON"
            )

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
        raise StageError(
            f"onnxruntime here has no {full}: available are {', '.join(available)}"
            + (" (for CUDA, install onnxruntime-gpu)" if full == "CUDAExecutionProvider" else "")
        )
    return full


def load_model(
    path: str | None = None, preprocessing: str | None = None, threads: int = 0, provider: str = "cpu"
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
            raise StageError(f"no such model file: {model_path}")
        spec = model_path.with_suffix(".json")
        name = model_path.name
    if preprocessing is not None:
        spec = Path(preprocessing)
        if not spec.is_file():
            raise StageError(f"no such preprocessing file: {spec}")
    prep = Preprocessing.from_json(spec) if spec.is_file() else Preprocessing()
    return Model(model_path, prep, name, threads, provider)


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


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"{text!r} is not K/N, e.g. 2/8") from None
    if not 1 <= index <= count:
        raise ValueError(f"shard {text}: K must be between 1 and N")
    return index, count


def default_cache_dir(workdir: Workdir) -> Path:
    """``$GRIDTSNE_CACHE`` to share one cache between work directories, else ``WORK/cache``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or workdir.file("cache"))


def parameters(
    paths: Iterable[str],
    model: Model,
    extensions: Sequence[str],
    max_pixels: int,
    exclude: Iterable[str],
    hidden: bool,
) -> dict:
    return {
        "paths": [os.path.abspath(p) for p in paths],
        "exclude": [os.path.abspath(p) for p in exclude],
        "extensions": sorted(ext.lower() for ext in extensions),
        "hidden": hidden,
        "max_pixels": max_pixels,
        "model": model.describe(),
    }


def _find(params: dict) -> imagelib.Found:
    return imagelib.find_images(params["paths"], params["extensions"], params["exclude"], params["hidden"])


def current_inputs(params: dict) -> dict:
    """The input fingerprint: which files exist now, with their sizes and times."""
    return {"files": imagelib.fingerprint(_find(params).files)}


def run(
    workdir: Workdir,
    paths: Sequence[str],
    *,
    model: Model,
    extensions: Sequence[str] = imagelib.DEFAULT_EXTENSIONS,
    hidden: bool = False,
    max_pixels: int = imagelib.DEFAULT_MAX_PIXELS,
    exclude: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    jobs: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    skip_if_fresh: bool = False,
) -> dict:
    """Embed every image under ``paths`` into ``workdir``; returns a summary.

    With ``shard=(K, N)`` only the K-th of N slices is embedded, into the
    cache alone; a later run without a shard assembles every slice from it.
    """
    started = time.perf_counter()
    params = parameters(paths, model, extensions, max_pixels, exclude, hidden)
    found = _find(params)
    inputs = {"files": imagelib.fingerprint(found.files)}
    if shard is None and skip_if_fresh and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary

    cache = EmbeddingCache(cache_dir or default_cache_dir(workdir), model.cache_key)
    files = [path for path in found.files if shard is None or in_shard(path, shard)]
    outcome = _embed_files(files, cache, model, batch_size, jobs or DEFAULT_JOBS, max_pixels, progress)

    embedded, vectors = [], []
    skipped = [{"path": str(path), "reason": reason} for path, reason in found.skipped]
    for item in outcome:
        if item.reason:
            skipped.append({"path": str(item.path), "reason": item.reason})
            continue
        record = cache.by_sha[item.sha256]
        embedded.append(
            {
                "path": str(item.path),
                "bytes": item.bytes,
                "sha256": item.sha256,
                "width": record.width,
                "height": record.height,
            }
        )
        vectors.append(record.vector)
    computed = sum(item.computed for item in outcome)
    results = {
        "embedded": len(embedded),
        "computed": computed,
        "reused": len(embedded) - computed,
        "skipped": len(skipped),
        "skipped_by_reason": dict(collections.Counter(imagelib.reason_kind(s["reason"]) for s in skipped)),
    }
    if shard is not None:
        return {
            "stage": STAGE,
            "ran": True,
            "shard": f"{shard[0]}/{shard[1]}",
            **results,
            "seconds": round(time.perf_counter() - started, 3),
        }
    if not embedded:
        raise StageError(
            f"no image could be embedded from {', '.join(map(str, paths))}"
            + (
                f" ({len(skipped)} skipped: {describe_skips(results['skipped_by_reason'])})"
                if skipped
                else ""
            )
        )
    cache.compact()
    save_npy(workdir.file(EMBEDDINGS), np.stack(vectors).astype(np.float32))
    save_json(workdir.file(IMAGES), {"images": embedded, "skipped": skipped})
    results["dimension"] = len(vectors[0])
    outputs = {IMAGES: workdir.file(IMAGES), EMBEDDINGS: workdir.file(EMBEDDINGS)}
    return workdir.finish_stage(STAGE, params, inputs, outputs, started, results)


def _embed_files(
    files: list[Path],
    cache: EmbeddingCache,
    model: Model,
    batch_size: int,
    jobs: int,
    max_pixels: int,
    progress: bool,
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


def describe_skips(by_reason: dict[str, int]) -> str:
    """``{"not an image": 2, "truncated": 1}`` -> ``"2 not an image, 1 truncated"``."""
    ordered = sorted(by_reason.items(), key=lambda kind_count: (-kind_count[1], kind_count[0]))
    return ", ".join(f"{count} {kind}" for kind, count in ordered)
