"""--cluster: the per-photo work on a real Dask cluster gives what a local run gives.

Two kinds of cluster, both real: a ``LocalCluster`` of two worker processes,
and a ``dask scheduler`` with two ``dask worker`` processes started here on
loopback, as a user would start them by hand.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from gridtsne import cluster, embed  # noqa: E402
from gridtsne.options import EmbedOptions  # noqa: E402
from gridtsne.stage import Context  # noqa: E402
from gridtsne.workdir import Workdir  # noqa: E402

DASK = Path(sys.executable).parent / "dask"
GRIDTSNE = Path(sys.executable).parent / "gridtsne"


def start(*command: str, log: Path) -> subprocess.Popen:
    """A process in its own session, so that it and its children can be stopped together."""
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {seconds} s")
        time.sleep(0.05)


def start_scheduler(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    process = start(str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file), log=folder / "scheduler.log")  # fmt: skip
    try:
        wait_for(scheduler_file.exists, 60, "scheduler")
        return process, json.loads(scheduler_file.read_text())["address"]
    except BaseException:  # a scheduler too slow to start is stopped, not left running
        stop(process)
        raise


def start_worker(address: str, log: Path, *wrapper: str) -> subprocess.Popen:
    return start(*wrapper, str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard", log=log)


@pytest.fixture(scope="module")
def local_cluster():
    """``--cluster local:2``: two worker processes, started once for the module."""
    yield "local:2"
    cluster.shutdown()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A ``dask scheduler`` and two ``dask worker`` processes on loopback, as started by hand."""
    folder = tmp_path_factory.mktemp("dask")
    with contextlib.ExitStack() as cleanup:  # each process stopped, whatever fails before
        process, address = start_scheduler(folder)
        cleanup.callback(stop, process)
        for n in (1, 2):
            cleanup.callback(stop, start_worker(address, folder / f"worker{n}.log"))
        cleanup.callback(cluster.shutdown)
        client = cluster.client_for(address)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "two workers")
        yield address


def with_a_bad_file(photos: Path) -> Path:
    (photos / "notes.jpg").write_text("not a picture")
    return photos


def embed_locally(photos: Path, folder: Path) -> Workdir:
    work = Workdir(folder)
    embed.run(work, EmbedOptions(paths=(str(photos),), batch_size=4))
    return work


def assert_same_result(work: Workdir, reference: Workdir) -> None:
    listing = json.loads(work.file("images.json").read_text())
    assert listing == json.loads(reference.file("images.json").read_text())
    np.testing.assert_allclose(
        np.load(work.file("embeddings.npy")), np.load(reference.file("embeddings.npy")), atol=1e-5
    )


def test_embed_on_a_local_cluster_gives_what_a_local_run_gives(local_cluster, photos, tmp_path):
    photos = with_a_bad_file(photos)
    reference = embed_locally(photos, tmp_path / "local")
    work = Workdir(tmp_path / "cluster")

    summary = embed.run(
        work, EmbedOptions(paths=(str(photos),), batch_size=4), Context(cluster=local_cluster)
    )

    assert_same_result(work, reference)
    assert summary["computed"] == 12 and summary["skipped"] == 1
    skipped = json.loads(work.file("images.json").read_text())["skipped"]
    assert skipped == [
        {"path": str(photos / "notes.jpg"), "reason": "not an image: Pillow cannot identify it"}
    ]


