"""A soak of `gridtsne serve`: many small jobs from many clients while faults are injected.

    python benchmarks/serve_soak.py [--minutes 20] [--jobs 1000] [--clients 10] [--workers 2]
                                    [--tmpfs-mb 160] [--max-data-gb 0.1]

Starts a real server on a free loopback port, its --data on a small tmpfs
(needs root; elsewhere a plain folder, and the disk-full fault is left out),
with --max-data-gb below the tmpfs size so that retention must prune while
jobs run. --clients threads (httpx, loopback only) submit --jobs small jobs
between them (a few sample photos by path, or uploads of their own, tile 16,
a new seed each), each with an Idempotency-Key kept across retries, and poll
each job to its end. Faults on a schedule, over --minutes:

- every 90 s: kill -9 of a running worker process;
- every 5 minutes: kill -9 of the server, and a restart on the same --data;
- at 40% and 80% of the time: a file fills the tmpfs for 30 s, then goes.

Reports jobs succeeded, failed (by reason), lost (accepted but then unknown
to the server: must be 0), duplicated (one Idempotency-Key, two jobs: 0),
5xx answers other than 507 "disk full" (0) and tracebacks in the logs (0),
the server's resident memory at start and end, and --data's size over time.
The run is bounded: it stops at --minutes (plus the jobs in flight, at most
2 minutes more) or when every job is done, whichever comes first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_images"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def disk_mb(folder: Path) -> float:
    """What the server keeps in --data: the fault's filler, another program's file, not counted."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            if base == str(folder) and name == "filler":
                continue
            try:
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
            except OSError:
                pass
    return total / 1e6


