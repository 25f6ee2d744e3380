"""`gridtsne serve` under load: status polls per second, and the server's memory after many jobs.

    python benchmarks/serve_load.py [--clients 20] [--seconds 10] [--jobs 200] [--workers 2]

Starts a real server on a free loopback port over a temporary --data, with
4 sample photos under --root. Runs --jobs small jobs (tile 16, a new seed
each, so each one runs reduce, assign and render in its own worker process,
embedding nothing after the first), waits for all, then has --clients
threads poll GET /v2/visualizations/ID (httpx, one connection each) for
--seconds and reports the polls per second and their latency, and the
server's resident memory (VmRSS; its worker processes are separate and
gone by then) before and after the jobs.
"""

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root" / "photos"
        root.mkdir(parents=True)
        for photo in sorted((REPO / "sample_images").glob("*.jpg"))[::60][:4]:
            shutil.copy(photo, root / photo.name)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gridtsne", "serve", "--root", str(root.parent), "--data", f"{tmp}/data",
             "--port", str(port), "--workers", str(args.workers), "--queue-limit", str(args.jobs + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(base_url=url, timeout=60)
            for _ in range(300):
                try:
                    client.get("/openapi.json")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            rss_before = rss_mib(server.pid)
            started = time.perf_counter()
            ids = [
                client.post(
                    "/v2/visualizations", json={"images": ["photos"], "options": {"tile": 16, "seed": seed}}
                ).json()["output"]["id"]
                for seed in range(args.jobs)
            ]
            states = {}
            for job_id in ids:
                while (state := client.get(f"/v2/visualizations/{job_id}").json()["output"]["state"]) in (
                    "queued", "running",
                ):  # fmt: skip
                    time.sleep(0.5)
                states[state] = states.get(state, 0) + 1
            jobs_seconds = time.perf_counter() - started
            rss_after = rss_mib(server.pid)

            latencies: list[list[float]] = [[] for _ in range(args.clients)]
            stop = time.perf_counter() + args.seconds

            def poll(mine: list[float], job_id: str) -> None:
                with httpx.Client(base_url=url, timeout=30) as own:
                    while (now := time.perf_counter()) < stop:
                        assert own.get(f"/v2/visualizations/{job_id}").status_code == 200
                        mine.append(time.perf_counter() - now)

            threads = [threading.Thread(target=poll, args=(latencies[i], ids[i % len(ids)]))
                       for i in range(args.clients)]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            every = sorted(x for mine in latencies for x in mine)
            print(f"jobs: {args.jobs} in {jobs_seconds:.0f} s with {args.workers} workers: {states}")
            print(f"server RSS: {rss_before:.0f} MiB before the jobs, {rss_after:.0f} MiB after")
            print(f"status polls: {len(every) / args.seconds:.0f} per second with {args.clients} clients; "
                  f"latency median {statistics.median(every) * 1000:.1f} ms, "
                  f"p99 {every[int(len(every) * 0.99)] * 1000:.1f} ms")  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
