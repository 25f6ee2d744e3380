"""How long a service job takes from submit to its picture, with and without a standby worker.

    python benchmarks/serve_latency.py --photos /work/collections/products [--jobs 5] [--tile 16]
        [--burst K] [--before DIR]

Starts two real servers on free loopback ports, each over its own temporary
--data with the folder above --photos as --root: one as
`gridtsne serve` starts by default (a standby worker waits with the stages'
libraries loaded), one with --no-standby (each job starts a fresh process).
Each server first runs one job that embeds the photos into its cache; then
--jobs re-layouts (a new seed each: reduce, assign and render, nothing
embedded) go to the two servers in turn, one job at a time, so both see the
same machine. Reports each job's seconds from the POST to the state
"succeeded" (status polled every 50 ms), the medians and their ratio.

With ``--burst K``, each turn sends K re-layouts at once (one worker runs them one
after another, the others wait in its queue) and reports the seconds from the first
POST until all K have succeeded. ``--before DIR`` adds a third server, started as the
first but with gridtsne imported from DIR, another checkout, to time two versions'
service in one run.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, photos: Path, data: Path, *flags: str, pythonpath: str | None = None):
        self.port, self.photos, root = free_port(), photos.name, photos.parent
        env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gridtsne", "serve", "--root", str(root), "--data", str(data),
             "--port", str(self.port), "--workers", "1", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        for _ in range(600):
            try:
                self.client.get("/openapi.json")
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("a server did not start")

    def job(self, options: dict) -> float:
        """Seconds from the submit to the state "succeeded"."""
        return self.jobs([options])

    def jobs(self, each_options: list[dict]) -> float:
        """Seconds from the first submit until every one of these jobs has succeeded."""
        started = time.perf_counter()
        ids = [
            self.client.post("/v2/visualizations", json={"images": [self.photos], "options": options}).json()[
                "output"
            ]["id"]
            for options in each_options
        ]
        for job_id in ids:
            while (output := self.client.get(f"/v2/visualizations/{job_id}").json()["output"])["state"] in (
                "queued", "running",
            ):  # fmt: skip
                time.sleep(0.05)
            if output["state"] != "succeeded":
                raise SystemExit(f"job {job_id}: {output}")
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="a folder of photos")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--burst", type=int, default=1, help="re-layouts sent at once each turn")
    parser.add_argument("--before", metavar="DIR", help="a third server: gridtsne imported from DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(args.photos).resolve()
        servers = {
            "standby": Server(photos, Path(tmp) / "standby"),
            "no standby": Server(photos, Path(tmp) / "fresh", "--no-standby"),
        }
        if args.before:
            before = str(Path(args.before).resolve())
            servers["before"] = Server(photos, Path(tmp) / "before", pythonpath=before)
        try:
            for name, server in servers.items():
                print(
                    f"{name}: first job, embedding: {server.job({'tile': args.tile, 'seed': 0}):.1f} s",
                    flush=True,
                )
            seconds = {name: [] for name in servers}
            for turn in range(args.jobs):
                for name, server in servers.items():
                    time.sleep(3)  # the standby of the last job's server is ready again by then
                    seeds = range(1 + turn * args.burst, 1 + (turn + 1) * args.burst)
                    seconds[name].append(server.jobs([{"tile": args.tile, "seed": seed} for seed in seeds]))
            count = len(list(Path(args.photos).iterdir()))
            how = "one at a time" if args.burst == 1 else f"{args.burst} sent at once, until all succeeded"
            print(f"re-layouts of {args.photos} ({count} files), {how}, tile {args.tile}:")
            for name, each in seconds.items():
                print(f"  {name:<11} median {statistics.median(each):5.2f} s   each: "
                      + " ".join(f"{s:.2f}" for s in each))  # fmt: skip
            for name in servers:
                if name != "standby":
                    ratio = statistics.median(
                        a / b for a, b in zip(seconds["standby"], seconds[name], strict=True)
                    )
                    print(f"  standby / {name}, median of the pairs: {ratio:.2f}")
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
