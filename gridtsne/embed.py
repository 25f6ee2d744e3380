"""Stage 1, embed: one feature vector per image from a CNN run by onnxruntime.

Writes ``images.json`` (what was embedded and what was skipped, and why),
``embeddings.npy`` (float32 N x D, row i = image i) and the ``embed.json``
manifest. Rows whose file content and model are unchanged since the previous
run are taken from the previous ``embeddings.npy`` instead of recomputed.
"""

from __future__ import annotations

import collections
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
from gridtsne.workdir import (
    EMBEDDINGS,
    IMAGES,
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


def preprocess(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """An RGB picture -> a 3 x crop x crop float32 array, ready for the model."""
    scale = prep.resize_short_side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left = (image.width - prep.crop_size) // 2
    top = (image.height - prep.crop_size) // 2
    image = image.crop((left, top, left + prep.crop_size, top + prep.crop_size))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class Model:
    """An ONNX image model: NCHW float32 in, one feature vector per image out.

    A 4-D output (N x C x H x W feature maps) is global-average-pooled.
    """

    def __init__(self, path: Path, prep: Preprocessing, name: str, threads: int = 0):
        import onnxruntime

        self.path = Path(path)
        self.name = name
        self.prep = prep
        self.sha256 = file_hash(self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
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

    def describe(self) -> dict:
        return jsonable({"name": self.name, "path": str(self.path), "sha256": self.sha256,
                         "preprocessing": asdict(self.prep)})

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self.input_name: batch})[:1]
        if features.ndim == 4:
            features = features.mean(axis=(2, 3))
        return np.asarray(features, dtype=np.float32).reshape(len(batch), -1)


def load_model(path: str | None = None, preprocessing: str | None = None, threads: int = 0) -> Model:
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
    return Model(model_path, prep, name, threads)


def embed_arrays(model: Model, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Embed preprocessed images (each 3 x H x W) in one batch."""
    return model(np.stack(arrays))


@dataclass
class _Prepared:
    path: Path
    sha256: str = ""
    bytes: int = 0
    width: int = 0
    height: int = 0
    array: np.ndarray | None = None
    reason: str = ""


def _prepare(path: Path, prep: Preprocessing, max_pixels: int, need_pixels: bool) -> _Prepared:
    """Read, hash and (unless cached) decode one file; never raises for a bad file."""
    item = _Prepared(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        item.reason = f"cannot read: {error.strerror or error}"
        return item
    item.sha256 = hashlib.sha256(data).hexdigest()
    item.bytes = len(data)
    if not need_pixels(item.sha256):
        return item
    try:
        image, (item.width, item.height) = imagelib.open_image(
            path, data=data, draft_px=prep.resize_short_side, max_pixels=max_pixels
        )
        item.array = preprocess(image, prep)
    except imagelib.UnreadableImage as error:
        item.reason = str(error)
    return item


def _prepared_batches(paths, prepare, batch_size: int, jobs: int) -> Iterator[list[_Prepared]]:
    """Decode batches on ``jobs`` threads while the caller runs the model.

    At most two batches are in flight, so memory stays bounded for any N.
    """
    batches = (paths[i : i + batch_size] for i in range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        in_flight = collections.deque(
            [pool.submit(prepare, path) for path in batch] for batch in islice(batches, 2)
        )
        while in_flight:
            futures = in_flight.popleft()
            following = next(batches, None)
            if following is not None:
                in_flight.append([pool.submit(prepare, path) for path in following])
            yield [future.result() for future in futures]


def _previous_rows(workdir: Workdir, model: Model) -> dict[str, tuple[np.ndarray, dict]]:
    """Embeddings of the previous run by content hash, if made by this model."""
    manifest = workdir.read_manifest(STAGE)
    if not manifest or manifest["params"].get("model") != model.describe():
        return {}
    try:
        listing = workdir.load_images()
        vectors = np.load(workdir.file(EMBEDDINGS), allow_pickle=False)
    except (OSError, ValueError, StageError):
        return {}
    if len(vectors) != len(listing["images"]):
        return {}
    return {entry["sha256"]: (vectors[i], entry) for i, entry in enumerate(listing["images"])}


def parameters(
    paths: Iterable[str], model: Model, extensions: Sequence[str], max_pixels: int, exclude: Iterable[str]
) -> dict:
    return {
        "paths": [str(Path(p).absolute()) for p in paths],
        "exclude": [str(Path(p).absolute()) for p in exclude],
        "extensions": sorted(ext.lower() for ext in extensions),
        "max_pixels": max_pixels,
        "model": model.describe(),
    }


def current_inputs(params: dict) -> dict:
    """The input fingerprint: which files exist now, with their sizes and times."""
    found = imagelib.find_images(params["paths"], params["extensions"], params["exclude"])
    return {"files": imagelib.fingerprint(found.files)}


def run(
    workdir: Workdir,
    paths: Sequence[str],
    *,
    model: Model,
    extensions: Sequence[str] = imagelib.DEFAULT_EXTENSIONS,
    max_pixels: int = imagelib.DEFAULT_MAX_PIXELS,
    exclude: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    jobs: int | None = None,
    progress: bool = True,
    skip_if_fresh: bool = False,
) -> dict:
    """Embed every image under ``paths`` into ``workdir``; returns a summary."""
    started = time.perf_counter()
    params = parameters(paths, model, extensions, max_pixels, exclude)
    found = imagelib.find_images(params["paths"], params["extensions"], params["exclude"])
    inputs = {"files": imagelib.fingerprint(found.files)}
    if skip_if_fresh and (summary := workdir.fresh_summary(STAGE, params, inputs)):
        return summary

    cached = _previous_rows(workdir, model)
    prepare = lambda path: _prepare(  # noqa: E731
        path, model.prep, max_pixels, need_pixels=lambda sha: sha not in cached
    )
    embedded: list[dict] = []
    vectors: list[np.ndarray] = []
    skipped = [{"path": str(path), "reason": reason} for path, reason in found.missing]
    reused = 0
    jobs = jobs or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(found.files), unit="img", desc="embed", disable=None if progress else True,
               file=sys.stderr)
    for batch in _prepared_batches(found.files, prepare, batch_size, jobs):
        fresh = [item for item in batch if item.array is not None]
        fresh_vectors = iter(embed_arrays(model, [i.array for i in fresh]) if fresh else [])
        for item in batch:
            if item.reason:
                skipped.append({"path": str(item.path), "reason": item.reason})
                continue
            if item.array is not None:
                vectors.append(next(fresh_vectors))
            else:
                vector, previous = cached[item.sha256]
                item.width, item.height = previous["width"], previous["height"]
                vectors.append(vector)
                reused += 1
            embedded.append({"path": str(item.path), "bytes": item.bytes, "sha256": item.sha256,
                             "width": item.width, "height": item.height})
        bar.update(len(batch))
    bar.close()

    if not embedded:
        raise StageError(
            f"no image could be embedded from {', '.join(map(str, paths))}"
            + (f" ({len(skipped)} files skipped: {summarise_reasons(skipped)})" if skipped else "")
        )
    dimension = len(vectors[0])
    save_npy(workdir.file(EMBEDDINGS), np.asarray(vectors, dtype=np.float32).reshape(-1, dimension))
    save_json(workdir.file(IMAGES), {"images": embedded, "skipped": skipped})
    results = {
        "embedded": len(embedded),
        "reused": reused,
        "skipped": len(skipped),
        "skipped_by_reason": reasons_count(skipped),
        "dimension": dimension,
    }
    outputs = {IMAGES: workdir.file(IMAGES), EMBEDDINGS: workdir.file(EMBEDDINGS)}
    return workdir.finish_stage(STAGE, params, inputs, outputs, started, results)


def reasons_count(skipped: list[dict]) -> dict[str, int]:
    """Skip reasons grouped by their kind (the text before the first colon)."""
    return dict(collections.Counter(entry["reason"].split(":")[0] for entry in skipped))


def summarise_reasons(skipped: list[dict]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in reasons_count(skipped).items())
