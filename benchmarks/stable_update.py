"""A map that lasts (issue 18): update a layout as photos come and go, against a fresh layout.

    python benchmarks/stable_update.py --workdirs /work/layout-work --only emoji --seeds 0 1 2 [--room 0.1]

Each collection's embeddings by the shipped model (the work directories that
``layout_quality.py --collections`` embeds into, one per collection) are laid
out by gridtsne's own reduce and assign stages, in a scratch work directory,
from 90% of the photos (a seeded random choice), then:

(a) the other 10% added in one step;
(b) the other 10% added in ten steps of 1%;
(c) 10% of the first 90% removed.

and, beside each, a fresh layout of the same final set (``--relayout``).
Reported per scenario, median over the seeds: the share of the photos that
stay and keep their cell (cells counted in the earlier grid, which a grown grid
holds in its middle) from the first layout to the last, and the median over the
steps of that share from one step to the next, the median and largest move of the others in cells, the
share of new photos whose nearest embedding neighbour among the staying photos
(cosine) is within 3 cells (and the same share on the fresh layout: how
often a layout made at once puts them that close), DPQ_16 as its authors count ties of the update and
of the fresh layout, and the seconds of the update's reduce + assign beside the
fresh layout's (their ratio), and "map kin": how far the new photos lie from their kin
on reduce's map (coords.npy), the median, over the median distance from a staying photo to
its nearest staying photo in the embedding (about 1: as close as neighbours usually are).
``--room SHARE`` lays every grid out with
assign's ``room`` (empty cells kept among the photos), the fresh ones too.
Peak memory in that table is the process's largest RSS after each scenario
(ru_maxrss), which only grows. ``--memory`` measures it apart instead: for
(a), seeded as above, the fresh layout of the final set and the update each
run in a process of their own (started from this small one, which lays out
nothing), and their peaks and seconds are compared:

    python benchmarks/stable_update.py --workdirs /work --only combined10k --seeds 0 --room 0.1 --memory

``--repeats R`` times each update (all its steps) and its fresh layout R times in turn, from a
copy of the first layout, and reports their median seconds and the median of the R ratios: on
a noisy machine a ratio of seconds measured side by side holds where one run's does not.

``--set module.NAME=VALUE`` assigns a gridtsne constant first (as ``layout_settings.py``
does), to measure a setting against the code as it is, e.g. ``assign.UPDATE_PASSES=12``;
``--memory``'s child processes get the same settings.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# isort: off
# gridtsne first, as its command line loads it: its OpenBLAS setting must come before numpy.
import gridtsne  # noqa: F401

# isort: on
import numpy as np
from layout_settings import apply_settings

from gridtsne import assign, reduce
from gridtsne.options import AssignOptions, ReduceOptions
from gridtsne.vectors import normalise
from gridtsne.workdir import Workdir, save_npy

ROOM = 0.0  # --room


def lay_out(work: Workdir, vectors: np.ndarray, seed: int, relayout: bool) -> tuple[np.ndarray, dict, float]:
    """Run reduce and assign on ``vectors`` in ``work``: the grid, assign's summary, seconds."""
    save_npy(work.file("embeddings.npy"), vectors.astype(np.float32))
    started = time.perf_counter()
    reduce.run(work, ReduceOptions(seed=seed, relayout=relayout))
    summary = assign.run(work, AssignOptions(relayout=relayout, room=ROOM))
    return np.load(work.file("grid.npy")), summary, time.perf_counter() - started


def cell_rc(cells: np.ndarray, cols: int, offset=(0, 0)) -> np.ndarray:
    row, col = np.divmod(cells, cols)
    return np.stack([row - offset[0], col - offset[1]], axis=1)


def compare(
    before_ids, before_cells, before_cols, after_ids, after_cells, summary, vectors_by_id, coords=None
) -> dict:
    """Stability and kin figures of one update, photos named by their id in the collection;
    with ``coords`` (the map, rows as ``after_ids``), also how far new photos lie from their
    kin on the map: the median distance, over the median distance from a staying photo to its
    nearest staying photo in the embedding (up to 1,000 of them, seeded)."""
    offset = summary.get("offset", [0, 0])
    after_rc = cell_rc(after_cells, summary["cols"], offset)
    before_rc = dict(zip(before_ids.tolist(), cell_rc(before_cells, before_cols), strict=True))
    staying = np.array([i for i, photo in enumerate(after_ids) if photo in before_rc])
    moves = np.array([np.hypot(*(after_rc[i] - before_rc[after_ids[i]])) for i in staying])
    new = np.array([i for i, photo in enumerate(after_ids) if photo not in before_rc])
    kin_near = np.nan
    if len(new):
        unit = normalise(vectors_by_id[after_ids].astype(np.float64))
        similarity = unit[new] @ unit[staying].T
        kin = staying[similarity.argmax(axis=1)]
        kin_near = float((np.abs(after_rc[new] - after_rc[kin]).max(axis=1) <= 3).mean())
    map_kin = np.nan
    if len(new) and coords is not None:
        some = np.random.default_rng(0).choice(len(staying), min(1000, len(staying)), replace=False)
        similarity = unit[staying[some]] @ unit[staying].T
        similarity[np.arange(len(some)), some] = -np.inf
        nearest = staying[similarity.argmax(axis=1)]
        apart = np.median(np.linalg.norm(coords[staying[some]] - coords[nearest], axis=1))
        map_kin = float(np.median(np.linalg.norm(coords[new] - coords[kin], axis=1)) / apart)
    moved = moves[moves > 0]
    return {
        "same_cell": float((moves == 0).mean()),
        "moved_median": float(np.median(moved)) if len(moved) else 0.0,
        "moved_largest": float(moved.max()) if len(moved) else 0.0,
        "kin_within_3": kin_near,
        "map_kin": map_kin,
    }


