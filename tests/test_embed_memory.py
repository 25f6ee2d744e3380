"""Memory while embedding: bounded by the work in flight, never by N, and by what one picture needs."""

import json
import struct
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from gridtsne import embed, photo_model
from gridtsne import images as imagelib
from gridtsne.cache import EmbeddingCache
from gridtsne.options import EmbedOptions
from gridtsne.stage import Context
from gridtsne.workdir import Workdir

MB = 2**20
DATA = Path(__file__).parent / "data"


class FakeModel(photo_model.Model):
    """The shipped model's preprocessing, a trivial network: 48 numbers sampled from the input."""

    def __init__(self):
        self.path, self.name, self.sha256 = Path("fake.onnx"), "fake", "0" * 64
        self.provider, self.prep = "CPUExecutionProvider", photo_model.Preprocessing()
        self.calls = []

    def load(self):
        return self

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
    prepare = photo_model.preprocess

    def tracked(image, prep):
        array = prepare(image, prep)
        prepared.append(weakref.ref(array))
        return array

    def alive():
        return sum(ref() is not None for ref in prepared)

    monkeypatch.setattr(photo_model, "preprocess", tracked)
    held = []

    class Watching(FakeModel):
        def __call__(self, batch):
            held.append(alive())
            return super().__call__(batch)

    photos = tiny_images(tmp_path / "photos", 200)
    work = Workdir(tmp_path / "work")
    monkeypatch.setattr(photo_model, "model_for", lambda options: Watching())
    summary = embed.run(work, EmbedOptions(paths=[photos], batch_size=8), Context(jobs=2))

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
    prep = photo_model.Preprocessing()

    item, grown = peak_rss_growth(lambda: photo_model.prepare(path, cache, prep, imagelib.DEFAULT_MAX_PIXELS))

    assert item.reason == "" and item.size == (16, 100_000)
    assert item.array.shape == (3, 224, 224)
    assert grown < 50 * MB, f"{grown / MB:.0f} MB"
    # The centre of the strip, scaled: the middle of the gradient, left to right the same.
    assert np.allclose(item.array[0, 112], item.array[0, 112, 0], atol=0.05)


def test_cropping_first_keeps_what_the_model_sees_of_a_wide_picture(monkeypatch):
    """The crop-first path and scaling the whole picture agree to a few grey levels."""
    photo = Image.open(DATA / "chelsea.png").convert("RGB")
    wide = photo.resize((photo.width * 8, photo.height // 2), Image.BICUBIC)
    prep = photo_model.Preprocessing()
    cropped_first = photo_model.preprocess(wide, prep)
    monkeypatch.setattr(photo_model, "CROP_FIRST_ABOVE", 10**9)
    scaled_whole = photo_model.preprocess(wide, prep)
    assert np.abs(cropped_first - scaled_whole).max() <= 4 / 128


def test_a_picture_whose_conversion_would_copy_hundreds_of_mb_is_shrunk_first(tmp_path, monkeypatch):
    """Scaled down: over the threshold, an RGBA picture costs its decoded buffer and little more."""
    photo = Image.open(DATA / "chelsea.png").convert("RGBA").resize((451 * 4, 300 * 4), Image.BICUBIC)
    photo.putalpha(Image.linear_gradient("L").resize(photo.size))
    exif = Image.Exif()
    exif[imagelib.ORIENTATION_TAG] = 6  # upright is 1200 x 1804
    path = tmp_path / "big.png"
    photo.save(path, compress_level=1, exif=exif.tobytes())
    decoded = 1804 * 1200 * 4

    as_is, _ = imagelib.open_image(path)  # below the threshold: converted at full size
    monkeypatch.setattr(imagelib, "SHRINK_ABOVE_BYTES", 1 * MB)
    monkeypatch.setattr(imagelib, "STRIP_PIXELS", 2**16)
    (shrunk, size), grown = peak_rss_growth(lambda: imagelib.open_image(path, draft_px=256))

    assert size == (1200, 1804) and shrunk.mode == "RGB"
    assert shrunk.size == (600, 902)  # a whole factor, 2, that leaves the short side >= 2 x 256
    assert grown < 1.5 * decoded, f"{grown / MB:.0f} MB for a {decoded / MB:.0f} MB picture"
    prep = photo_model.Preprocessing()
    difference = np.abs(photo_model.preprocess(shrunk, prep) - photo_model.preprocess(as_is, prep))
    assert difference.mean() < 1 / 128


def header_only_png(width, height, colour_type):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_picture_whose_decoding_would_take_more_than_the_limit_is_refused_unread(tmp_path):
    """100 megapixels of RGBA is under the pixel limit, but as it is it takes 1.5 GB to turn into RGB."""
    path = tmp_path / "rgba.png"
    path.write_bytes(header_only_png(10_000, 10_000, colour_type=6))

    with pytest.raises(imagelib.UnreadableImage, match=r"too large: decoding 10000 x 10000 pixels \(RGBA\)"):
        imagelib.open_image(path)
    # Shrunk as it is decoded, it fits: this file then fails only for having no pixels.
    with pytest.raises(imagelib.UnreadableImage) as failed:
        imagelib.open_image(path, draft_px=256)
    assert failed.value.kind != "too large"


def test_running_out_of_memory_decoding_one_file_is_a_skip(tmp_path, monkeypatch):
    photos = tiny_images(tmp_path / "photos", 3)
    load = ImageFile.ImageFile.load

    def load_or_fail(image):
        if str(getattr(image.fp, "name", "")).endswith("001.png"):
            raise MemoryError
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_or_fail)
    with pytest.raises(imagelib.UnreadableImage, match="too large: out of memory decoding 24 x 20 pixels"):
        imagelib.open_image(photos / "001.png")

    monkeypatch.setattr(photo_model, "model_for", lambda options: FakeModel())
    summary = embed.run(Workdir(tmp_path / "work"), EmbedOptions(paths=[photos]))
    assert summary["embedded"] == 2 and summary["skipped_by_reason"] == {"too large": 1}


def test_running_out_of_memory_preparing_one_file_is_a_skip_not_the_end_of_the_run(tmp_path, monkeypatch):
    photos = tiny_images(tmp_path / "photos", 5)
    prepare = photo_model.preprocess

    def prepare_or_fail(image, prep):
        if image.getpixel((0, 0)) == Image.open(photos / "002.png").convert("RGB").getpixel((0, 0)):
            raise MemoryError
        return prepare(image, prep)

    monkeypatch.setattr(photo_model, "preprocess", prepare_or_fail)
    monkeypatch.setattr(photo_model, "model_for", lambda options: FakeModel())
    embed.run(Workdir(tmp_path / "work"), EmbedOptions(paths=[photos]))

    listing = json.loads((tmp_path / "work" / "images.json").read_text())
    assert [Path(entry["path"]).name for entry in listing["images"]] == [
        "000.png",
        "001.png",
        "003.png",
        "004.png",
    ]
    assert [(Path(s["path"]).name, s["reason"].split(":")[0]) for s in listing["skipped"]] == [
        ("002.png", "too large")
    ]