class Server:
    def __init__(self, root: Path, data: Path, log: Path, flags: list[str]):
        self.root, self.data, self.log_path, self.flags = root, data, log, flags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gridtsne", "serve", "--root", str(self.root), "--data", str(self.data),
             "--port", str(self.port), *self.flags],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit(f"the server did not start: see {self.log_path}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Tally:
    """What the clients saw, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()
        self.answers: collections.Counter = collections.Counter()
        self.jobs_of_key: dict[str, set[str]] = collections.defaultdict(set)
        self.lost: list[str] = []

    def answer(self, status: int) -> None:
        with self.lock:
            self.answers[status] += 1


def client(number: int, server: Server, photos: list[Path], todo: list[int], tally: Tally, stop_at: float):
    rng = random.Random(number)
    http = httpx.Client(base_url=server.url, timeout=30)

    def call(method: str, url: str, **kwargs) -> httpx.Response | None:
        """One request, retried while the server is down (killed and restarting)."""
        for _ in range(600):
            try:
                answer = http.request(method, url, **kwargs)
                tally.answer(answer.status_code)
                if answer.status_code == 429:
                    time.sleep(1)
                    continue
                return answer
            except httpx.TransportError:
                time.sleep(0.2)
        return None

    while time.monotonic() < stop_at:
        with tally.lock:
            if not todo:
                break
            seed = todo.pop()
        body = {"images": [], "inputs": [], "options": {"tile": 16, "seed": seed}}
        if rng.random() < 0.3:  # an upload of its own, 2 photos
            chosen = rng.sample(photos, 2)
            files = [("file", (path.name, path.read_bytes())) for path in chosen]
            answer = call("POST", "/v2/inputs", files=files)
            if answer is None or answer.status_code != 201:
                with tally.lock:
                    tally.outcomes["upload refused"] += 1
                    tally.failures[f"upload: {answer.status_code if answer else 'no answer'}"] += 1
                continue
            body["inputs"] = [item["id"] for item in answer.json()["inputs"]]
        body["images"] = [f"photos/{path.name}" for path in rng.sample(photos, rng.randint(3, 6))]
        key = uuid.uuid4().hex
        answer = call("POST", "/v2/visualizations", json=body, headers={"Idempotency-Key": key})
        if answer is None or answer.status_code != 202:
            with tally.lock:
                tally.outcomes["submit refused"] += 1
                details = answer.json()["status"].get("details", "")[:60] if answer else ""
                tally.failures[f"submit: {answer.status_code if answer else 'no answer'}: {details}"] += 1
            continue
        job_id = answer.json()["output"]["id"]
        with tally.lock:
            tally.jobs_of_key[key].add(job_id)
        # A retry with the same key, as a client that lost the answer would send: must be the same job.
        if rng.random() < 0.1:
            again = call("POST", "/v2/visualizations", json=body, headers={"Idempotency-Key": key})
            if again is not None and again.status_code == 202:
                with tally.lock:
                    tally.jobs_of_key[key].add(again.json()["output"]["id"])
        deadline = max(stop_at, time.monotonic()) + 120
        state = None
        while time.monotonic() < deadline:
            polled = call("GET", f"/v2/visualizations/{job_id}")
            if polled is None:
                continue
            if polled.status_code == 410:
                state = "expired before its client saw its end"
                break
            if polled.status_code == 404:
                state = "lost"
                break
            output = polled.json()["output"]
            if output["state"] in ("succeeded", "failed", "cancelled"):
                state = output["state"]
                if state == "failed":
                    with tally.lock:
                        tally.failures[_reason(output["status"].get("details", ""))] += 1
                break
            time.sleep(0.3)
        with tally.lock:
            tally.outcomes[state or "unfinished at the end"] += 1
            if state == "lost":
                tally.lost.append(job_id)
    http.close()


def _reason(details: str) -> str:
    """A failure's reason without its paths and numbers, to count alike ones together."""
    known_reasons = (
        "worker process was killed",
        "worker process stopped",
        "--data is full",
        "not be recorded",
    )
    for known in known_reasons:
        if known in details:
            return known
    return details[:80]


def faults(server: Server, data: Path, started: float, minutes: float, stop: threading.Event, log: list,
           can_fill: bool):  # fmt: skip
    """kill -9 a worker every 90 s, the server every 5 minutes, fill the disk at 40% and 80%."""
    total = minutes * 60
    next_worker, next_server = 90.0, 300.0
    fills = [0.4 * total, 0.8 * total] if can_fill else []
    while not stop.wait(1.0):
        now = time.monotonic() - started
        if now >= next_worker:
            next_worker += 90
            for pid_file in data.glob("jobs/*/worker.pid"):
                try:
                    os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)  # pid, then its marker
                    log.append((round(now), "kill -9 worker"))
                    break
                except (OSError, ValueError):
                    continue
        if now >= next_server:
            next_server += 300
            server.kill()
            log.append((round(now), "kill -9 server"))
            time.sleep(1)
            server.start()
            log.append((round(time.monotonic() - started), "server restarted"))
        if fills and now >= fills[0]:
            fills.pop(0)
            filler = data / "filler"
            try:
                with open(filler, "wb") as handle:
                    while True:
                        handle.write(b"\0" * (1 << 20))
            except OSError:
                pass
            log.append((round(now), f"disk filled ({shutil.disk_usage(data).free // 1024} kB free)"))
            stop.wait(30)
            filler.unlink(missing_ok=True)
            log.append((round(time.monotonic() - started), "disk freed"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmpfs-mb", type=int, default=160)
    parser.add_argument("--max-data-gb", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=None, help="Also write the report here.")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="gridtsne-soak-"))
    photos_dir = base / "root" / "photos"
    photos_dir.mkdir(parents=True)
    photos = sorted(SAMPLES.glob("*.jpg"))[::4][:60]
    for photo in photos:
        shutil.copy(photo, photos_dir / photo.name)
    data = base / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(data)],
                             capture_output=True).returncode == 0  # fmt: skip
    where = f"a {args.tmpfs_mb} MB tmpfs" if mounted else "the disk (no tmpfs: not root)"
    print(f"--data on {where}", flush=True)
    server = Server(base / "root", data, base / "server.log",
                    ["--workers", str(args.workers), "--max-data-gb", str(args.max_data_gb),
                     "--queue-limit", "1000"])  # fmt: skip
    server.start()
    rss_start = rss_mib(server.process.pid)
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    tally = Tally()
    todo = list(range(args.jobs, 0, -1))
    stop_faults = threading.Event()
    fault_log: list = []
    sizes: list[tuple[int, float]] = []
    fault_thread = threading.Thread(
        target=faults,
        args=(server, data, started, args.minutes, stop_faults, fault_log, mounted),
        daemon=True,
    )
    fault_thread.start()
    copies = [photos_dir / photo.name for photo in photos]
    clients = [
        threading.Thread(target=client, args=(n, server, copies, todo, tally, stop_at), daemon=True)
        for n in range(args.clients)
    ]
    for thread in clients:
        thread.start()
    while any(thread.is_alive() for thread in clients):
        elapsed = time.monotonic() - started
        sizes.append((round(elapsed), round(disk_mb(data), 1)))
        with tally.lock:
            done = sum(tally.outcomes.values())
        print(f"[{elapsed / 60:5.1f} min] jobs ended {done}, --data {sizes[-1][1]} MB, "
              f"server RSS {rss_mib(server.process.pid):.0f} MiB", flush=True)  # fmt: skip
        time.sleep(10)
    stop_faults.set()
    fault_thread.join(60)
    rss_end = rss_mib(server.process.pid)
    server.stop()
    logs = [base / "server.log", *data.glob("jobs/*/worker.log")]
    tracebacks = sum(path.read_text(errors="replace").count("Traceback") for path in logs)
    if tracebacks:
        kept = Path(tempfile.gettempdir()) / "gridtsne-soak-server.log"
        shutil.copy(base / "server.log", kept)
        print(f"tracebacks: the server's log is kept as {kept}")
    report = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "clients": args.clients,
        "jobs submitted": sum(len(ids) > 0 for ids in tally.jobs_of_key.values()),
        "outcomes": dict(tally.outcomes),
        "failures by reason": dict(tally.failures),
        "lost": len(tally.lost),
        "duplicated": sum(len(ids) > 1 for ids in tally.jobs_of_key.values()),
        "answers by status": dict(sorted(tally.answers.items())),
        "5xx other than 507": sum(n for code, n in tally.answers.items() if code >= 500 and code != 507),
        "tracebacks in logs": tracebacks,
        "server RSS MiB start/end": [round(rss_start), round(rss_end)],
        "--data MB max": max(size for _, size in sizes) if sizes else None,
        "--data MB over time (s, MB), every minute": sizes[::6],
        "tmpfs MB": args.tmpfs_mb if mounted else None,
        "max-data-gb": args.max_data_gb,
        "faults": fault_log,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if mounted:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
