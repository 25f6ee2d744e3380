"""The web page at 1,000, 10,000 and 100,000 real photos: render, folder size, and a browser's wait.

    python benchmarks/web_scale.py --photos /work/collections/* [--sizes 1000,10000,100000]
        [--cache-from WORK/cache ...] [--keep DIR] [--json web_scale.json] [--queries flower,animals]
    python benchmarks/web_scale.py --measure DIR/web-100000 ...     # measure pages already written

--photos names folders of real photos, e.g. the nine collections that
``benchmarks/image_collections.py --out /work/collections`` builds (11,529
images); --cache-from the caches of earlier runs on them (--cache DIR of
``gridtsne all``), e.g. ``/work/layout-work/*/cache`` of layout_quality.py.

For each size N, a folder of N photos is made in a temporary folder from the
photos under --photos (gridtsne's own walk of them): a random sample (seeded)
when there are at least N, else all of them repeated, each copy in its own
subfolder (``copy03/...``) until there are N, the last copy a random sample.
The files are hard links (copies where a link cannot be made), never symbolic
links, which gridtsne would count once. A repeated photo is a distinct file
with the content of another: embedding finds it in the content-keyed cache,
and the page's layout of repeats says nothing of layout quality; only the
page's size and speed are figures there.

Then the real command, as a user runs it, in a process of its own:

    python -m gridtsne all PHOTOS N/page.html -w N/work --cache CACHE --json -q

and its seconds per stage (its JSON summary) and peak memory (``wait4``).
The embedding cache is one for every size (a fresh one in the temporary
folder, or --cache); --cache-from copies the chunks of existing caches into
it first (e.g. those of earlier runs on the same photos), so that embedding
them again is skipped. The neighbours render computes ("more like this") are
timed again alone, by ``neighbours_scale.measure`` on the work directory's
embeddings.npy (the same search render chooses, on 2 threads), to say how
much of the render they are.

The page folder's size is split by part (tiles/, previews/, data.js,
neighbours.js, the rest). Then ``web_scale.mjs`` opens it from the file
system in headless Chromium (Debian's, driven by playwright-core from
tests/browser: ``npm ci --prefix tests/browser``) at 1280 x 800 and reports:

- first picture: from navigation start to the first pyramid tile drawn on
  the canvas, over --loads loads, each in a fresh browser context (the OS's
  file cache is warm: the page was just written);
- search: from the input event of a one-word query to the match count shown
  and to the end of the frame that redraws the map (the first query of a
  page builds its index of names; then the median of the next ones);
- pan and zoom: the mouse wheel from the whole map to full size (128 px
  cells), four drags there, half way out, four drags, out past the whole map
  and in again; the interval between consecutive ``requestAnimationFrame``
  timestamps over all of it (headless Chromium makes frames at 60 Hz, so the
  interval is 16.7 ms when no frame is late), and the time of the page's own
  frame callbacks (its draws) per frame;
- memory: the tab's renderer process, resident now and at its peak (VmRSS
  and VmHWM in /proc; the renderer is the one that used the most CPU), the
  GPU process beside it, and the JS heap (CDP Performance.getMetrics).

Prints a table and writes every figure to --json. The temporary folder
(photos, work directories) is removed at the end; --keep DIR keeps each page
as DIR/web-N/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gridtsne import images

REPO = Path(__file__).resolve().parent.parent
BROWSER = Path(__file__).with_name("web_scale.mjs")
STAGES = ("embed", "reduce", "assign", "render")


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "gridtsne", "benchmarks")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def pool_of(roots: list[Path]) -> list[tuple[Path, str]]:
    """Every photo gridtsne finds under ``roots``, with its name below a folder named as its root."""
    found = []
    for root in roots:
        for path in images.find_images([root]).files:
            found.append((path, f"{root.resolve().name}/{path.relative_to(root).as_posix()}"))
    return found


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copyfile(source, target)


def make_photos(pool: list[tuple[Path, str]], n: int, folder: Path, seed: int) -> dict:
    """``n`` photos in ``folder``: a sample of ``pool``, or all of it repeated, then a sample."""
    rng = np.random.default_rng(seed)
    if n <= len(pool):
        for i in np.sort(rng.choice(len(pool), n, replace=False)):
            link(pool[i][0], folder / pool[i][1])
        return {"photos": n, "distinct": n, "copies": 1}
    full, rest = divmod(n, len(pool))
    for copy in range(full + (1 if rest else 0)):
        chosen = range(len(pool)) if copy < full else np.sort(rng.choice(len(pool), rest, replace=False))
        for i in chosen:
            link(pool[i][0], folder / f"copy{copy:02d}" / pool[i][1])
    return {"photos": n, "distinct": len(pool), "copies": round(n / len(pool), 2)}


def seed_cache(cache: Path, sources: list[Path]) -> int:
    """Copies the chunks (``chunk-*.npz``, ``merged-*.npz``) of other embedding caches into ``cache``."""
    copied = 0
    for source in sources:
        for chunk in sorted(source.glob("*/*.npz")):
            target = cache / chunk.parent.name / chunk.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(chunk, target)
                copied += 1
    return copied


def run_all(photos: Path, page: Path, work: Path, cache: Path) -> dict:
    """``gridtsne all`` as a user runs it: its JSON summary, wall seconds and peak memory."""
    command = [sys.executable, "-m", "gridtsne", "all", str(photos), str(page), "-w", str(work),
               "--cache", str(cache), "--json", "-q"]  # fmt: skip
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise SystemExit(f"gridtsne all failed ({process.returncode})")
    stages = {entry["stage"]: entry for entry in json.loads(text) if isinstance(entry, dict)}
    return {
        "seconds": round(seconds, 1),
        "peak_mib": round(usage.ru_maxrss / 1024),
        "stages": {name: round(stages[name].get("seconds", 0), 1) for name in STAGES if name in stages},
        "placed": stages.get("assign", {}).get("placed"),
        "grid": [stages.get("assign", {}).get("rows"), stages.get("assign", {}).get("cols")],
        "computed": stages.get("embed", {}).get("computed"),
    }


def time_neighbours(embeddings: Path) -> dict:
    """The neighbours render computes, timed alone (benchmarks/neighbours_scale.py's measure)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import neighbours_scale

    with contextlib.redirect_stdout(sys.stderr):
        row = neighbours_scale.measure(np.load(embeddings, mmap_mode="r"), "page", None)
    return {key: round(value, 4 if key in ("recall_at_12", "similarity_kept") else 1)
            if isinstance(value, float) else value for key, value in row.items()}  # fmt: skip


def folder_size(folder: Path) -> dict:
    """Bytes (and files) of the page folder by part."""
    parts: dict[str, list[int]] = {}
    total_blocks = 0
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        top = path.relative_to(folder).parts[0]
        part = top if top in ("tiles", "previews", "data.js", "neighbours.js") else "other"
        found = path.stat()
        entry = parts.setdefault(part, [0, 0])
        entry[0] += found.st_size
        entry[1] += 1
        total_blocks += found.st_blocks * 512
    sizes = {part: {"bytes": b, "files": f} for part, (b, f) in sorted(parts.items())}
    sizes["total"] = {"bytes": sum(b for b, _ in parts.values()), "files": sum(f for _, f in parts.values()),
                      "on_disk": total_blocks}  # fmt: skip
    return sizes


def measure_browser(page: Path, queries: list[str], loads: int) -> dict:
    job = {"page": str(page.resolve()), "queries": queries, "loads": loads}
    load_before = os.getloadavg()[0]
    result = subprocess.run(
        ["node", str(BROWSER), json.dumps(job)], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"the browser run failed:\n{result.stderr}")
    report = json.loads(result.stdout.splitlines()[-1])
    renderers = [p for p in report["memory"]["processes"] if p["type"] == "renderer"]
    report["memory"]["renderer"] = renderers[0] if renderers else None
    report["load_before"] = round(load_before, 2)
    report["load_after"] = round(os.getloadavg()[0], 2)
    return report


def mb(size: dict, part: str) -> str:
    return f"{size.get(part, {}).get('bytes', 0) / 1e6:.1f}"


def print_table(rows: list[dict]) -> None:
    head = (f"{'photos':>8} {'render s':>9} {'neigh s':>8} {'first ms':>9} {'search ms':>10} "
            f"{'frame med/p99':>14} {'draw med/p99':>13} {'tab MiB':>8} {'heap':>6} "
            f"{'tiles MB':>9} {'prev MB':>8} {'data MB':>8} {'neigh MB':>9} {'total MB':>9}")  # fmt: skip
    print(head)
    for row in rows:
        b, size = row["browser"], row["size"]
        render = row.get("all", {}).get("stages", {}).get("render")
        neighbours = row.get("neighbours", {}).get("seconds")
        search = b["search"][0] if b["search"] else {}
        frames, renderer = b["frames"], b["memory"]["renderer"] or {}
        print(f"{b['count']:>8,} {render if render is not None else '-':>9} "
              f"{neighbours if neighbours is not None else '-':>8} {b['firstTileMs']['median']:>9} "
              f"{search.get('redrawnMs', '-'):>10} {frames['medianMs']:>6}/{frames['p99Ms']:<7} "
              f"{frames['drawMedianMs']:>5}/{frames['drawP99Ms']:<7} {renderer.get('peakMiB', '-'):>8} "
              f"{b['memory']['jsHeapUsedMiB']:>6} {mb(size, 'tiles'):>9} {mb(size, 'previews'):>8} "
              f"{mb(size, 'data.js'):>8} {mb(size, 'neighbours.js'):>9} {mb(size, 'total'):>9}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", nargs="+", type=Path, help="folders of photos, e.g. /work/collections/*")
    parser.add_argument("--sizes", default="1000,10000,100000", help="photos per page, comma-separated")
    parser.add_argument(
        "--cache", type=Path, help="the embedding cache (default: a fresh one, removed after)"
    )
    parser.add_argument(
        "--cache-from", nargs="+", type=Path, default=[], help="caches whose chunks to copy in"
    )
    parser.add_argument("--keep", type=Path, help="keep each page as DIR/web-N/")
    parser.add_argument("--json", type=Path, default=Path("web_scale.json"), help="the report's path")
    parser.add_argument("--queries", default="flower,animals", help="one-word searches, comma-separated")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed for the first picture")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photos sampled")
    parser.add_argument(
        "--tmp", type=Path, help="where the temporary folder goes (on the photos' file system)"
    )
    parser.add_argument("--measure", nargs="+", type=Path, help="only measure these page folders")
    args = parser.parse_args()
    queries = [q for q in args.queries.split(",") if q]
    report = {"commit": commit(), "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "chromium": subprocess.run([os.environ.get("CHROMIUM", "/usr/bin/chromium"), "--version"],
                                         capture_output=True, text=True).stdout.strip(),
              "pages": []}  # fmt: skip

    def save() -> None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")

    if args.measure:
        for folder in args.measure:
            folder = folder.parent if folder.suffix == ".html" else folder
            row = {"page": str(folder), "size": folder_size(folder)}
            row["browser"] = measure_browser(folder / "index.html", queries, args.loads)
            report["pages"].append(row)
            save()
        print_table(report["pages"])
        return
    if not args.photos:
        parser.error("--photos is needed (or --measure)")
    pool = pool_of(args.photos)
    report["pool"] = {"photos": len(pool), "folders": [str(p) for p in args.photos]}
    print(
        f"{len(pool):,} photos under {len(args.photos)} folders; commit {report['commit']}", file=sys.stderr
    )
    with tempfile.TemporaryDirectory(prefix="web-scale-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        cache = args.cache or tmp / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        if args.cache_from:
            report["cache_chunks_copied"] = seed_cache(cache, args.cache_from)
        for n in [int(s) for s in args.sizes.split(",") if s]:
            row = {"n": n, "load_before_render": round(os.getloadavg()[0], 2)}
            started = time.perf_counter()
            row["input"] = make_photos(pool, n, tmp / f"photos-{n}", args.seed)
            row["input"]["seconds_to_make"] = round(time.perf_counter() - started, 1)
            page = tmp / str(n) / "page.html"
            row["all"] = run_all(tmp / f"photos-{n}", page, tmp / str(n) / "work", cache)
            row["neighbours"] = time_neighbours(tmp / str(n) / "work" / "embeddings.npy")
            shutil.rmtree(tmp / f"photos-{n}")
            folder = page.with_suffix("")
            row["size"] = folder_size(folder)
            row["browser"] = measure_browser(folder / "index.html", queries, args.loads)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                kept = args.keep / f"web-{n}"
                shutil.rmtree(kept, ignore_errors=True)
                shutil.move(folder, kept)
                row["kept"] = str(kept)
            shutil.rmtree(tmp / str(n))
            report["pages"].append(row)
            save()
    print_table(report["pages"])


if __name__ == "__main__":
    main()
