"""The command line as a user sees it: stages, `all`, freshness, errors, output streams."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ARTIFACTS = [
    "images.json",
    "embeddings.npy",
    "embed.json",
    "cache",
    "coords.npy",
    "reduce-state.npz",
    "reduce.json",
    "grid.npy",
    "assign-state.npz",
    "assign.json",
    "render.json",
]


def mtimes(folder, names):
    return {name: os.stat(folder / name).st_mtime_ns for name in names}


def test_stages_one_by_one_write_the_documented_artifacts(cli, photos, tmp_path):
    work = tmp_path / "work"
    result = cli("embed", photos, "-w", work)
    assert result.exit_code == 0, result.stderr
    images = json.loads((work / "images.json").read_text())
    assert len(images["images"]) == 12 and images["skipped"] == []
    assert {"path", "bytes", "sha256", "width", "height"} <= set(images["images"][0])
    embeddings = np.load(work / "embeddings.npy")
    assert embeddings.shape == (12, 1280) and embeddings.dtype == np.float32

    assert cli("reduce", "-w", work).exit_code == 0
    coords = np.load(work / "coords.npy")
    assert coords.shape == (12, 2) and coords.min() >= 0 and coords.max() <= 1

    assert cli("assign", "-w", work).exit_code == 0
    grid = np.load(work / "grid.npy")
    assign = json.loads((work / "assign.json").read_text())
    assert (assign["results"]["rows"], assign["results"]["cols"]) == (3, 4)
    assert grid.dtype == np.int32 and sorted(grid) == list(range(12))

    result = cli("render", tmp_path / "out.png", "-w", work, "--tile", 32)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as mosaic:
        assert mosaic.format == "PNG" and mosaic.size == (4 * 32, 3 * 32)
    written = sorted(p.name for p in work.iterdir() if not p.name.startswith("."))
    # thumbs/: render's tile cache; written.json: what gridtsne wrote outside (out.png)
    assert written == sorted(ARTIFACTS + ["thumbs", "written.json"])


def test_all_makes_a_mosaic_and_a_rerun_skips_every_stage_and_rewrites_nothing(cli, photos, tmp_path):
    out = tmp_path / "mosaic.jpg"
    first = cli("all", photos, out, "--tile", 32)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == str(out)
    work = tmp_path / "mosaic.gridtsne"  # the documented default, beside the output
    before = mtimes(work, ARTIFACTS) | {"out": os.stat(out).st_mtime_ns}

    second = cli("all", photos, out, "--tile", 32)
    assert second.exit_code == 0
    for stage in ("embed", "reduce", "assign", "render"):
        assert f"{stage}: fresh, skipped" in second.stderr
    assert mtimes(work, ARTIFACTS) | {"out": os.stat(out).st_mtime_ns} == before


def test_a_mosaic_written_into_the_photo_folder_is_not_taken_for_a_photo(cli, photos, tmp_path):
    out = photos / "mosaic.jpg"
    refused = cli("all", photos, out, "--tile", 16)  # its work directory would go among the photos
    assert refused.exit_code == 1 and "name one elsewhere with -w" in refused.stderr
    assert not (photos / "mosaic.gridtsne").exists() and not out.exists()
    assert cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work").exit_code == 0
    second = cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work")
    assert "embed: fresh, skipped" in second.stderr
    listed = json.loads((tmp_path / "work" / "images.json").read_text())
    assert len(listed["images"]) == 12 and listed["skipped"] == []


def test_changing_an_option_reruns_exactly_the_stages_downstream_of_it(cli, photos, tmp_path):
    out = tmp_path / "mosaic.jpg"
    assert cli("all", photos, out, "--tile", 32, "--json").exit_code == 0

    def ran(*extra):
        result = cli("all", photos, out, "--tile", 32, "--json", *extra)
        assert result.exit_code == 0, result.stderr
        return [s["stage"] for s in json.loads(result.stdout) if s["ran"]]

    assert ran("--background", "white") == ["render"]
    assert ran("--background", "white", "--seed", "1") == ["reduce", "assign", "render"]
    assert ran("--background", "white", "--seed", "1", "--grid", "2x6") == ["assign", "render"]
    assert ran("--background", "white", "--seed", "1", "--grid", "2x6") == []


def test_a_new_photo_reruns_embed_and_reuses_the_embeddings_it_already_has(cli, photos, tmp_path):
    out = tmp_path / "mosaic.jpg"
    assert cli("all", photos, out, "--tile", 16).exit_code == 0
    Image.new("RGB", (64, 48), "red").save(photos / "red.png")
    result = cli("all", photos, out, "--tile", 16, "--json")
    summaries = {s["stage"]: s for s in json.loads(result.stdout)}
    assert summaries["embed"]["ran"] and summaries["embed"]["embedded"] == 13
    assert summaries["embed"]["reused"] == 12
    assert all(summaries[s]["ran"] for s in ("reduce", "assign", "render"))


def test_a_corrupt_file_is_skipped_and_reported_and_the_run_goes_on(cli, photos, tmp_path):
    (photos / "notes.jpg").write_text("this is not a picture")
    good = next(photos.glob("*.jpg")).read_bytes()
    (photos / "cut.jpg").write_bytes(good[: len(good) // 3])
    (photos / "empty.png").write_bytes(b"")
    result = cli("all", photos, tmp_path / "m.jpg", "--tile", 16)
    assert result.exit_code == 0, result.stderr
    for name in ("notes.jpg", "cut.jpg", "empty.png"):
        assert name in result.stderr
    skipped = json.loads((tmp_path / "m.gridtsne" / "images.json").read_text())["skipped"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
    assert reasons["notes.jpg"].startswith("not an image:")
    assert reasons["empty.png"].startswith("empty:")
    assert reasons["cut.jpg"].startswith("truncated:")
    assert "12 images embedded, 3 skipped: 1 empty, 1 not an image, 1 truncated" in result.stderr


def test_nothing_embeddable_is_an_error(cli, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_text("no")
    result = cli("embed", folder, "-w", tmp_path / "w")
    assert result.exit_code == 1
    assert "no image could be embedded" in result.stderr
    assert not (tmp_path / "w" / "embed.json").exists()


def test_a_stage_without_its_inputs_names_the_stage_to_run(cli, tmp_path):
    result = cli("reduce", "-w", tmp_path / "empty")
    assert result.exit_code == 1
    assert "embeddings.npy is missing: run `gridtsne embed" in result.stderr
    result = cli("render", tmp_path / "x.jpg", "-w", tmp_path / "empty")
    assert result.exit_code == 1 and "gridtsne embed" in result.stderr


def test_a_grid_made_for_other_images_is_refused(cli, photos, tmp_path):
    work = tmp_path / "w"
    assert cli("all", photos, tmp_path / "m.jpg", "-w", work, "--tile", 16).exit_code == 0
    np.save(work / "grid.npy", np.arange(5, dtype=np.int32))
    result = cli("render", tmp_path / "m.jpg", "-w", work)
    assert result.exit_code == 1
    assert "for 12 images" in result.stderr and "rerun `gridtsne assign" in result.stderr


def test_status_reports_fresh_and_stale_stages(cli, photos, tmp_path):
    work = tmp_path / "w"
    status = json.loads(cli("status", "-w", work, "--json").stdout)
    assert [s["done"] for s in status["stages"]] == [False] * 4
    assert cli("all", photos, tmp_path / "m.jpg", "-w", work, "--tile", 16).exit_code == 0
    status = json.loads(cli("status", "-w", work, "--json").stdout)
    assert all(s["fresh"] for s in status["stages"])
    Image.new("RGB", (64, 64), "blue").save(photos / "extra.png")
    status = {s["stage"]: s for s in json.loads(cli("status", "-w", work, "--json").stdout)["stages"]}
    assert not status["embed"]["fresh"] and "inputs changed" in status["embed"]["reason"]
    assert not status["render"]["fresh"]
    assert "embed   stale" in cli("status", "-w", work).stdout


def test_workdir_from_the_environment(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDTSNE_WORKDIR", str(tmp_path / "env-work"))
    from click.testing import CliRunner

    from gridtsne.cli import main

    result = CliRunner().invoke(main, ["embed", str(photos)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env-work" / "embeddings.npy").is_file()


def test_usage_errors_exit_2_with_a_message(cli, photos, tmp_path):
    result = cli("all", photos, tmp_path / "mosaic.gif")
    assert result.exit_code == 2 and ".jpg" in result.stderr
    assert cli("assign", "--grid", "ten").exit_code == 2
    assert cli("render", tmp_path / "a.jpg", "--background", "nocolour").exit_code == 2


def test_version_help_and_python_dash_m(cli):
    from gridtsne import __version__

    assert __version__ in cli("--version").stdout
    for command in ("embed", "reduce", "assign", "render", "export", "all", "status"):
        assert "Example:" in cli(command, "--help").stdout
    result = subprocess.run([sys.executable, "-m", "gridtsne", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "embed" in result.stdout


def embed_and_reduce(cli, photos, work):
    assert cli("embed", photos, "-w", work).exit_code == 0
    assert cli("reduce", "-w", work).exit_code == 0


def test_assign_with_an_aspect_records_the_layout_quality_and_status_shows_it(cli, photos, tmp_path):
    work = tmp_path / "w"
    embed_and_reduce(cli, photos, work)
    result = cli("assign", "-w", work, "--aspect", "16:9", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["cols"]) == (3, 5) and summary["empty_cells"] == 3
    assert summary["solver"] == "exact" and summary["refined"]
    assert summary["refinement"]["smooth_share"] > 0 and summary["refinement"]["ring_weights"]["1"] == 1.0
    assert 0 < summary["quality"]["dpq"] <= summary["quality"]["dpq_authors"] <= 1
    assert summary["quality"]["dpq_p"] == 16
    assert "DPQ_16" in result.stderr and "as its authors count ties" in result.stderr
    grid = np.load(work / "grid.npy")
    assert len(set(grid.tolist())) == 12 and grid.max() < 15
    status = cli("status", "-w", work)
    assert "DPQ_16" in status.stdout and "neighbourhood preservation" in status.stdout


def test_a_grid_too_small_is_an_error_unless_a_subset_is_asked_for(cli, photos, tmp_path):
    work = tmp_path / "w"
    assert cli("all", photos, tmp_path / "m.png", "-w", work, "--tile", 16).exit_code == 0
    result = cli("assign", "-w", work, "--grid", "2x3")
    assert result.exit_code == 1 and "do not fit a 2x3 grid" in result.stderr and "--subset" in result.stderr
    result = cli(
        "all", photos, tmp_path / "m.png", "-w", work, "--tile", 16, "--grid", "2x3", "--subset", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assign = json.loads((work / "assign.json").read_text())["results"]
    assert assign["placed"] == 6 and len(assign["left_out"]) == 6 and len(assign["left_out_paths"]) == 6
    grid = np.load(work / "grid.npy")
    assert sorted(grid[grid >= 0].tolist()) == list(range(6)) and (grid == -1).sum() == 6
    with Image.open(tmp_path / "m.png") as mosaic:
        assert mosaic.size == (3 * 16, 2 * 16)
    assert json.loads((work / "render.json").read_text())["results"]["tiles"] == 6


def test_changing_the_solver_or_refinement_reruns_assign(cli, photos, tmp_path):
    out = tmp_path / "m.jpg"
    assert cli("all", photos, out, "--tile", 16).exit_code == 0

    def ran(*extra):
        result = cli("all", photos, out, "--tile", 16, "--json", *extra)
        assert result.exit_code == 0, result.stderr
        return [s["stage"] for s in json.loads(result.stdout) if s["ran"]]

    # render reruns only if the grid came out different (freshness follows content)
    assert ran("--solver", "blocks")[:1] == ["assign"]
    assert ran("--solver", "blocks", "--no-refine")[:1] == ["assign"]
    assert ran("--solver", "blocks", "--no-refine") == []


def test_reduce_lays_out_vectors_brought_from_elsewhere(cli, photos, tmp_path):
    work = tmp_path / "w"
    assert cli("embed", photos, "-w", work).exit_code == 0  # replaced below
    images = sorted(photos.glob("*.jpg"))
    vectors = np.random.default_rng(0).normal(size=(len(images), 24)).astype(np.float32)
    np.save(tmp_path / "clip.npy", vectors)
    (tmp_path / "paths.txt").write_text("\n".join(str(p) for p in images) + "\n")
    clip = tmp_path / "clip.npy"
    result = cli("reduce", "-w", work, "--embeddings", clip, "--paths", tmp_path / "paths.txt")
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(np.load(work / "embeddings.npy"), vectors)
    assert not (work / "embed.json").exists()
    listed = json.loads((work / "images.json").read_text())["images"]
    assert [entry["path"] for entry in listed] == [str(p) for p in images]
    assert cli("assign", "-w", work).exit_code == 0
    assert cli("render", tmp_path / "m.png", "-w", work, "--tile", 16).exit_code == 0
    manifest = json.loads((work / "reduce.json").read_text())
    assert manifest["results"]["dimension"] == 24 and manifest["results"]["tsne"]["neighbors"] == "exact"

    # Without paths the layout works, and render says what it lacks.
    result = cli("reduce", "-w", work, "--embeddings", tmp_path / "clip.npy")
    assert result.exit_code == 0 and not (work / "images.json").exists()
    assert cli("assign", "-w", work).exit_code == 0
    result = cli("render", tmp_path / "m.png", "-w", work)
    assert result.exit_code == 1 and "images.json" in result.stderr

    (tmp_path / "short.txt").write_text(str(images[0]))
    result = cli("reduce", "-w", work, "--embeddings", clip, "--paths", tmp_path / "short.txt")
    assert result.exit_code == 1 and "one path per row" in result.stderr
    assert cli("reduce", "-w", work, "--paths", tmp_path / "paths.txt").exit_code == 2


def test_a_grid_above_the_exact_limit_switches_to_the_scalable_solver_and_says_so(cli, photos, tmp_path):
    work = tmp_path / "w"
    embed_and_reduce(cli, photos, work)
    result = cli("assign", "-w", work, "--grid", "50x50", "--json")
    assert result.exit_code == 0, result.stderr
    assert "'blocks' solver" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["solver"] == "blocks" and summary["solver_requested"] == "auto"
    assert len(set(np.load(work / "grid.npy").tolist())) == 12
    forced = json.loads(cli("assign", "-w", work, "--grid", "50x50", "--solver", "exact", "--json").stdout)
    assert forced["solver"] == "exact"


def test_a_subset_grid_renders_and_exports_only_the_photos_it_kept(cli, photos, tmp_path):
    out = tmp_path / "m.png"
    result = cli("all", photos, out, "--grid", "2x5", "--subset", "--tile", 16, "--json")
    assert result.exit_code == 0, result.stderr
    render_summary = json.loads(result.stdout)[-1]
    assert render_summary["tiles"] == 10
    with Image.open(out) as mosaic:
        assert mosaic.size == (5 * 16, 2 * 16)
    table = cli("export", "-w", tmp_path / "m.gridtsne", "--format", "jsonl").stdout.splitlines()
    assert len(table) == 10 and len({json.loads(line)["cell"] for line in table}) == 10
