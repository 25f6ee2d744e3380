"""Shared fixtures: a few real photos copied from sample_images/ into a temporary folder."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtsne import embed

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
    return embed.load_model()


@pytest.fixture
def cli(monkeypatch):
    """Invoke ``gridtsne`` in-process; returns click's Result."""
    from gridtsne.cli import main

    monkeypatch.delenv("GRIDTSNE_WORKDIR", raising=False)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
