"""Memory while embedding: bounded by the work in flight, never by N, and by what one picture needs."""

import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from gridtsne import embed
from gridtsne.workdir import Workdir


class FakeModel(embed.Model):
    """The shipped model's preprocessing, a trivial network: 48 numbers sampled from the input."""

    def __init__(self):
        self.path, self.name, self.sha256 = Path("fake.onnx"), "fake", "0" * 64
        self.provider, self.prep = "CPUExecutionProvider", embed.Preprocessing()
        self.calls = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        return np.ascontiguousarray(batch[:, :, ::56, ::56].reshape(len(batch), -1), dtype=np.float32)


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
