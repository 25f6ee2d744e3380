"""embed: preprocessing, the shipped model's output, the embed stage's files."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gridtsne import embed, photo_model
from gridtsne.errors import OptionMismatch
from gridtsne.images import open_image
from gridtsne.options import EmbedOptions
from gridtsne.workdir import Workdir

DATA = Path(__file__).parent / "data"


def test_preprocessing_is_short_side_256_centre_224_normalised():
    image = Image.new("RGB", (512, 300), (255, 0, 127))
    array = photo_model.preprocess(image, photo_model.Preprocessing())
    assert array.shape == (3, 224, 224) and array.dtype == np.float32
    assert np.allclose(array[:, 100, 100], [(255 - 127) / 128, -127 / 128, 0])


def test_the_shipped_model_reproduces_the_recorded_reference_embedding(model):
    image, _ = open_image(DATA / "chelsea.png")
    vector = photo_model.embed_arrays(model, [photo_model.preprocess(image, model.prep)])[0]
    reference = np.load(DATA / "chelsea_embedding.npy")
    assert vector.shape == (1280,)
    assert np.abs(vector - reference).max() < 1e-3
    cosine = vector @ reference / np.linalg.norm(vector) / np.linalg.norm(reference)
    assert cosine > 0.99999


def test_similar_photos_get_similar_embeddings(model, photos):
    """A photo and a slightly cropped copy are closer than two different photos."""
    first, second = sorted(photos.glob("*.jpg"))[:2]
    a, _ = open_image(first)
    b, _ = open_image(second)
    crop = a.crop((8, 8, a.width - 8, a.height - 8))
    vectors = photo_model.embed_arrays(model, [photo_model.preprocess(x, model.prep) for x in (a, crop, b)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_batches_do_not_change_results(model, photos, tmp_path):
    one = Workdir(tmp_path / "one")
    many = Workdir(tmp_path / "many")
    embed.run(one, EmbedOptions(paths=[photos], batch_size=1))
    embed.run(many, EmbedOptions(paths=[photos], batch_size=64))
    assert np.allclose(np.load(one.file("embeddings.npy")), np.load(many.file("embeddings.npy")), atol=1e-4)


def test_a_user_model_with_its_preprocessing_json(tmp_path, photos, model):
    """Bring-your-own ONNX: the JSON beside the model sets its preprocessing."""
    import shutil

    shutil.copy(model.path, tmp_path / "mine.onnx")
    (tmp_path / "mine.json").write_text(json.dumps({"resize_short_side": 288, "std": [64, 64, 64]}))
    mine = photo_model.load_model(str(tmp_path / "mine.onnx"))
    assert mine.prep.resize_short_side == 288 and mine.prep.std == (64, 64, 64)
    assert mine.name == "mine.onnx"
    summary = embed.run(Workdir(tmp_path / "w"), EmbedOptions(paths=[photos], model=tmp_path / "mine.onnx"))
    assert summary["embedded"] == 12 and summary["dimension"] == 1280


def test_a_preprocessing_that_does_not_fit_the_model_is_a_clear_error(tmp_path, model):
    (tmp_path / "crop.json").write_text(json.dumps({"crop_size": 128}))
    with pytest.raises(OptionMismatch, match="takes 224x224 pixel input"):
        photo_model.load_model(str(model.path), preprocessing=str(tmp_path / "crop.json"))


def test_a_model_names_its_weights_without_starting_onnxruntime_until_it_is_used(model):
    """A driver that sends the work to a cluster needs the cache key, not the provider."""
    lazy = photo_model.load_model(provider="cuda", start=False)  # the shipped model; no CUDA here
    assert lazy.cache_key == model.cache_key and lazy.describe() == model.describe()
    with pytest.raises(OptionMismatch, match="CUDAExecutionProvider"):
        lazy.load()
