"""A map that lasts: when photos come and go, the ones that stay keep their place (issue 18)."""

import numpy as np
import pytest

from gridtsne import assign, embed, reduce
from gridtsne.options import AssignOptions, EmbedOptions, ReduceOptions
from gridtsne.workdir import Workdir, save_npy

from .conftest import SAMPLES


@pytest.fixture(scope="session")
def vectors(tmp_path_factory):
    """The shipped model's embeddings of the 250 sample photos (real vectors, embedded once)."""
    work = Workdir(tmp_path_factory.mktemp("samples"))
    embed.run(work, EmbedOptions(paths=[str(SAMPLES)]))
    return work.load_embeddings()


def lay_out(folder, vectors, **options):
    """reduce and assign on ``vectors`` in ``folder``: each image's (row, col) and assign's summary."""
    work = Workdir(folder)
    save_npy(work.file("embeddings.npy"), np.asarray(vectors, dtype=np.float32))
    reduce.run(work, ReduceOptions(**{k: v for k, v in options.items() if k in ReduceOptions.names()}))
    summary = assign.run(
        work, AssignOptions(**{k: v for k, v in options.items() if k in AssignOptions.names()})
    )
    cells = np.load(work.file("grid.npy"))
    offset = summary.get("offset", [0, 0])
    row, col = np.divmod(cells, summary["cols"])
    return np.stack([row - offset[0], col - offset[1]], axis=1), summary


def test_an_added_batch_leaves_the_map_in_place_and_near_duplicates_join_their_twin(vectors, tmp_path):
    first, _ = lay_out(tmp_path / "w", vectors[:240])
    twins = np.array([3, 100, 200])
    noise = np.random.default_rng(0).normal(0, 1e-3, (3, vectors.shape[1]))
    added = np.vstack([vectors[:240], vectors[twins] * (1 + noise)])
    after, summary = lay_out(tmp_path / "w", added)
    assert summary["mode"] == "update" and summary["new"] == 3 and summary["removed"] == 0
    same = (after[:240] == first).all(axis=1)
    assert same.mean() >= 0.8, same.mean()  # the map the user knows stays where it was
    moves = np.abs(after[:240] - first)[~same].max(axis=1)
    assert np.median(moves) <= 2 and moves.max() <= 3, moves  # the others step aside, no farther
    # Each new photo lands beside the photo it nearly duplicates.
    assert (np.abs(after[240:] - after[twins]).max(axis=1) <= 2).all(), (after[240:], after[twins])


def test_removed_photos_leave_holes_and_nothing_far_from_them_moves(vectors, tmp_path):
    first, _ = lay_out(tmp_path / "w", vectors)
    removed = np.array([5, 60, 61, 180])
    keep = np.setdiff1d(np.arange(len(vectors)), removed)
    after, summary = lay_out(tmp_path / "w", vectors[keep])
    assert summary["mode"] == "update" and summary["removed"] == 4 and summary["new"] == 0
    moved = (after != first[keep]).any(axis=1)
    assert summary["moved"] == moved.sum() and moved.mean() <= 0.05, moved.mean()
    # The photos around each hole were free to re-sort for the neighbours they lost.
    assert summary["refined_cells"] >= len(removed) * 9, summary["refined_cells"]
    # Only photos near a hole re-sort, a short way: farther than the refinement's reach, none.
    to_hole = np.abs(first[keep][:, None, :] - first[removed][None, :, :]).max(axis=2).min(axis=1)
    assert (to_hole[moved] <= assign.REFINE_AROUND + 1).all(), to_hole[moved]
    assert (np.abs(after - first[keep]).max(axis=1) <= 2).all()


def test_relayout_is_exactly_a_fresh_layout_and_updates_are_deterministic(vectors, tmp_path):
    lay_out(tmp_path / "a", vectors[:200])
    lay_out(tmp_path / "b", vectors[:200])
    updated_a, _ = lay_out(tmp_path / "a", vectors[:210])
    updated_b, _ = lay_out(tmp_path / "b", vectors[:210])
    assert (updated_a == updated_b).all()  # the same changes from the same start: the same grid
    relaid, summary = lay_out(tmp_path / "a", vectors[:210], relayout=True)
    fresh, _ = lay_out(tmp_path / "fresh", vectors[:210])
    assert summary["mode"] == "fresh" and (relaid == fresh).all()
    assert (Workdir(tmp_path / "a").file("coords.npy").read_bytes()
            == Workdir(tmp_path / "fresh").file("coords.npy").read_bytes())  # fmt: skip


