"""Shared fixtures: a few real photos copied from sample_images/ into a temporary folder."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from gridtsne import photo_model

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_images"
DATA = Path(__file__).resolve().parent / "data"


def sample_photos(count: int) -> list[Path]:
    """``count`` photos spread over the sample set (not just its first category)."""
    photos = sorted(SAMPLES.glob("*.jpg"))
    step = max(1, len(photos) // count)
    return photos[::step][:count]


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of 12 real photos, one in a subfolder to check the recursive walk."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    chosen = sample_photos(12)
    for index, photo in enumerate(chosen):
        target = folder / "more" if index == 0 else folder
        shutil.copy(photo, target / photo.name)
    return folder


@pytest.fixture(scope="session")
def model():
    return photo_model.load_model()


@pytest.fixture
def cli(monkeypatch):
    """Invoke ``gridtsne`` in-process; returns click's Result."""
    from gridtsne.cli import main

    monkeypatch.delenv("GRIDTSNE_WORKDIR", raising=False)
    monkeypatch.setenv("GRIDTSNE_DEBUG", "1")  # a bug raises in the test instead of becoming one line
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def layout_workdir(folder: Path, photo_paths: list[Path], cell_of_image, rows: int, cols: int):
    """A work directory as embed, reduce and assign leave it, for these photos in these cells.

    Lets render and export be tested on chosen photos and cells without running the model.
    """
    import hashlib

    import numpy as np

    from gridtsne import assign
    from gridtsne.workdir import COORDS, EMBEDDINGS, IMAGES, Workdir, save_json, save_npy

    work = Workdir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = [
        {"path": str(path), "bytes": path.stat().st_size,
         "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "width": 0, "height": 0}
        for path in photo_paths
    ]  # fmt: skip
    save_json(work.file(IMAGES), {"images": entries, "skipped": []})
    cells = np.asarray(cell_of_image, dtype=np.int32)
    rows_of, cols_of = np.divmod(cells, cols)
    coords = np.stack([cols_of / max(cols - 1, 1), rows_of / max(rows - 1, 1)], axis=1)
    save_npy(work.file(COORDS), coords.astype(np.float32))
    save_npy(work.file(EMBEDDINGS), np.eye(len(cells), dtype=np.float32))  # assign's freshness reads it
    assign.save_grid(work, cells, rows, cols)
    return work


@pytest.fixture
def colour_photos(tmp_path) -> list[Path]:
    """Six photos of one colour each (some not square), so a test can tell tiles apart by colour."""
    folder = tmp_path / "colours"
    folder.mkdir()
    colours = ["red", "lime", "blue", "yellow", "magenta", "cyan"]
    sizes = [(120, 80), (80, 120), (100, 100), (300, 200), (64, 64), (90, 60)]
    paths = []
    for name, size in zip(colours, sizes, strict=True):
        path = folder / f"{name}.jpg"
        Image.new("RGB", size, name).save(path, quality=95)
        paths.append(path)
    return paths


class FakeModel:
    """A stand-in for the ONNX model: a 4 x 4 grid of mean colours (48 numbers) per image.

    Similar pictures still get similar vectors, so the plumbing, freshness and
    CLI tests that use it see real behaviour, in a fraction of the time.
    """

    name = "fake"
    path = Path("fake.onnx")
    sha256 = "0" * 64
    cache_key = "fake-0"
    prep = photo_model.Preprocessing(resize_short_side=32, crop_size=32)

    def describe(self) -> dict:
        return {"name": self.name}

    def load(self) -> "FakeModel":
        return self

    def __call__(self, batch):
        return batch.reshape(len(batch), 3, 4, 8, 4, 8).mean(axis=(3, 5)).reshape(len(batch), -1)


@pytest.fixture
def fake_model(monkeypatch) -> FakeModel:
    """Make every embed in this test use ``FakeModel`` instead of the shipped network."""
    model = FakeModel()
    monkeypatch.setattr(photo_model, "model_for", lambda options: model)
    return model
