"""The service keeps --data within bounds: finished jobs and unused uploads expire, live ones never do."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from gridtsne.serve.config import ServeConfig  # noqa: E402
from gridtsne.serve.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, SqliteQueue  # noqa: E402
from gridtsne.serve.retention import Retention, disk_bytes  # noqa: E402
from tests.conftest import sample_photos  # noqa: E402
from tests.test_serve import OPTIONS, Server  # noqa: E402

DAY = 86400


def make_job(queue: SqliteQueue, config: ServeConfig, state: str, paths=(), continue_from=None,
             megabytes: int = 1) -> str:  # fmt: skip
    """A job in ``state`` with a folder of ``megabytes`` of results, as a worker would leave it."""
    job, _ = queue.submit({"paths": list(paths), "continue_from": continue_from}, None, limit=1000)
    if state != QUEUED:
        queue.claim()
        if state != RUNNING:
            queue.finish(job.id, state)
    folder = config.job_folder(job.id)
    folder.mkdir(parents=True)
    (folder / "mosaic.jpg").write_bytes(b"\xff" * megabytes * 10**6)
    return job.id


def upload(config: ServeConfig, name: str, age_days: float = 0) -> Path:
    path = config.inputs / name
    path.write_bytes(b"\xff" * 10**5)
    then = time.time() - age_days * DAY
    import os

    os.utime(path, (then, then))
    return path


@pytest.fixture
def setup(tmp_path):
    config = ServeConfig(root=tmp_path, data=tmp_path / "data", keep_days=7, max_data_bytes=10**12)
    config.make_folders()
    queue = SqliteQueue(config.database)
    return config, queue, Retention(config, queue, log=lambda text: None)


def test_finished_jobs_and_unused_uploads_expire_by_age_and_nothing_live_is_touched(setup):
    config, queue, retention = setup
    needed_upload = upload(config, "a" * 64, age_days=30)
    unused_upload = upload(config, "b" * 64, age_days=30)
    recent_upload = upload(config, "c" * 64, age_days=1)
    continued = make_job(queue, config, SUCCEEDED)
    old = {state: make_job(queue, config, state) for state in (SUCCEEDED, FAILED, CANCELLED)}
    running = make_job(queue, config, RUNNING, paths=[str(needed_upload)])
    queued = make_job(queue, config, QUEUED, continue_from=continued)

    report = retention.run(now=time.time() + 30 * DAY)  # a month later

    assert report["jobs"] == 3 and report["uploads"] == 2  # the unused upload and the one 1 day old
    for job_id in old.values():
        assert not config.job_folder(job_id).exists() and queue.get(job_id) is None
        assert "--keep-days" in queue.expired(job_id)["why"]
    for job_id in (running, queued, continued):  # live, or what a live job continues from
        assert config.job_folder(job_id).exists() and queue.get(job_id) is not None
    assert needed_upload.exists() and not unused_upload.exists() and not recent_upload.exists()
    assert queue.expired(old[SUCCEEDED])["state"] == SUCCEEDED


def test_over_the_size_limit_the_least_recently_finished_go_first(setup):
    config, queue, _ = setup
    ids = [make_job(queue, config, SUCCEEDED, megabytes=2) for _ in range(5)]  # finished in this order
    running = make_job(queue, config, RUNNING, megabytes=2)
    small = ServeConfig(root=config.root, data=config.data, keep_days=7, max_data_bytes=7 * 10**6)
    report = Retention(small, queue, log=lambda text: None).run(now=time.time() + 600)
    kept = [job_id for job_id in ids if queue.get(job_id) is not None]
    assert kept == ids[len(ids) - len(kept) :] and 0 < len(kept) < 3  # the newest ones
    assert disk_bytes(config.data) <= 7 * 10**6
    assert report["freed_bytes"] >= 6 * 10**6
    assert config.job_folder(running).exists()
    assert "--data was full" in queue.expired(ids[0])["why"]


def test_the_limit_holds_even_for_jobs_that_just_finished_older_first(setup):
    """The grace only orders what goes: a burst of jobs cannot take --data past its limit."""
    config, queue, _ = setup
    settled = make_job(queue, config, SUCCEEDED, megabytes=2)
    with sqlite3.connect(config.database) as db:  # it finished ten minutes ago
        db.execute("UPDATE jobs SET updated_at = updated_at - 600 WHERE id = ?", (settled,))
    recent = [make_job(queue, config, SUCCEEDED, megabytes=2) for _ in range(4)]
    just_uploaded = upload(config, "d" * 64)  # its client is about to name it in a job
    small = ServeConfig(root=config.root, data=config.data, keep_days=7, max_data_bytes=5 * 10**6)
    Retention(small, queue, log=lambda text: None).run()
    assert queue.get(settled) is None and just_uploaded.exists()
    kept = [job_id for job_id in recent if queue.get(job_id) is not None]
    assert kept == recent[len(recent) - len(kept) :] and len(kept) == 2
    assert disk_bytes(config.data) <= 5 * 10**6


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "root" / "photos"
    folder.mkdir(parents=True)
    for photo in sample_photos(6):
        shutil.copy(photo, folder / photo.name)
    return tmp_path / "root"


def test_an_expired_job_answers_410_saying_why_the_listing_says_when_and_delete_removes_files(root, tmp_path):
    keep_days = 6 / DAY  # six seconds
    server = Server(root, tmp_path / "data", "--workers", "1", "--keep-days", str(keep_days)).start()
    try:
        first = server.wait(server.submit({"images": ["photos"], "options": OPTIONS}).json()["output"]["id"])
        assert first["state"] == "succeeded"
        listed = server.client.get("/v2/visualizations").json()["outputs"][0]
        assert listed["id"] == first["id"] and listed["expires_at"] > listed["updated_at"]
        assert server.client.get(first["data"]["image"]["url"]).status_code == 200
        time.sleep(7)
        # A job that finishes runs a retention pass: by then the first one is older than --keep-days.
        second = server.wait(
            server.submit({"images": ["photos"], "options": {**OPTIONS, "seed": 2}}).json()["output"]["id"]
        )
        deadline = time.monotonic() + 10  # the pass runs just after the second job's end is seen
        while (gone := server.client.get(f"/v2/visualizations/{first['id']}")).status_code == 200:
            assert time.monotonic() < deadline, gone.text
            time.sleep(0.2)
        assert gone.status_code == 410, gone.text
        assert "--keep-days" in gone.json()["status"]["details"]
        assert server.client.get(first["data"]["image"]["url"]).status_code == 410
        while (tmp_path / "data" / "jobs" / first["id"]).exists():  # removed just after it expired
            assert time.monotonic() < deadline + 10
            time.sleep(0.1)

        assert server.client.delete(f"/v2/visualizations/{second['id']}").status_code == 200
        assert not (tmp_path / "data" / "jobs" / second["id"]).exists()
        assert server.client.get(f"/v2/visualizations/{second['id']}").status_code == 404
    finally:
        server.stop()


def mount_tmpfs(folder: Path, megabytes: int) -> None:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"a full disk is made with a small tmpfs, which needs root: {done.stderr.strip()}")


def test_a_full_data_disk_fails_the_job_that_hit_it_and_the_server_carries_on(root, tmp_path):
    data = tmp_path / "data"
    mount_tmpfs(data, 16)
    server = Server(root, data, "--workers", "1")
    try:
        server.start()
        filler = data / "filler"  # not the server's: only freeing it makes room
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        with open(filler, "r+b") as handle:  # room for the job database, not for the job's tiles
            handle.truncate(filler.stat().st_size - 2 * 10**6)
        answer = server.submit({"images": ["photos"], "options": {**OPTIONS, "tile": 512}})
        if answer.status_code == 507:  # the job could not even be queued: said so, nothing stored
            assert "disk is full" in answer.json()["status"]["details"]
        else:
            failed = server.wait(answer.json()["output"]["id"])
            assert failed["state"] == "failed", failed
            assert "full" in failed["status"]["details"], failed
        assert "Traceback" not in server.read_log()
        filler.unlink()
        again = server.wait(server.submit({"images": ["photos"], "options": OPTIONS}).json()["output"]["id"])
        assert again["state"] == "succeeded", again
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_a_write_on_a_full_disk_prunes_first_rather_than_fail(tmp_path):
    """make_room, called before each upload and submit, frees finished results when the disk is full."""
    data = tmp_path / "data"
    mount_tmpfs(data, 12)
    try:
        config = ServeConfig(root=tmp_path, data=data, keep_days=7, max_data_bytes=10**12)
        config.make_folders()
        queue = SqliteQueue(config.database)
        old = [make_job(queue, config, SUCCEEDED, megabytes=3) for _ in range(2)]
        running = make_job(queue, config, RUNNING, megabytes=1)
        with open(data / "filler", "wb") as handle:  # another program fills the disk
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
        assert shutil.disk_usage(data).free < 10**5
        Retention(config, queue, log=lambda text: None).make_room(10**6)
        assert shutil.disk_usage(data).free >= 10**6
        assert queue.get(old[0]) is None and "--data was full" in queue.expired(old[0])["why"]
        assert config.job_folder(running).exists()
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