def test_too_many_new_photos_lay_the_map_out_afresh_and_say_why(vectors, tmp_path):
    lay_out(tmp_path / "w", vectors[:100])
    messages = []
    work = Workdir(tmp_path / "w")
    save_npy(work.file("embeddings.npy"), vectors[:200])
    from gridtsne.stage import Context

    summary = reduce.run(work, ReduceOptions(), Context(on_message=messages.append))
    assert summary["mode"] == "fresh" and "50% of the photos are new" in summary["why"]
    assert any("--relayout-above" in line for line in messages)
    assert assign.run(work, AssignOptions())["mode"] == "fresh"  # it follows the new map


def test_a_fixed_grid_too_small_for_the_added_photos_is_a_clear_error(cli, vectors, tmp_path):
    np.save(tmp_path / "v.npy", vectors[:100])
    np.save(tmp_path / "more.npy", vectors[:101])
    work = tmp_path / "w"
    assert cli("reduce", "-w", work, "--embeddings", tmp_path / "v.npy").exit_code == 0
    assert cli("assign", "-w", work, "--grid", "10x10").exit_code == 0
    before = (work / "grid.npy").read_bytes()
    assert cli("reduce", "-w", work, "--embeddings", tmp_path / "more.npy").exit_code == 0
    result = cli("assign", "-w", work, "--grid", "10x10")
    assert result.exit_code == 1 and "101 images do not fit a 10x10 grid" in result.stderr
    assert (work / "grid.npy").read_bytes() == before


def test_an_update_cut_short_between_its_files_is_finished_by_a_rerun(vectors, tmp_path, monkeypatch):
    lay_out(tmp_path / "w", vectors[:200])
    lay_out(tmp_path / "whole", vectors[:200])
    expected, _ = lay_out(tmp_path / "whole", vectors[:205])
    work = Workdir(tmp_path / "w")
    save_npy(work.file("embeddings.npy"), vectors[:205])
    real_save = reduce.save_npy

    def killed(path, array):  # the state was written; the process dies before coords.npy
        raise KeyboardInterrupt

    monkeypatch.setattr(reduce, "save_npy", killed)
    with pytest.raises(KeyboardInterrupt):
        reduce.run(work, ReduceOptions())
    monkeypatch.setattr(reduce, "save_npy", real_save)
    after, summary = lay_out(tmp_path / "w", vectors[:205])
    assert (after == expected).all()


def test_the_command_line_reports_the_update(cli, vectors, tmp_path):
    np.save(tmp_path / "v.npy", vectors[:200])
    np.save(tmp_path / "more.npy", vectors[:204])
    work = tmp_path / "w"
    cli("reduce", "-w", work, "--embeddings", tmp_path / "v.npy")
    cli("assign", "-w", work)
    assert (
        "map updated, 200 photos kept their place, 4 new"
        in cli("reduce", "-w", work, "--embeddings", tmp_path / "more.npy").stderr
    )
    result = cli("assign", "-w", work)
    assert "grid updated" in result.stderr and "4 new, 0 removed" in result.stderr
    assert "DPQ_16" in result.stderr
    status = cli("status", "-w", work)
    assert status.exit_code == 0 and "updated: " in status.stdout and "4 new, 0 removed" in status.stdout
    relaid = cli("assign", "-w", work, "--relayout", "--json")
    assert '"mode": "fresh"' in relaid.stdout


