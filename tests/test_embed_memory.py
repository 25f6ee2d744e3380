"""Memory while embedding: bounded by the work in flight, never by N, and by what one picture needs."""

import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gridtsne import embed
from gridtsne import images as imagelib
from gridtsne.cache import EmbeddingCache
from gridtsne.workdir import Workdir

MB = 2**20
DATA = Path(__file__).parent / "data"


class FakeModel(embed.Model):
    """The shipped model's preprocessing, a trivial network: 48 numbers sampled from the input."""

    def __init__(self):
        self.path, self.name, self.sha256 = Path("fake.onnx"), "fake", "0" * 64
        self.provider, self.prep = "CPUExecutionProvider", embed.Preprocessing()
        self.calls = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        return np.ascontiguousarray(batch[:, :, ::56, ::56].reshape(len(batch), -1), dtype=np.float32)


def peak_rss_growth(work):
    """``work()``'s result and how far it raised this process's peak resident memory, in bytes."""
    clear_refs = Path("/proc/self/clear_refs")
    try:
        clear_refs.write_text("5")  # resets the peak (VmHWM) to the current resident size
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    before = status("VmRSS")
    result = work()
    return result, status("VmHWM") - before


def tiny_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def test_each_prepared_picture_is_released_once_its_batch_is_embedded(tmp_path, monkeypatch):
    """200 files, batches of 8: never more than the batches in flight are held, and none at the end."""
    prepared = []
    prepare = embed.preprocess

    def tracked(image, prep):
        array = prepare(image, prep)
        prepared.append(weakref.ref(array))
        return array

    def alive():
        return sum(ref() is not None for ref in prepared)

    monkeypatch.setattr(embed, "preprocess", tracked)
    held = []

    class Watching(FakeModel):
        def __call__(self, batch):
            held.append(alive())
            return super().__call__(batch)

    photos = tiny_images(tmp_path / "photos", 200)
    work = Workdir(tmp_path / "work")
    summary = embed.run(work, [photos], model=Watching(), batch_size=8, jobs=2, progress=False)

    assert summary["embedded"] == summary["computed"] == 200
    assert max(held) <= 3 * 8, f"{max(held)} prepared pictures held at once"
    assert alive() == 0
    assert len(np.load(tmp_path / "work" / "embeddings.npy")) == 200


def strip_png(path: Path, width: int, height: int) -> Path:
    """A small file of a very long, thin picture: a gradient with a stripe."""
    along = np.linspace(0, 255, max(width, height)).astype(np.uint8)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = along[:height, None] if height > width else along[None, :width]
    pixels[..., 1] = 255 - pixels[..., 0]
    pixels[..., 2] = 90
    Image.fromarray(pixels).save(path)
    return path


def test_a_16_by_100000_pixel_strip_is_embedded_in_under_50_mb(tmp_path):
    """It used to be scaled to 256 x 1,600,000 pixels (1.9 GB) before its centre was cut out."""
    path = strip_png(tmp_path / "strip.png", 16, 100_000)
    cache = EmbeddingCache(tmp_path / "cache", "fake")
    prep = embed.Preprocessing()

    item, grown = peak_rss_growth(lambda: embed._prepare(path, cache, prep, imagelib.DEFAULT_MAX_PIXELS))

    assert item.reason == "" and item.size == (16, 100_000)
    assert item.array.shape == (3, 224, 224)
    assert grown < 50 * MB, f"{grown / MB:.0f} MB"
    # The centre of the strip, scaled: the middle of the gradient, left to right the same.
    assert np.allclose(item.array[0, 112], item.array[0, 112, 0], atol=0.05)


def test_cropping_first_keeps_what_the_model_sees_of_a_wide_picture(monkeypatch):
    """The crop-first path and scaling the whole picture agree to a few grey levels."""
    photo = Image.open(DATA / "chelsea.png").convert("RGB")
    wide = photo.resize((photo.width * 8, photo.height // 2), Image.BICUBIC)
    prep = embed.Preprocessing()
    cropped_first = embed.preprocess(wide, prep)
    monkeypatch.setattr(embed, "CROP_FIRST_ABOVE", 10**9)
    scaled_whole = embed.preprocess(wide, prep)
    assert np.abs(cropped_first - scaled_whole).max() <= 4 / 128