def test_a_worker_killed_mid_run_has_its_chunk_run_again_and_nothing_is_missing(
    local_cluster, photos, tmp_path
):
    reference = embed_locally(photos, tmp_path / "local")
    client = cluster.client_for(local_cluster)
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy = [worker for worker, keys in client.processing().items() if keys and worker in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    work = Workdir(tmp_path / "cluster")
    embed.run(work, EmbedOptions(paths=(str(photos),), batch_size=1), Context(cluster=local_cluster))
    killer.join()

    assert killed, "no worker was busy to be killed"
    assert_same_result(work, reference)


def test_embed_and_render_through_a_scheduler_and_workers_started_by_hand(scheduler, photos, tmp_path, cli):
    photos = with_a_bad_file(photos)
    local_out, cluster_out = tmp_path / "local.png", tmp_path / "cluster.png"
    assert cli("all", photos, local_out, "-w", tmp_path / "local", "-q", "--batch-size", "4").exit_code == 0
    result = cli(
        "embed", photos, "-w", tmp_path / "cluster", "-q", "--batch-size", "4", "--cluster", scheduler
    )
    assert result.exit_code == 0, result.output
    assert_same_result(Workdir(tmp_path / "cluster"), Workdir(tmp_path / "local"))

    # Render the very same layout again, its tiles made by the workers: the same picture.
    shutil.copytree(tmp_path / "local", tmp_path / "again", ignore=shutil.ignore_patterns("thumbs"))
    result = cli("render", cluster_out, "-w", tmp_path / "again", "--json", "--cluster", scheduler)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decoded"] == 12
    assert cluster_out.read_bytes() == local_out.read_bytes()
    # Its tiles are in the work directory's cache: another render decodes nothing.
    result = cli(
        "render", cluster_out, "-w", tmp_path / "again", "--json", "--cluster", scheduler, "--gap", 2
    )
    assert json.loads(result.stdout)["from_cache"] == 12


def test_a_driver_killed_mid_run_resumes_from_the_cache(scheduler, photos, tmp_path, cli):
    originals = sorted(photos.glob("*.jpg"))  # 11, and one in a subfolder
    for copy in (1, 2):  # more files, so that the run is surely killed before its end
        for photo in originals:
            shutil.copy(photo, photos / f"{photo.stem}-{copy}.jpg")
    reference = embed_locally(photos, tmp_path / "local")
    cache = tmp_path / "cluster" / "cache"
    driver = start(str(GRIDTSNE), "embed", str(photos), "-w", str(tmp_path / "cluster"), "-q",
                   "--batch-size", "1", "--cluster", scheduler, log=tmp_path / "driver.log")  # fmt: skip
    try:
        wait_for(lambda: any(cache.glob("*/chunk-*.npz")) or driver.poll() is not None, 60, "first chunk")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (tmp_path / "cluster" / "images.json").exists(), "the driver finished before it was killed"

    result = cli("embed", photos, "-w", tmp_path / "cluster", "-q", "--json", "--cluster", scheduler)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["reused"] >= 1 and summary["embedded"] == 34
    assert_same_result(Workdir(tmp_path / "cluster"), reference)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_naming_its_address(photos, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1)
    address = f"tcp://127.0.0.1:{free_port()}"

    result = cli("embed", photos, "-w", tmp_path / "work", "--cluster", address)

    assert result.exit_code == 1
    assert f"cannot reach the Dask scheduler at {address}" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare to hide a folder from a worker")
def test_a_worker_that_cannot_see_the_photos_is_an_error_before_any_work(photos, tmp_path, cli):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow unprivileged mount namespaces")
    import distributed

    with contextlib.ExitStack() as cleanup:  # each process stopped, whatever fails before
        process, address = start_scheduler(tmp_path / "dask")
        cleanup.callback(stop, process)
        # The worker sees an empty folder where the photos are: no shared filesystem.
        hide = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs none "{photos}" && exec "$0" "$@"']
        cleanup.callback(stop, start_worker(address, tmp_path / "dask" / "worker.log", *hide))
        cleanup.callback(cluster.shutdown)
        # Registered before the run: on a loaded machine a worker may take longer to start
        # than embed waits for one, which would be another error than the one tested here.
        with distributed.Client(address, timeout=30) as probe:
            probe.wait_for_workers(1, timeout=60)
        result = cli("embed", photos, "-w", tmp_path / "work", "--cluster", address)

    assert result.exit_code == 1
    assert "cannot see" in result.output and str(photos) in result.output
    assert "shared with every worker" in result.output
    assert not (tmp_path / "work" / "cache").exists()


def test_without_dask_cluster_is_one_line_saying_what_to_install(photos, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)

    result = cli("embed", photos, "-w", tmp_path / "work", "--cluster", "local:2")

    assert result.exit_code == 1
    assert "--cluster needs Dask: pip install -e '.[dask]'" in result.output


@pytest.mark.parametrize("address", ["local:0", "local:two", "scheduler"])
def test_a_malformed_address_is_a_usage_error(address, photos, tmp_path, cli):
    result = cli("embed", photos, "-w", tmp_path / "work", "--cluster", address)
    assert result.exit_code == 2
    assert "--cluster" in result.output


def test_where_the_work_runs_does_not_make_a_stage_stale(photos, tmp_path, fake_model):
    work = Workdir(tmp_path / "work")
    options = EmbedOptions(paths=(str(photos),))
    embed.run(work, options)

    # A fresh stage is not run again, so the (unreachable) cluster is never asked.
    summary = embed.run(work, options, Context(cluster="tcp://127.0.0.1:9"), skip_if_fresh=True)

    assert summary["ran"] is False


def test_a_rerun_that_finds_everything_in_the_cache_does_not_connect(photos, tmp_path):
    work = embed_locally(photos, tmp_path / "work")

    summary = embed.run(
        work, EmbedOptions(paths=(str(photos),), batch_size=4), Context(cluster="tcp://127.0.0.1:9")
    )

    assert summary["reused"] == 12