def test_on_a_large_grid_nothing_far_from_a_new_photo_moves():
    # 2,500 cells: above the exact solver's limit, the blocks solver's windows place the update.
    rows = cols = 50
    rng = np.random.default_rng(0)
    home = rng.permutation(rows * cols)[:2450]
    row, col = np.divmod(home, cols)
    coords = np.stack([col, row], axis=1) + rng.uniform(-0.3, 0.3, (2450, 2))
    embeddings = np.hstack([coords / 50, rng.normal(0, 0.01, (2450, 6))]).astype(np.float32)
    # Three new photos, in the middle of the map, twins of photos there.
    twins = np.flatnonzero((np.abs(row - 25) < 3) & (np.abs(col - 25) < 3))[:3]
    coords = np.vstack([coords, coords[twins]])
    embeddings = np.vstack([embeddings, embeddings[twins]])
    home = np.concatenate([home, [-1, -1, -1]])
    cells, results = assign.update_layout(coords, embeddings, home, rows, cols)
    assert results["new"] == 3 and len(np.unique(cells)) == len(cells)
    new_rc = np.stack(np.divmod(cells[-3:], cols), axis=1)
    kept_rc = np.stack(np.divmod(cells[:-3], cols), axis=1)
    far = np.abs(np.stack([row, col], axis=1)[:, None, :] - new_rc[None]).max(axis=2).min(axis=1) > 12
    assert (kept_rc[far] == np.stack([row, col], axis=1)[far]).all()  # far away, nothing moved
    assert (np.abs(new_rc - np.stack(divmod(home[twins], cols), axis=1)).max(axis=1) <= 3).all()


def test_room_keeps_empty_cells_among_the_photos_where_added_photos_join_their_kin(vectors, tmp_path):
    """With --room 0.1 a fresh grid keeps a tenth of its cells empty, spread over it; adding
    10% more photos then fills them and nearly every photo keeps its cell."""
    n = 220
    first, summary = lay_out(tmp_path / "w", vectors[:n], room=0.1)
    empty = summary["rows"] * summary["cols"] - n
    assert empty >= 0.1 * n
    taken = np.zeros((summary["rows"], summary["cols"]), dtype=bool)
    taken[first[:, 0], first[:, 1]] = True
    half_r, half_c = summary["rows"] // 2, summary["cols"] // 2
    for quadrant in (
        taken[:half_r, :half_c],
        taken[:half_r, half_c:],
        taken[half_r:, :half_c],
        taken[half_r:, half_c:],
    ):
        assert (~quadrant).any()  # the room is spread, not all at one edge
    after, update = lay_out(tmp_path / "w", vectors[: n + 22], room=0.1)
    assert update["mode"] == "update" and update["new"] == 22
    assert (after[:n] == first).all(axis=1).mean() >= 0.8  # issue 18's promise for a 10% step
    # Where the new photos went: near the staying photo nearest them in the embedding (a random
    # cell of this 16 x 16 grid would be 6 to 7 cells away).
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    kin = np.argmax(unit[n : n + 22] @ unit[:n].T, axis=1)
    kin_cells = np.abs(after[n:] - after[kin]).max(axis=1)
    assert np.median(kin_cells) <= 3


def test_room_is_checked_as_a_share_up_to_a_half(cli, tmp_path):
    result = cli("assign", "-w", tmp_path, "--room", "0.8")
    assert result.exit_code == 2 and "0.8 is not a share from 0 to 0.5" in result.output


