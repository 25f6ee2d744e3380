"""Safety: gridtsne never writes through a link, and odd inputs are skipped with a reason."""

import io
import os

import pytest
from PIL import Image

from gridtsne import images
from gridtsne.images import UnreadableImage
from gridtsne.workdir import StageError, Workdir


def test_the_lock_never_follows_a_link_and_never_empties_a_file(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    work = Workdir(tmp_path / "work")
    work.path.mkdir()
    (work.path / ".lock").symlink_to(precious)
    with pytest.raises(StageError, match=r"\.lock is a symbolic link.*remove the link"):
        with work.lock():
            pass
    assert precious.read_text() == "keep me"


def test_a_dangling_lock_link_creates_nothing_where_it_points(tmp_path):
    work = Workdir(tmp_path / "work")
    work.path.mkdir()
    (work.path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StageError, match="symbolic link"):
        with work.lock():
            pass
    assert not (tmp_path / "elsewhere").exists()


def test_the_lock_file_is_kept_not_truncated(tmp_path):
    work = Workdir(tmp_path)
    (tmp_path / ".lock").write_text("left by an earlier run")
    with work.lock():
        pass
    assert (tmp_path / ".lock").read_text() == "left by an earlier run"
    assert os.listdir(tmp_path) == [".lock"]


@pytest.mark.parametrize(
    "fmt, cut", [("JPEG", 0.05), ("JPEG", 0.5), ("PNG", 0.5), ("GIF", 0.5), ("TIFF", 0.5)]
)
def test_a_file_cut_short_is_truncated_not_corrupt(tmp_path, fmt, cut):
    full = io.BytesIO()
    Image.effect_noise((120, 90), 60).convert("RGB").save(full, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(full.getvalue()[: int(len(full.getvalue()) * cut)])
    with pytest.raises(UnreadableImage, match="^truncated: "):
        images.open_image(path)