def scenario(name: str, vectors: np.ndarray, seed: int, repeats: int = 1) -> dict:
    """The figures of one scenario and seed; with ``repeats``, the update's steps and the fresh
    layout timed that many times in turn, from a copy of the first layout, and their seconds
    and the ratio of each pair given at the median (the grids are the same every time)."""
    n = len(vectors)
    order = np.random.default_rng(seed).permutation(n)
    start_ids = np.sort(order[: int(round(0.9 * n))])
    rest = order[int(round(0.9 * n)) :]
    with tempfile.TemporaryDirectory() as scratch:
        work = Workdir(Path(scratch) / "update")
        cells, summary, _ = lay_out(work, vectors[start_ids], seed, relayout=True)
        started_from = Path(scratch) / "first layout"
        if repeats > 1:  # what each repeat starts from
            shutil.copytree(work.path, started_from)
        ids, seconds, steps = start_ids, 0.0, []
        if name == "add 10%":
            steps = [np.sort(np.concatenate([start_ids, rest]))]
        elif name == "add 1% x10":
            steps = [
                np.sort(np.concatenate([start_ids, *np.array_split(rest, 10)[: k + 1]])) for k in range(10)
            ]
        elif name == "remove 10%":
            removed = np.random.default_rng(seed + 1).choice(start_ids, size=len(rest), replace=False)
            steps = [np.setdiff1d(start_ids, removed)]
        first_ids, first_cells, first_cols = ids, cells, summary["cols"]
        per_step = []
        for step in steps:
            before = ids, cells, summary["cols"]
            cells, summary, took = lay_out(work, vectors[step], seed, relayout=False)
            per_step.append(compare(*before, step, cells, summary, vectors)["same_cell"])
            seconds += took
            ids = step
        # Stability against the layout the user started from, after the last step.
        coords = np.load(work.file("coords.npy"))
        figures = compare(first_ids, first_cells, first_cols, ids, cells, summary, vectors, coords)
        figures["same_cell_step"] = float(np.median(per_step))
        figures["dpq_update"] = summary["quality"]["dpq_authors"]
        figures["mode"] = summary.get("mode")
        fresh_work = Workdir(Path(scratch) / "fresh")
        fresh_cells, fresh_summary, fresh_seconds = lay_out(fresh_work, vectors[ids], seed, relayout=True)
        figures["dpq_fresh"] = fresh_summary["quality"]["dpq_authors"]
        # The same kin figure on the fresh layout: how often any layout puts kin that close.
        fresh = compare(first_ids, first_cells, first_cols, ids, fresh_cells, fresh_summary, vectors)
        figures["kin_within_3_fresh"] = fresh["kin_within_3"]
        pairs = [(seconds, fresh_seconds)]
        for again in range(1, repeats):
            again_work = Workdir(Path(scratch) / f"update {again}")
            shutil.copytree(started_from, again_work.path)
            update_seconds = sum(lay_out(again_work, vectors[step], seed, False)[2] for step in steps)
            fresh_work = Workdir(Path(scratch) / f"fresh {again}")
            fresh_seconds = lay_out(fresh_work, vectors[ids], seed, relayout=True)[2]
            pairs.append((update_seconds, fresh_seconds))
        figures["update_s"] = float(np.median([update for update, _ in pairs]))
        figures["fresh_s"] = float(np.median([fresh for _, fresh in pairs]))
        figures["time_ratio"] = float(np.median([update / fresh for update, fresh in pairs]))
        if repeats > 1:
            each = " ".join(f"{update:.2f}/{fresh:.2f}" for update, fresh in pairs)
            print(f"  {name}, seed {seed}: update/fresh seconds {each}", file=sys.stderr, flush=True)
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def memory_child(step: str, folder: str, seed: int) -> None:
    """One step of ``--memory`` in this process: "start" lays out the first 90% in folder/update,
    "update" adds the rest there, "fresh" lays the whole set out in folder/fresh; prints its
    peak RSS and seconds."""
    vectors = np.load(Path(folder) / "vectors.npy")
    order = np.random.default_rng(seed).permutation(len(vectors))
    first = np.sort(order[: int(round(0.9 * len(vectors)))])
    work = Workdir(Path(folder) / ("fresh" if step == "fresh" else "update"))
    _, _, seconds = lay_out(
        work, vectors[first] if step == "start" else vectors, seed, relayout=step == "fresh"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "seconds": seconds}))