@pytest.mark.parametrize(
    "exact_pairs, share",
    [(reduce.EXACT_PLACING_PAIRS, 0.8), (0, 0.5)],
    ids=["exact search", "openTSNE's index"],
)
def test_new_photos_are_placed_on_the_map_by_their_twin_either_way(vectors, monkeypatch, exact_pairs, share):
    """Placing new photos searches the staying ones exactly in the full embedding, or (many
    pairs) through openTSNE's index over PCA-50: either way the map of the staying photos is
    untouched and near-duplicates land by their twin (the exact search more often: 9 of these
    10 against 6), most of them right on it: openTSNE's grid, centred on the map, no longer
    shifts them off it (a fifteenth of the map's spread before)."""
    monkeypatch.setattr(reduce, "EXACT_PLACING_PAIRS", exact_pairs)
    kept_map, _ = reduce.tsne_map(vectors[:240], seed=0)
    twins = np.arange(5, 240, 24)
    noise = np.random.default_rng(0).normal(0, 1e-3, (len(twins), vectors.shape[1]))
    rows = np.vstack([vectors[:240], vectors[twins] * (1 + noise)]).astype(np.float32)
    given = rows.copy()
    points = reduce.place_new_points(rows, kept_map, np.arange(len(rows)) < 240, seed=0)
    assert np.array_equal(rows, given)  # the caller's vectors are left as they were
    scaled = reduce.place_new_points(given, kept_map, np.arange(len(rows)) < 240, seed=0, overwrite=True)
    assert np.array_equal(scaled, points)  # overwrite (reduce's own array) saves a copy, not bits
    assert (points[:240] == kept_map).all()
    spread = np.median(np.linalg.norm(kept_map - kept_map.mean(axis=0), axis=1))
    apart = np.linalg.norm(points[240:] - kept_map[twins], axis=1)
    assert (apart < 0.15 * spread).mean() >= share, apart / spread
    assert (apart < 0.02 * spread).mean() >= 0.6, apart / spread


def test_updates_swap_on_the_fresh_layouts_own_components(tmp_path):
    """The fresh layout keeps refinement's basis in assign's state and every update reuses it
    (no PCA of its own, a third of a second at 10,000 photos): the same basis after updates."""
    from gridtsne.workdir import ASSIGN_STATE, load_state

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, 300))
    vectors = (centres[rng.integers(0, 12, 660)] + 0.3 * rng.normal(size=(660, 300))).astype(np.float32)
    work = tmp_path / "w"
    lay_out(work, vectors[:600])
    _, fresh = load_state(work / ASSIGN_STATE)
    assert fresh["basis_mean"].shape == (300,) and fresh["basis_directions"].shape == (300, 256)
    for stop in (630, 660):
        _, summary = lay_out(work, vectors[:stop])
        assert summary["mode"] == "update"
        _, state = load_state(work / ASSIGN_STATE)
        assert np.array_equal(state["basis_mean"], fresh["basis_mean"])
        assert np.array_equal(state["basis_directions"], fresh["basis_directions"])


def test_an_update_takes_the_new_photos_kin_from_reduce_and_gets_the_grid_its_own_search_gives(
    vectors, tmp_path, monkeypatch
):
    """Reduce finds each new photo's nearest staying photo as it places it; assign takes that
    kin instead of searching again, and the grid is the one its own search gives. A kin
    that does not fit the photos, or is not made of row numbers (a damaged state), is
    searched again."""
    from gridtsne.workdir import REDUCE_STATE, load_state, save_state

    searched = []
    search = assign.nearest_unit_rows
    monkeypatch.setattr(assign, "nearest_unit_rows", lambda *a, **k: searched.append(1) or search(*a, **k))
    twins = np.array([3, 100, 200])
    noise = np.random.default_rng(0).normal(0, 1e-3, (3, vectors.shape[1]))
    added = np.vstack([vectors[:240], vectors[twins] * (1 + noise)])
    grids = []
    damages = {"taken": None, "rolled": lambda kin: np.roll(kin, 1), "floats": lambda kin: kin + 0.5}
    for folder, damage in damages.items():
        work = Workdir(tmp_path / folder)
        lay_out(work.path, vectors[:240])
        save_npy(work.file("embeddings.npy"), added.astype(np.float32))
        reduce.run(work, ReduceOptions())
        meta, state = load_state(work.file(REDUCE_STATE))
        assert (state["kin"][:240] == -1).all() and (state["kin"][240:] == twins).all()
        if damage:
            save_state(work.file(REDUCE_STATE), meta, **{**state, "kin": damage(state["kin"])})
        searched.clear()
        assert assign.run(work, AssignOptions())["mode"] == "update"
        assert bool(searched) == (damage is not None)
        grids.append(np.load(work.file("grid.npy")))
    assert all((grid == grids[0]).all() for grid in grids)


