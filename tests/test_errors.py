"""Every error a user can cause is one line naming the file or option and what to do; nothing half-written."""

import errno
import json

import numpy as np
import pytest

from gridtsne import render, workdir


@pytest.fixture
def done(cli, fake_model, photos, tmp_path):
    """A work directory through every stage (12 photos, fake model), and its mosaic."""
    work, out = tmp_path / "work", tmp_path / "m.png"
    assert cli("all", photos, out, "-w", work, "--tile", 8).exit_code == 0
    return work, out


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("artifact", "content", "stage", "rerun"),
    [
        ("coords.npy", np.full((12, 2), np.nan, dtype=np.float32), "assign", "gridtsne reduce"),
        ("coords.npy", np.zeros((12, 3), dtype=np.float32), "assign", "gridtsne reduce"),
        ("embeddings.npy", np.full((12, 48), np.inf, dtype=np.float32), "reduce", "gridtsne embed"),
        ("embeddings.npy", np.zeros(12, dtype=np.float32), "reduce", "gridtsne embed"),
        ("grid.npy", np.zeros(12, dtype=np.int32), "render", "gridtsne assign"),  # one cell for all
        ("grid.npy", np.arange(12, dtype=np.float32), "render", "gridtsne assign"),
        ("grid.npy", np.arange(12, dtype=np.int32) + 100, "render", "gridtsne assign"),
        ("images.json", {"images": 3}, "render", "gridtsne embed"),
        ("images.json", b"\xff not json", "render", "gridtsne embed"),
        ("grid.npy", b"PK\x03\x04 an archive, not an array", "render", "gridtsne assign"),
    ],
)
def test_a_damaged_artifact_is_named_with_the_stage_to_rerun(cli, done, artifact, content, stage, rerun):
    work, out = done
    path = work / artifact
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))
    args = (stage, out, "-w", work, "--tile", 9) if stage == "render" else (stage, "-w", work)
    one_line_error(cli(*args), artifact, "damaged", rerun)


def test_a_full_disk_names_the_file_and_leaves_the_old_artifact_whole(cli, done, monkeypatch):
    work, _ = done
    before = {name: (work / name).read_bytes() for name in ("coords.npy", "reduce-state.npz")}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workdir.os, "fsync", full)
    # The map's state is written first (then coords.npy): the first file the full disk refuses.
    one_line_error(cli("reduce", "-w", work, "--seed", 9), "reduce-state.npz", "No space left on device")
    assert {name: (work / name).read_bytes() for name in before} == before
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_a_read_only_work_directory_is_one_line(cli, done, monkeypatch):
    work, _ = done

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(workdir.tempfile, "mkstemp", read_only)
    one_line_error(cli("reduce", "-w", work, "--seed", 9), str(work), "Read-only file system")


def test_a_paths_file_that_is_not_utf8_is_one_line(cli, tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 4), dtype=np.float32))
    (tmp_path / "paths.txt").write_bytes(b"a.jpg\n\xff.jpg\n")
    result = cli(
        "reduce", "-w", tmp_path / "w", "--embeddings", tmp_path / "v.npy", "--paths", tmp_path / "paths.txt"
    )
    one_line_error(result, "paths.txt", "not UTF-8")


def test_an_absurd_grid_is_refused_at_once(cli, done):
    work, _ = done
    one_line_error(cli("assign", "-w", work, "--grid", "1000x1000"), "--grid", "1000x1000", "12 images")


def test_rows_too_wide_for_memory_are_refused_before_any_photo_is_decoded(cli, done, monkeypatch):
    work, _ = done
    monkeypatch.setattr(render, "available_memory_bytes", lambda: 2**30)
    result = cli("render", work.parent / "huge.png", "-w", work, "--tile", 4096, "--gap", 4096)
    one_line_error(result, "--tile", "--gap", "GiB")
    assert not (work.parent / "huge.png").exists()


def test_a_bug_is_one_line_unless_debugging(cli, done, monkeypatch):
    work, _ = done
    monkeypatch.delenv("GRIDTSNE_DEBUG")

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr("gridtsne.pipeline.stage_status", broken)
    one_line_error(cli("status", "-w", work), "unexpected KeyError", "GRIDTSNE_DEBUG=1")


def test_a_usage_error_raised_by_a_command_stays_a_usage_error(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDTSNE_DEBUG")
    result = cli("all", tmp_path, "-", "--format", "png")  # - as OUTPUT needs -w
    assert result.exit_code == 2 and "name the work directory" in result.stderr
    assert "bug" not in result.stderr
