"""`gridtsne serve`: a real server on a free loopback port, driven over HTTP with httpx."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from tests.conftest import sample_photos  # noqa: E402

OPTIONS = {"tile": 32, "seed": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``gridtsne serve`` in a subprocess; ``stop()`` ends it and (through it) its workers."""

    def __init__(self, root: Path, data: Path, *flags: str, token: str | None = None):
        self.root, self.data, self.flags, self.token = root, data, flags, token
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gridtsne", "serve", "--root", str(self.root),
                   "--data", str(self.data), "--port", str(self.port), *self.flags]  # fmt: skip
        self.log = open(self.data.parent / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(base_url=self.url, timeout=30, headers=headers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.read_log()
            try:
                if self.client.get("/openapi.json").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not start: {self.read_log()}")

    def read_log(self) -> str:
        return (self.data.parent / f"server-{self.port}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self.log.close()

    def submit(self, body: dict, **kwargs) -> httpx.Response:
        return self.client.post("/v2/visualizations", json=body, **kwargs)

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"), seconds: float = 120) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            output = self.client.get(f"/v2/visualizations/{job_id}").json()["output"]
            if output["state"] in states:
                return output
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {output['state']}: {self.read_log()}")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The server's --root: 12 photos in photos/, a secret outside it, a link that leads out."""
    base = tmp_path_factory.mktemp("serve")
    folder = base / "root" / "photos"
    folder.mkdir(parents=True)
    for photo in sample_photos(12):
        shutil.copy(photo, folder / photo.name)
    (base / "secret").mkdir()
    shutil.copy(sample_photos(1)[0], base / "secret" / "outside.jpg")
    (base / "root" / "out").symlink_to(base / "secret")
    return base / "root"


@pytest.fixture(scope="module")
def server(root):
    running = Server(root, root.parent / "data", "--workers", "2", "--max-files", "3", "--max-upload-mb", "1")
    yield running.start()
    running.stop()


def grid_of(rows: list[dict]) -> dict[str, tuple[int, int]]:
    return {Path(row["path"]).name: (int(row["row"]), int(row["col"])) for row in rows}


def test_a_submitted_job_is_polled_to_a_picture_whose_grid_is_that_of_gridtsne_all(
    server, root, cli, tmp_path
):
    answer = server.submit({"images": ["photos"], "options": OPTIONS})
    assert answer.status_code == 202
    output = answer.json()["output"]
    assert answer.json()["status"] == {"code": 10000, "description": "Ok"}
    assert output["status"] == {"code": 42001, "description": "Visualization is pending"}
    assert output["state"] in ("queued", "running")
    assert answer.headers["location"].endswith(f"/v2/visualizations/{output['id']}")

    done = server.wait(output["id"])
    assert done["state"] == "succeeded", done
    assert done["status"]["code"] == 42000 and done["percent_completed"] == 100
    grid = done["data"]["grid"]
    picture = server.client.get(done["data"]["image"]["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(picture.content)) as image:
        image.verify()
        assert image.size == (grid["cols"] * 32, grid["rows"] * 32)

    served = server.client.get(done["data"]["positions"]["json"]).json()
    assert {row["path"] for row in served} == {f"photos/{p.name}" for p in (root / "photos").iterdir()}
    csv_text = server.client.get(done["data"]["positions"]["csv"]).text
    assert csv_text.startswith("index,path,row,col,cell,x,y\n")

    work = tmp_path / "work"
    cli("all", root / "photos", tmp_path / "mosaic.jpg", "-w", work, "--tile", 32, "--seed", 1, "-q")
    result = cli("export", "-w", work, "--format", "json")
    assert grid_of(served) == grid_of(json.loads(result.output))

    # The same photos again, another seed: the shared cache means nothing is embedded again.
    again = server.wait(
        server.submit({"images": ["photos"], "options": {**OPTIONS, "seed": 2}}).json()["output"]["id"]
    )
    assert again["data"]["embeddings"] == {"computed": 0, "reused": 12}

    listing = server.client.get("/v2/visualizations", params={"page": 1, "per_page": 1}).json()
    assert listing["total"] >= 2 and [job["id"] for job in listing["outputs"]] == [again["id"]]


def test_uploads_are_stored_by_content_and_non_images_refused_with_embeds_reasons(server):
    photo = sample_photos(1)[0].read_bytes()
    answer = server.client.post("/v2/inputs", files=[("file", ("a.jpg", photo)), ("file", ("b.jpg", photo))])
    assert answer.status_code == 201, answer.text
    ids = {item["id"] for item in answer.json()["inputs"]}
    assert len(ids) == 1 and len(ids.pop()) == 64

    refused = server.client.post("/v2/inputs", files=[("file", ("notes.jpg", b"hello, not a photo"))])
    assert refused.status_code == 400
    assert "notes.jpg: not an image" in refused.json()["status"]["details"]

    too_many = server.client.post("/v2/inputs", files=[("file", (f"{i}.jpg", photo)) for i in range(4)])
    assert too_many.status_code == 413
    too_large = server.client.post("/v2/inputs", files=[("file", ("big.jpg", photo + b"\0" * 1_100_000))])
    assert too_large.status_code == 413
    assert server.client.post("/v2/inputs", json={"x": 1}).status_code == 400


def test_an_idempotent_retry_returns_the_same_job_and_delete_cancels_then_deletes(server):
    photo = sample_photos(1)[0].read_bytes()
    uploaded = server.client.post("/v2/inputs", files=[("file", ("a.jpg", photo))]).json()["inputs"][0]["id"]
    body = {"inputs": [uploaded], "images": ["photos"], "options": {**OPTIONS, "seed": 5}}
    first = server.submit(body, headers={"Idempotency-Key": "retry-1"})
    second = server.submit(body, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == second.status_code == 202
    job_id = first.json()["output"]["id"]
    assert second.json()["output"]["id"] == job_id
    other = server.submit({**body, "options": OPTIONS}, headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 409

    cancelled = server.client.delete(f"/v2/visualizations/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["output"]["state"] == "cancelled"
    assert cancelled.json()["output"]["status"]["code"] == 42002
    time.sleep(0.5)
    assert server.client.get(f"/v2/visualizations/{job_id}").json()["output"]["state"] == "cancelled"
    assert server.client.delete(f"/v2/visualizations/{job_id}").json()["output"]["state"] == "deleted"
    assert server.client.get(f"/v2/visualizations/{job_id}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"images": ["../secret"]}, "images.0", "'..'"),
        ({"images": ["/etc/passwd"]}, "images.0", "absolute"),
        ({"images": ["out/outside.jpg"]}, "images.0", "leads out"),
        ({"images": ["out"]}, "images.0", "leads out"),
        ({"images": ["%2e%2e/secret"]}, "images.0", "percent-encoded"),
        ({"images": ["photos\\..\\..\\secret"]}, "images.0", "backslash"),
        ({"images": ["photos\u0000"]}, "images.0", "control character"),
        ({"images": ["nothing-here"]}, "images.0", "no such file"),
        ({"images": ["photos"], "options": {"output": "/tmp/x.jpg"}}, "options.output", "set by the server"),
        ({"images": ["photos"], "options": {"cache": "/tmp"}}, "options.cache", "set by the server"),
        ({"images": ["photos"], "options": {"tile": "big"}}, "options.tile", "not a whole number"),
        ({"images": ["photos"], "options": {"colour": 1}}, "options.colour", "no option 'colour'"),
        ({"images": ["photos"], "colour": 1}, "colour", "unknown field"),
        ({"images": "photos"}, "images", "valid list"),
        ({"images": [3]}, "images.0", "valid string"),
        (
            {"images": ["photos"], "web_page": True, "options": {"labels": "/etc/labels.csv"}},
            "options.labels",
            "reads no labels file",
        ),
        (
            {"images": ["photos"], "options": {"labels": [["photos/a.jpg", "x"]]}},
            "options.labels",
            "web_page",
        ),
        (
            {"images": ["photos"], "web_page": True, "options": {"labels": [["../secret/outside.jpg", "x"]]}},
            "options.labels.0",
            "'..'",
        ),
        (
            {
                "images": ["photos"],
                "web_page": True,
                "options": {"labels": [["a.jpg", "x"], ["./a.jpg", "y"]]},
            },
            "options.labels.1",
            "labelled 'y' here and 'x' in item 0",
        ),
        (
            {"images": ["photos"], "web_page": True, "options": {"labels": [{"path": "a.jpg"}]}},
            "options.labels",
            "item 1",
        ),
        ({"inputs": ["../../etc"]}, "inputs.0", "not an input id"),
        ({"inputs": ["0" * 64]}, "inputs.0", "no uploaded input"),
        ({}, None, "at least one photo"),
    ],
)
def test_bad_requests_are_400_naming_the_problem_and_nothing_outside_is_read(server, body, field, words):
    answer = server.submit(body)
    assert answer.status_code == 400, answer.text
    status = answer.json()["status"]
    assert status["code"] == 42003 and words in status["details"]
    assert status.get("field") == field


def test_malformed_json_unknown_ids_and_escaping_urls_are_400_or_404_json(server):
    bad = server.client.post(
        "/v2/visualizations", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["status"]["details"]
    assert server.client.get("/v2/visualizations/" + "0" * 32).status_code == 404
    assert server.client.get("/v2/visualizations/..%2f..%2fetc").status_code == 404
    assert server.client.delete("/v2/visualizations/nope").json()["status"]["code"] == 11002
    assert server.client.get("/v2/visualizations", params={"per_page": 0}).status_code == 400
    assert server.client.get("/nowhere").json()["status"]["details"] == "no such path: /nowhere"


def test_a_token_is_required_when_set_and_a_full_queue_answers_429(root, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-long-enough-secret-token\n")
    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data, "--workers", "1", "--queue-limit", "1", "--token-file", str(token_file),
                    token="a-long-enough-secret-token").start()  # fmt: skip
    try:
        plain = httpx.get(f"{server.url}/v2/visualizations")
        assert plain.status_code == 401 and plain.json()["status"]["code"] == 11001
        wrong = httpx.get(f"{server.url}/v2/visualizations", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # One job runs, one waits; the next is refused. A job can end between two submits (on a
        # loaded machine the first may finish first), so up to six are sent, back to back.
        answers = []
        while len(answers) < 6 and (not answers or answers[-1].status_code != 429):
            body = {"images": ["photos"], "options": {**OPTIONS, "seed": len(answers)}}
            answers.append(server.submit(body))
        assert [answer.status_code for answer in answers[:2]] == [202, 202]
        assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) > 0
    finally:
        server.stop()


def test_idempotency_keys_are_each_tokens_own(root, tmp_path):
    alice, bob = "alice-token-0123456789", "bob-token-0123456789ab"
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# one token per client\n{alice}\n\n{bob}\n")
    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data, "--workers", "1", "--token-file", str(token_file), token=alice).start()
    as_bob = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {bob}"})
    try:
        key = {"Idempotency-Key": "nightly-2026-12-05"}
        mine = server.submit({"images": ["photos"], "options": OPTIONS}, headers=key)
        other_body = {"images": ["photos"], "options": {**OPTIONS, "seed": 3}}
        theirs = as_bob.post("/v2/visualizations", json=other_body, headers=key)
        assert mine.status_code == theirs.status_code == 202, theirs.text  # not 409: another caller's key
        assert mine.json()["output"]["id"] != theirs.json()["output"]["id"]
        again = server.submit({"images": ["photos"], "options": OPTIONS}, headers=key)
        assert again.json()["output"]["id"] == mine.json()["output"]["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert as_bob.get(f"/v2/visualizations/{mine.json()['output']['id']}").status_code == 200
    finally:
        as_bob.close()
        server.stop()
    token_file.write_text(f"{alice}\nshort\n")
    refused = subprocess.run(
        [sys.executable, "-m", "gridtsne", "serve", "--root", str(root), "--data", str(data),
         "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "line 2" in refused.stderr and "shorter than 16" in refused.stderr


def test_a_non_loopback_host_needs_a_token_file(root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gridtsne", "serve", "--root", str(root), "--data", str(tmp_path),
         "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "needs --token-file" in result.stderr


def test_a_job_survives_the_server_killed_mid_job(root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data, "--workers", "1").start()
    try:
        job_id = server.submit({"images": ["photos"], "options": {**OPTIONS, "seed": 9}}).json()["output"][
            "id"
        ]
        server.wait(job_id, states=("running",), seconds=60)
        server.stop(signal.SIGKILL)
        server.start()
        done = server.wait(job_id)
        assert done["state"] == "succeeded", done
        server.stop()
        server.start()  # a clean restart keeps the finished job too
        assert server.client.get(f"/v2/visualizations/{job_id}").json()["output"]["state"] == "succeeded"
    finally:
        server.stop()
    time.sleep(1)  # a worker orphaned by SIGKILL notices within half a second
    assert [command for command in _commands() if str(data) in command] == []


def _commands() -> list[str]:
    """The command lines of the running processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:
                continue
    return found


def test_a_web_page_is_served_from_the_jobs_folder_and_nothing_outside_it(server):
    first = sample_photos(12)[0].name
    labels = [{"path": f"photos/{first}", "label": "the first"}]  # inline, named as the request names photos
    done = server.wait(
        server.submit(
            {"images": ["photos"], "options": {**OPTIONS, "labels": labels}, "web_page": True}
        ).json()["output"]["id"]
    )
    assert done["state"] == "succeeded", done
    page = server.client.get(done["data"]["page"]["url"])
    assert page.status_code == 200 and "<canvas" in page.text
    base = done["data"]["page"]["url"].rsplit("/", 1)[0]
    data = server.client.get(f"{base}/data.js").text
    assert data.startswith("window.GRIDTSNE = ") and '"labels":["the first"]' in data
    for escape in ("%2e%2e/%2e%2e/jobs.sqlite3", "..%2f..%2fsecret"):
        answer = server.client.get(f"{base}/{escape}")
        assert answer.status_code == 400 and answer.json()["status"]["code"] == 42003
    assert server.client.get(f"{base}/no-such-file.js").status_code == 404


def test_a_restart_kills_the_workers_a_killed_server_left_running(tmp_path):
    # A worker deep in a computation does not notice its server's death at once; the
    # restarted server must stop it before running its job again, and nothing else. A job
    # that a standby took names the standby's token, which its command line holds.
    from gridtsne.serve.config import ServeConfig
    from gridtsne.serve.worker import WORKER_PID, stop_leftover_workers

    config = ServeConfig(root=tmp_path, data=tmp_path / "data")
    config.make_folders()
    sleeper = "import time; time.sleep(60)"
    leftover = subprocess.Popen([sys.executable, "-c", sleeper, "gridtsne.serve.worker", "job1"],
                                start_new_session=True)  # fmt: skip
    standby = subprocess.Popen([sys.executable, "-c", sleeper, "gridtsne.serve.worker", "--standby", "d00d"],
                               start_new_session=True)  # fmt: skip
    stranger = subprocess.Popen([sys.executable, "-c", sleeper, "job2"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", sleeper, "gridtsne.serve.worker", "--standby", "beef"],
                             start_new_session=True)  # fmt: skip
    pid_files = {"job1": f"{leftover.pid}", "job3": f"{standby.pid}\nd00d\n", "job2": f"{stranger.pid}",
                 "job4": f"{other.pid}\nd00d\n"}  # fmt: skip
    try:
        for job_id, text in pid_files.items():
            config.job_folder(job_id).mkdir(parents=True)
            (config.job_folder(job_id) / WORKER_PID).write_text(text)
        stop_leftover_workers(config)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert standby.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None  # a pid reused by another program is left alone
        assert other.poll() is None  # or by another worker
        assert not list(config.jobs.glob(f"*/{WORKER_PID}"))
    finally:
        for process in (leftover, standby, stranger, other):
            process.kill()
            process.wait()


def test_a_worker_whose_server_died_while_starting_it_exits_at_once(tmp_path):
    # Killed between starting a worker and recording its pid, the server leaves a worker
    # whose parent is already someone else: it must not run the job beside the next one.
    from gridtsne.serve.worker import SERVER_PID_VARIABLE

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is no longer this worker's parent
    result = subprocess.run(
        [sys.executable, "-m", "gridtsne.serve.worker", str(tmp_path), str(tmp_path / "data"), "job1"],
        env={**os.environ, SERVER_PID_VARIABLE: str(gone.pid)}, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    assert not (tmp_path / "data").exists()  # it touched nothing


def _standbys(data: Path) -> list[int]:
    """The pids of the standby workers of the server over ``data``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"gridtsne.serve.worker" in command and b"--standby" in command and str(data).encode() in command:
            found.append(int(entry.name))
    return found


def _one_standby(data: Path, seconds: float = 30, other_than: int | None = None) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(found := _standbys(data)) == 1 and found[0] != other_than:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no single standby worker: {_standbys(data)}")


def test_jobs_are_handed_to_a_standby_worker_that_waits_with_its_libraries_loaded(root, tmp_path):
    from gridtsne.serve.worker import STANDBY_TOOK

    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data, "--workers", "1").start()
    try:
        standby = None
        for seed in (2, 3):  # a new standby waits for each next job, once the last has ended
            standby = _one_standby(data, other_than=standby)
            done = server.wait(
                server.submit({"images": ["photos"], "options": {**OPTIONS, "seed": seed}}).json()["output"][
                    "id"
                ]
            )
            assert done["state"] == "succeeded", done
            log = (data / "jobs" / done["id"] / "worker.log").read_text()
            assert f"gridtsne worker {standby}: {STANDBY_TOOK}" in log
        _one_standby(data, other_than=standby)
    finally:
        server.stop()
    assert _standbys(data) == []  # stopped with the server


def test_a_standby_that_died_leaves_jobs_to_fresh_workers_and_none_waits_without_it(root, tmp_path):
    from gridtsne.serve.worker import STANDBY_TOOK

    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data, "--workers", "1").start()
    try:
        os.kill(_one_standby(data), signal.SIGKILL)
        done = server.wait(server.submit({"images": ["photos"], "options": OPTIONS}).json()["output"]["id"])
        assert done["state"] == "succeeded", done
        assert STANDBY_TOOK not in (data / "jobs" / done["id"] / "worker.log").read_text()
        time.sleep(1)
        assert _standbys(data) == []  # not started again and again
        assert "the standby worker exited" in server.read_log()
    finally:
        server.stop()
    quiet = Server(root, tmp_path / "quiet", "--no-standby")
    (tmp_path / "quiet").mkdir()
    quiet.start()
    try:
        time.sleep(1)
        assert _standbys(tmp_path / "quiet") == []
    finally:
        quiet.stop()


def test_a_standby_exits_when_its_server_is_killed(root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = Server(root, data).start()
    try:
        standby = _one_standby(data)
        server.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{standby}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _standbys(data) == []
    finally:
        server.stop()


def test_a_visualization_can_continue_the_map_of_an_earlier_one(server, root):
    names = sorted(p.name for p in (root / "photos").iterdir())
    first = server.submit({"images": [f"photos/{name}" for name in names[:10]], "options": OPTIONS})
    earlier = server.wait(first.json()["output"]["id"])
    assert earlier["state"] == "succeeded" and earlier["layout"]["mode"] == "fresh"
    before = grid_of(server.client.get(earlier["data"]["positions"]["json"]).json())

    answer = server.submit({"images": ["photos"], "options": OPTIONS, "from": earlier["id"]})
    assert answer.status_code == 202, answer.text
    later = server.wait(answer.json()["output"]["id"])
    assert later["state"] == "succeeded", later
    layout = later["layout"]
    assert layout["mode"] == "update" and layout["from"] == earlier["id"] and layout["new"] == 2
    after = grid_of(server.client.get(later["data"]["positions"]["json"]).json())
    # The earlier grid's photos are where they were, or a cell beside it (the grid may have grown).
    offset_free = [max(abs(a - b) for a, b in zip(before[n], after[n], strict=True)) for n in before]
    assert sum(move == 0 for move in offset_free) >= 6 and max(offset_free) <= 3, (before, after)

    unknown = server.submit({"images": ["photos"], "from": "0" * 32})
    assert unknown.status_code == 400 and unknown.json()["status"]["field"] == "from"