def test_assign_takes_the_photos_keys_from_reduce_only_for_the_vectors_reduce_read(
    vectors, tmp_path, monkeypatch
):
    """The keys that match photos across updates are hashed once: assign takes reduce's where
    reduce's state is of the very embeddings.npy it reads, and hashes the rows itself where the
    file changed after reduce or the state's keys are damaged, so a later update still knows
    each photo."""
    from gridtsne.vectors import row_keys
    from gridtsne.workdir import ASSIGN_STATE, REDUCE_STATE, load_state, save_state

    hashed = []
    monkeypatch.setattr(assign, "row_keys", lambda rows: hashed.append(len(rows)) or row_keys(rows))
    work = Workdir(tmp_path / "w")
    lay_out(work.path, vectors[:240])
    assert hashed == []  # reduce's keys, of the same file
    assert (load_state(work.file(ASSIGN_STATE))[1]["keys"] == row_keys(vectors[:240])).all()
    # A photo's vector changes after reduce ran: assign hashes the file it reads.
    changed = np.asarray(vectors[:240], dtype=np.float32).copy()
    changed[7] *= 1.5
    save_npy(work.file("embeddings.npy"), changed)
    assign.run(work, AssignOptions(relayout=True))
    assert hashed == [240]
    assert (load_state(work.file(ASSIGN_STATE))[1]["keys"] == row_keys(changed)).all()
    # Reduce's keys damaged (the wrong length): hashed again.
    reduce.run(work, ReduceOptions())
    meta, state = load_state(work.file(REDUCE_STATE))
    save_state(work.file(REDUCE_STATE), meta, **{**state, "keys": state["keys"][:-1]})
    hashed.clear()
    assign.run(work, AssignOptions(relayout=True))
    assert hashed == [240]
    assert (load_state(work.file(ASSIGN_STATE))[1]["keys"] == row_keys(changed)).all()


UPDATE_CHILD = """
import sys
from gridtsne import assign, reduce
from gridtsne.workdir import Workdir
work = Workdir(sys.argv[1])
with work.lock():  # as the command line runs each stage
    reduce.run(work)
    assign.run(work)
"""


def test_kill_9_at_any_moment_of_an_update_leaves_a_whole_layout_and_a_rerun_finishes_it(tmp_path):
    """A real SIGKILL, at several moments of an update (reduce then assign, in a process of
    their own): every file left is the earlier layout's or the update's, never a torn one,
    and running the update again gives exactly the grid of an update never killed, and
    clears the temporary that a kill in the middle of a write leaves."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 64))
    vectors = (centres[rng.integers(0, 20, 2200)] + 0.4 * rng.normal(size=(2200, 64))).astype(np.float32)
    start = tmp_path / "start"
    lay_out(start, vectors[:2000])
    names = ("coords.npy", "grid.npy", "reduce-state.npz", "assign-state.npz")
    earlier = {name: (start / name).read_bytes() for name in names}

    def update(folder, kill_after=None):
        shutil.copytree(start, folder)
        save_npy(Workdir(folder).file("embeddings.npy"), vectors)
        began = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", UPDATE_CHILD, str(folder)])
        if kill_after is None:
            assert child.wait(timeout=120) == 0
        else:
            time.sleep(kill_after)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        return time.perf_counter() - began

    took = update(tmp_path / "whole")
    finished = {name: (tmp_path / "whole" / name).read_bytes() for name in names}
    whole = np.load(tmp_path / "whole" / "grid.npy")
    for share in (0.5, 0.75, 0.9):  # in reduce, between reduce and assign, in assign or after
        folder = tmp_path / f"killed-{share}"
        update(folder, kill_after=share * took)
        for name in names:
            left = (folder / name).read_bytes()
            assert left in (earlier[name], finished[name]), name  # never a torn or a third file
        (folder / ".coords.npy.k1ll3d0a.tmp").write_bytes(b"half a write")  # as a kill mid-write leaves
        (folder / ".notes.tmp").write_text("not gridtsne's")
        rerun = subprocess.run([sys.executable, "-c", UPDATE_CHILD, str(folder)], timeout=120)
        assert rerun.returncode == 0
        assert np.array_equal(np.load(folder / "grid.npy"), whole), share
        assert sorted(path.name for path in folder.glob(".*tmp")) == [".notes.tmp"]
