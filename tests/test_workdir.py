"""workdir: atomic writes, freshness, the lock."""

import numpy as np
import pytest

from gridtsne.errors import StageError
from gridtsne.workdir import Workdir, atomic_write, save_npy


def test_an_interrupted_write_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "coords.npy"
    save_npy(target, np.zeros(3))

    def fail_halfway(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail_halfway)
    assert np.load(target).tolist() == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["coords.npy"]


def test_staleness_names_what_changed(tmp_path):
    work = Workdir(tmp_path)
    out = tmp_path / "coords.npy"
    save_npy(out, np.zeros(3))
    assert work.staleness("reduce", {"seed": 0}, {"embeddings.npy": "a"}) == "never run"
    work.finish_stage("reduce", {"seed": 0}, {"embeddings.npy": "a"}, {"coords.npy": out}, 0.0, {})
    assert work.staleness("reduce", {"seed": 0}, {"embeddings.npy": "a"}) is None
    assert work.staleness("reduce", {"seed": 1}, {"embeddings.npy": "a"}) == "options changed: seed"
    assert work.staleness("reduce", {"seed": 0}, {"embeddings.npy": "b"}) == "inputs changed: embeddings.npy"
    save_npy(out, np.ones(3))
    assert work.staleness("reduce", {"seed": 0}, {"embeddings.npy": "a"}).startswith("output modified")


def test_two_writers_cannot_share_a_work_directory(tmp_path):
    work = Workdir(tmp_path)
    with work.lock():
        with pytest.raises(StageError, match="another gridtsne"):
            with Workdir(tmp_path).lock():
                pass
