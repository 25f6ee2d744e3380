"""The per-photo work, whoever runs it: a photo -> the model's input -> a vector -> a cache record.

The model (``Model``, ``load_model``, ``model_for``), its preprocessing, and
the steps one photo takes on its way to a vector (``prepare``: identify and
decode; ``prepared_batches``: decode on threads while the model runs;
``cache_record``: what the cache keeps of it). The embed stage
(``embed.py``) runs them here, and a Dask worker (``cluster.py``) runs them
on a cluster; both use this public interface, so neither stage nor runner
reaches into the other and the same photo gives the same vector either way.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from gridtsne import images as imagelib
from gridtsne.cache import EmbeddingCache, Record
from gridtsne.errors import OptionMismatch
from gridtsne.options import DEFAULT_MODEL, EmbedOptions
from gridtsne.workdir import file_hash, jsonable


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
class Item:
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


def prepare(path: Path, cache: EmbeddingCache, prep: Preprocessing, max_pixels: int) -> Item:
    """Identify one file and, unless its vector is cached, decode it. Never raises for a bad file."""
    item = Item(path)
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


def prepared_batches(paths, prepare_one, batch_size: int, jobs: int) -> Iterator[list[Item]]:
    """``prepare_one(path)`` for each path, in batches, on ``jobs`` threads while the caller runs the model.

    At most two batches are in flight, so memory stays bounded for any N;
    closing the generator (Ctrl-C) cancels what has not started.
    """
    batches = (paths[i : i + batch_size] for i in range(0, len(paths), batch_size))
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        in_flight = collections.deque(
            [pool.submit(prepare_one, path) for path in batch] for batch in islice(batches, 2)
        )
        while in_flight:
            futures = in_flight.popleft()
            following = next(batches, None)
            if following is not None:
                in_flight.append([pool.submit(prepare_one, path) for path in following])
            yield [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def cache_record(item: Item, vector: np.ndarray, known: Record | None = None) -> Record:
    """What the cache keeps of ``item``: its vector, under its path, size, time and content hash.
    ``known``: the cache's record of the same content (under another name), for its pixel size."""
    width, height = (known.width, known.height) if known else item.size
    return Record(str(item.path), item.bytes, item.mtime_ns, item.sha256, width, height, vector)
