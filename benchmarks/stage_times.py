"""Wall time of each stage of `gridtsne all` on a folder, from a cold work directory.

    python benchmarks/stage_times.py [PHOTOS] [--repeat 3]

Runs `gridtsne all PHOTOS OUT --force --json` in a temporary directory and
prints the seconds each stage took (from its manifest), then the time of a
second, no-change run (every stage fresh). Default PHOTOS: sample_images/.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def gridtsne(*args):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gridtsne", *map(str, args)], capture_output=True, text=True, check=True
    )
    return result, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="?", default=REPO / "sample_images")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    per_stage: dict[str, list[float]] = {}
    totals, reruns = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "mosaic.jpg"
            result, seconds = gridtsne("all", args.photos, out, "--json", "--force")
            totals.append(seconds)
            for summary in json.loads(result.stdout):
                per_stage.setdefault(summary["stage"], []).append(summary["seconds"])
            _, seconds = gridtsne("all", args.photos, out)
            reruns.append(seconds)
    print(f"photos: {args.photos}  runs: {args.repeat}  (median seconds)")
    for stage, values in per_stage.items():
        print(f"  {stage:<8}{statistics.median(values):8.2f}")
    print(f"  {'total':<8}{statistics.median(totals):8.2f}   (whole command, incl. start-up)")
    print(f"  {'rerun':<8}{statistics.median(reruns):8.2f}   (nothing changed: every stage fresh)")


if __name__ == "__main__":
    main()
