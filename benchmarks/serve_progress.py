"""How often a job's progress moves in `gridtsne serve`: one large job, polled.

    python benchmarks/serve_progress.py --photos /work/collections [--count 10000] [--tile 16]

Starts a real server on a free loopback port with --root at the folder of
photos (and a fresh --data, so the embedding cache starts cold), submits one
job of the first --count photos found under it (sorted by path, walked like
embed walks), and polls its status every 0.2 s until it ends. Reports, per
stage and overall, how many times `percent_completed` moved and the longest
wait between two moves: the service should report at least every few
seconds, whatever the stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photos_under(root: Path, count: int) -> list[str]:
    """Up to ``count`` photo paths relative to ``root``, in path order."""
    found = []
    for base, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in EXTENSIONS and not name.startswith("."):
                found.append(Path(base, name).relative_to(root).as_posix())
    return found[:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="A folder of photos (walked).")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()  # fmt: skip
    chosen = photos_under(args.photos.resolve(), args.count)
    data = Path(tempfile.mkdtemp(prefix="gridtsne-progress-"))
    port = free_port()
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "gridtsne", "serve", "--root", str(args.photos.resolve()), "--data", str(data),
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        http = httpx.Client(base_url=url, timeout=60)
        body = {"images": chosen, "options": {"tile": args.tile, "seed": 0}}
        answer = http.post("/v2/visualizations", json=body)
        answer.raise_for_status()
        job_id = answer.json()["output"]["id"]
        started = time.monotonic()
        samples: list[tuple[float, str | None, float]] = []
        while True:
            output = http.get(f"/v2/visualizations/{job_id}").json()["output"]
            percent = output.get("percent_completed", 0)  # none while queued
            samples.append((time.monotonic() - started, output.get("stage"), percent))
            if output["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        shutil.rmtree(data, ignore_errors=True)

    # A move: the percent changed since the previous poll. The waits are between moves, from the
    # first poll that saw the job running to its end.
    pairs = zip(samples, samples[1:], strict=False)
    moves = [samples[0]] + [now for before, now in pairs if now[2] != before[2]]
    waits = [(later[0] - earlier[0], later[1]) for earlier, later in zip(moves, moves[1:], strict=False)]
    stages: dict[str, dict] = {}
    for wait, stage in waits:
        entry = stages.setdefault(stage or "?", {"moves": 0, "longest wait s": 0.0})
        entry["moves"] += 1
        entry["longest wait s"] = round(max(entry["longest wait s"], wait), 1)
    report = {
        "commit": commit,
        "photos": len(chosen),
        "state": output["state"],
        "details": output["status"].get("details", ""),
        "job seconds": round(samples[-1][0], 1),
        "moves": len(moves) - 1,
        "longest wait between moves s": round(max((wait for wait, _ in waits), default=0.0), 1),
        "by stage (the stage a move reached)": stages,
        "percent over time (s, stage, %), every 10th move": [
            (round(t, 1), stage, round(p, 1)) for t, stage, p in moves[::10]
        ],
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
