"""`gridtsne all` on N small distinct image files, to a web page: each stage's time and peak memory.

    python benchmarks/end_to_end_scale.py [--count 100000] [--folder DIR] [--out DIR] [--keep]
    python benchmarks/end_to_end_scale.py --count 10000 --stage-peaks

Makes N JPEGs of 64-128 px (seeded, procedurally drawn: a gradient between
two colours, a few shapes, noise, so that no two embed alike) in --folder
(default: a temporary one; files already there from an earlier run with the
same seed are reused), then runs the installed `gridtsne all FOLDER OUT.html
-w WORK --json` as one process and prints the seconds of each stage (from
the JSON summary) and peak resident memory: of the whole process (ru_maxrss,
as `/usr/bin/time -v` reports it) and, by sampling /proc every 0.2 s while
each stage's manifest has not yet appeared, of the process during each stage.

With --stage-peaks each stage runs alone instead (`gridtsne embed`, `reduce`,
`assign`, `render` in turn, each a process of its own on one work directory),
and each one's peak is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

STAGES = ("embed", "reduce", "assign", "render")
PER_FOLDER = 1000  # files per subfolder: 100,000 in one folder is slow to list in some tools
SAMPLE_SECONDS = 0.2
#: --gridtsne: another build to measure (e.g. a checkout of an older commit).
COMMAND: str | None = None


def gridtsne_command() -> str:
    """--gridtsne, else the `gridtsne` installed beside this interpreter (the venv's), else on PATH."""
    if COMMAND:
        return COMMAND
    beside = Path(sys.executable).parent / "gridtsne"
    found = str(beside) if beside.exists() else shutil.which("gridtsne")
    if not found:
        sys.exit("no gridtsne command: run this with the virtual environment's python (make test makes one)")
    return found


def draw_image(index: int, seed: int = 0) -> Image.Image:
    """Image ``index`` of the set: the same for the same (index, seed), different for any other."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(side) for side in rng.integers(64, 129, size=2))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    along = cols * np.cos(angle) + rows * np.sin(angle)
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    pixels = start + along[..., None] * (end - start)
    pixels += rng.normal(0, rng.uniform(0, 25), pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 7))):
        x0, x1 = sorted(int(v) for v in rng.integers(-width // 4, width + width // 4, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(-height // 4, height + height // 4, size=2))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            corners = rng.integers(0, max(width, height), size=(int(rng.integers(3, 7)), 2))
            draw.polygon([(int(x), int(y)) for x, y in corners], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 12)))
    return image


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index // PER_FOLDER:03d}" / f"img-{index:06d}.jpg"


def _make_range(folder: Path, start: int, stop: int, seed: int) -> int:
    made = 0
    for index in range(start, stop):
        path = image_path(folder, index)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.part")
            draw_image(index, seed).save(partial, "JPEG", quality=88)
            partial.rename(path)
            made += 1
    return made


def make_images(folder: Path, count: int, seed: int = 0, workers: int | None = None) -> int:
    """Images 0..count-1 in ``folder`` (subfolders of 1,000); returns how many had to be made."""
    folder.mkdir(parents=True, exist_ok=True)
    step = 2000
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        jobs = [
            pool.submit(_make_range, folder, start, min(count, start + step), seed)
            for start in range(0, count, step)
        ]
        return sum(job.result() for job in jobs)


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(args: list[str], workdir: Path | None = None) -> dict:
    """Run one gridtsne command; its exit code, seconds, peak RSS (MiB), stdout, stderr.

    Linux carries a process's peak RSS across exec, so the child's ru_maxrss
    is at least this process's own peak: keep this one small (the images are
    made in worker processes).

    With ``workdir``, also the peak RSS sampled during each stage: a stage
    counts as running from the end of the one before until its manifest
    (``WORK/<stage>.json``) appears.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        # Not $GRIDTSNE_CACHE or $GRIDTSNE_WORKDIR: every run starts from nothing.
        env = {name: value for name, value in os.environ.items() if not name.startswith("GRIDTSNE_")}
        command = [gridtsne_command(), *map(str, args)]
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        stage_peaks: dict[str, int] = {}
        done = threading.Event()

        def sample():
            while not done.is_set():
                running = next(
                    (stage for stage in STAGES if not (workdir / f"{stage}.json").exists()), "after"
                )
                stage_peaks[running] = max(stage_peaks.get(running, 0), _rss_kib(process.pid))
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        if workdir is not None:
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        if workdir is not None:
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        return {
            "rc": process.returncode,
            "seconds": time.perf_counter() - started,
            "peak_mib": usage.ru_maxrss / 1024,
            "stage_peaks_mib": {stage: kib / 1024 for stage, kib in stage_peaks.items()},
            "stdout": stdout.read().decode(errors="replace"),
            "stderr": stderr.read().decode(errors="replace"),
        }