def memory(folders, seeds, settings: list[str]) -> None:
    """(a) add 10%: the update's peak RSS and seconds against a fresh layout's, each in its own process."""
    print(f"{'collection':<11} {'N':>6} {'seed':>4} {'fresh MiB':>9} {'update MiB':>10} {'ratio':>6} "
          f"{'fresh s':>7} {'update s':>8}")  # fmt: skip
    for folder in folders:
        vectors = np.load(folder / "embeddings.npy")
        for seed in seeds:
            with tempfile.TemporaryDirectory() as scratch:
                np.save(Path(scratch) / "vectors.npy", vectors.astype(np.float32))
                measured = {}
                for step in ("start", "update", "fresh"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", step, scratch, str(seed), "--room", str(ROOM),
                         "--set", *settings],
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    measured[step] = json.loads(out.stdout.strip().splitlines()[-1])
            fresh, update = measured["fresh"], measured["update"]
            print(
                f"{folder.name:<11} {len(vectors):>6} {seed:>4} {fresh['peak_mib']:>9.0f} "
                f"{update['peak_mib']:>10.0f} {update['peak_mib'] / fresh['peak_mib']:>6.2f} "
                f"{fresh['seconds']:>7.2f} {update['seconds']:>8.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdirs", default="/work/layout-work", help="one embedded work directory each")
    parser.add_argument("--only", nargs="*", help="only these collections")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="*", default=["add 10%", "add 1% x10", "remove 10%"])
    parser.add_argument("--room", type=float, default=0.0, help="assign's room for every layout")
    parser.add_argument(
        "--memory", action="store_true", help="(a)'s peak memory, each layout in its own process"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="MODULE.NAME=VALUE",
        help="assign a gridtsne module's constant first, e.g. assign.UPDATE_PASSES=12",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="time each update and its fresh layout this many times in turn; report the medians",
    )  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("STEP", "FOLDER", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_settings(args.set)
    global ROOM
    ROOM = args.room
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]))
        return
    folders = sorted(p for p in Path(args.workdirs).iterdir() if (p / "embeddings.npy").is_file())
    if args.memory:
        memory([f for f in folders if not args.only or f.name in args.only], args.seeds, args.set)
        return
    print(
        f"{'collection':<11} {'N':>5} {'scenario':<11} {'same cell':>9} {'per step':>8} "
        f"{'moved med':>9} {'max':>5} "
        f"{'kin<=3':>6} {'fresh':>6} {'DPQ upd':>7} {'DPQ fresh':>9} {'ratio':>6} "
        f"{'upd s':>6} {'fresh s':>7} "
        f"{'upd/fresh':>9} {'RSS MB':>7} {'map kin':>7}"
    )
    for folder in folders:
        if args.only and folder.name not in args.only:
            continue
        vectors = np.load(folder / "embeddings.npy")
        for name in args.scenarios:
            runs = [scenario(name, vectors, seed, args.repeats) for seed in args.seeds]
            # A removal has no new photos, so no kin: nan, printed as such, without numpy's warning.
            median = {
                key: float(np.nanmedian(values)) if not np.isnan(values).all() else float("nan")
                for key in runs[0]
                if key != "mode"
                for values in [np.array([run[key] for run in runs], dtype=float)]
            }
            modes = ",".join(sorted({str(run["mode"]) for run in runs}))
            print(
                f"{folder.name:<11} {len(vectors):>5} {name:<11} {median['same_cell']:>9.1%} "
                f"{median['same_cell_step']:>8.1%} "
                f"{median['moved_median']:>9.2f} {median['moved_largest']:>5.1f} "
                f"{median['kin_within_3']:>6.1%} {median['kin_within_3_fresh']:>6.1%} "
                f"{median['dpq_update']:>7.3f} {median['dpq_fresh']:>9.3f} "
                f"{median['dpq_update'] / median['dpq_fresh']:>6.3f} {median['update_s']:>6.2f} "
                f"{median['fresh_s']:>7.2f} {median['time_ratio']:>9.2f} "
                f"{median['peak_rss_mb']:>7.0f} {median['map_kin']:>7.2f}  {modes}",
                flush=True,
            )


if __name__ == "__main__":
    main()