def check(result: dict, what: str) -> list | dict:
    if result["rc"] != 0:
        sys.exit(f"{what} failed (exit {result['rc']}):\n{result['stderr'][-3000:]}")
    return json.loads(result["stdout"])


def run_all(folder: Path, out: Path) -> None:
    workdir = out / "work"
    result = measure(["all", folder, out / "gallery.html", "-w", workdir, "--json", "--quiet"], workdir)
    summaries = check(result, "gridtsne all")
    print(f"gridtsne all: {result['seconds']:.1f} s, peak RSS {result['peak_mib']:.0f} MiB (ru_maxrss)")
    print(f"  {'stage':<8}{'seconds':>10}{'peak MiB':>10}   (peak sampled every {SAMPLE_SECONDS} s)")
    for summary in summaries:
        stage = summary["stage"]
        peak = result["stage_peaks_mib"].get(stage, float("nan"))
        print(f"  {stage:<8}{summary['seconds']:10.1f}{peak:10.0f}   {_what_it_made(summary)}")


def run_stages(folder: Path, out: Path) -> None:
    workdir = out / "work"
    commands = {
        "embed": ["embed", folder],
        "reduce": ["reduce"],
        "assign": ["assign"],
        "render": ["render", out / "gallery.html"],
    }
    print(f"  {'stage':<8}{'seconds':>10}{'peak MiB':>10}   (each stage a process of its own)")
    for stage, args in commands.items():
        result = measure([*args, "-w", workdir, "--json", "--quiet"])
        summary = check(result, f"gridtsne {stage}")
        print(f"  {stage:<8}{result['seconds']:10.1f}{result['peak_mib']:10.0f}   {_what_it_made(summary)}")


def _what_it_made(summary: dict) -> str:
    keys = ("embedded", "computed", "skipped", "kl_divergence", "rows", "cols", "solver", "decoded")
    return ", ".join(f"{key} {summary[key]}" for key in keys if key in summary)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="How many image files (default 100,000).")
    parser.add_argument("--folder", type=Path, default=None, help="Where the images go (default: temporary).")
    parser.add_argument(
        "--out", type=Path, default=None, help="Work directory and web page (default: temporary)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temporary images and outputs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage-peaks", action="store_true", help="Run each stage alone, with its own peak.")
    parser.add_argument("--gridtsne", default=None, help="The gridtsne command to measure.")
    args = parser.parse_args()
    global COMMAND
    COMMAND = args.gridtsne

    scratch = Path(tempfile.mkdtemp(prefix="gridtsne-scale-"))
    folder = args.folder or scratch / "images"
    out = args.out or scratch / "out"
    if (out / "work").exists():
        sys.exit(f"{out / 'work'} exists: name an empty --out, so that every stage runs")
    out.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        made = make_images(folder, args.count, args.seed)
        print(
            f"{args.count:,} images in {folder} ({made:,} made, {args.count - made:,} there already) "
            f"in {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs"
        )
        (run_stages if args.stage_peaks else run_all)(folder, out)
        print(f"outputs in {out}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
