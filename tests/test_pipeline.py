"""The stage contract and the pipeline: freshness for any stage, `all`, `status`, moved work directories."""

import json
import os
import shutil
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gridtsne import pipeline
from gridtsne.options import StageOptions, option
from gridtsne.stage import Stage
from gridtsne.workdir import EMBEDDINGS, Workdir, save_npy


@dataclass(frozen=True)
class ScaleOptions(StageOptions):
    stage: ClassVar[str] = "scale"
    factor: int = option(2, int)
    verbose: bool = option(False, bool, fresh=False)


class ScaleStage(Stage):
    """A stage invented by a test: it declares what it reads and writes, nothing more."""

    name = "scale"
    options_type = ScaleOptions
    reads = (EMBEDDINGS,)
    writes = ("scaled.npy",)

    def compute(self, workdir, options, context, prepared):
        save_npy(workdir.file("scaled.npy"), workdir.load_embeddings() * options.factor)
        return {"rows": 3}


def test_a_new_stage_gets_freshness_by_declaring_what_it_reads_and_writes(tmp_path):
    work = Workdir(tmp_path / "work")
    save_npy(work.file(EMBEDDINGS), np.ones((3, 4), dtype=np.float32))
    stage = ScaleStage()
    assert stage.run(work, ScaleOptions())["ran"]
    assert stage.run(work, ScaleOptions(), skip_if_fresh=True)["ran"] is False
    assert stage.run(work, {"verbose": True}, skip_if_fresh=True)["ran"] is False  # how, not what
    assert stage.run(work, ScaleOptions(factor=3), skip_if_fresh=True)["ran"]
    assert stage.staleness(work) is None
    save_npy(work.file(EMBEDDINGS), np.zeros((3, 4), dtype=np.float32))
    assert stage.staleness(work) == "inputs changed: embeddings.npy"
    stage.run(work, ScaleOptions(factor=3))
    save_npy(work.file("scaled.npy"), np.zeros(1))
    assert stage.staleness(work).startswith("output modified")
    manifest = json.loads(work.manifest_path("scale").read_text())
    assert manifest["options"] == {"factor": 3, "verbose": False}
    assert manifest["output_paths"] == {"scaled.npy": "scaled.npy"}  # relative to the work directory


def run_all(cli, photos, out, *args):
    result = cli("all", photos, out, "--tile", 16, "--json", *args)
    assert result.exit_code == 0, result.output
    return [summary["ran"] for summary in json.loads(result.stdout)]


def test_a_moved_or_copied_work_directory_is_judged_by_its_own_files(cli, fake_model, photos, tmp_path):
    out = tmp_path / "m.png"
    run_all(cli, photos, out, "-w", tmp_path / "work")
    shutil.move(tmp_path / "work", tmp_path / "moved")
    assert run_all(cli, photos, out, "-w", tmp_path / "moved") == [False] * 4
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    np.save(tmp_path / "copy" / "coords.npy", np.zeros((12, 2), dtype=np.float32))  # damaged in the copy
    status = json.loads(cli("status", "-w", tmp_path / "copy", "--json").stdout)["stages"]
    assert [entry["fresh"] for entry in status] == [True, False, False, False]
    assert status[1]["reason"].startswith("output modified")
    assert run_all(cli, photos, out, "-w", tmp_path / "moved") == [False] * 4  # the original is untouched


def test_a_relative_work_directory_named_from_elsewhere_is_fresh(
    cli, fake_model, photos, tmp_path, monkeypatch
):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run_all(cli, photos, tmp_path / "m.png", "-w", "work")
    monkeypatch.chdir(tmp_path)
    assert run_all(cli, photos, tmp_path / "m.png", "-w", os.path.join("a", "work")) == [False] * 4


def test_a_damaged_manifest_is_reported_by_status_and_rerun_by_all(cli, fake_model, photos, tmp_path):
    work, out = tmp_path / "work", tmp_path / "m.png"
    run_all(cli, photos, out, "-w", work)
    for damage in (b"[]", b'{"stage": "reduce"}', b"\xff\xfe not utf-8", b""):
        (work / "reduce.json").write_bytes(damage)
        result = cli("status", "-w", work)
        assert result.exit_code == 0 and "reduce  stale (its manifest is damaged" in result.stdout
        assert "Traceback" not in result.output
        # reduce runs again and makes the same map, so the stages after it stay fresh.
        assert run_all(cli, photos, out, "-w", work) == [False, True, False, False]


def test_status_reads_every_stage_from_the_one_list_of_stages(cli, fake_model, photos, tmp_path):
    run_all(cli, photos, tmp_path / "m.png", "-w", tmp_path / "work")
    report = pipeline.stage_status(Workdir(tmp_path / "work"))
    assert [entry["stage"] for entry in report] == [stage.name for stage in pipeline.STAGES]
    assert all(entry["fresh"] for entry in report)


def test_each_stage_reports_how_far_its_own_work_has_got(fake_model, tmp_path):
    """Progress follows the work inside a stage (photos embedded, t-SNE iterations, tiles made),
    not only the stages' ends: what the service's percent_completed is made of."""
    from gridtsne.options import PipelineOptions
    from gridtsne.stage import Context
    from tests.conftest import sample_photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sample_photos(130):
        shutil.copy(photo, folder / photo.name)
    seen: dict[str, list[float]] = {}
    context = Context(on_progress=lambda stage, done: seen.setdefault(stage, []).append(done))
    options = PipelineOptions.from_flat(
        {"paths": [str(folder)], "output": str(tmp_path / "out.jpg"), "tile": 16, "batch_size": 16}
    )
    pipeline.run_all(Workdir(tmp_path / "work"), options, context)
    assert set(seen) == {"embed", "reduce", "assign", "render"}
    for stage, fractions in seen.items():
        assert fractions == sorted(fractions) and all(0 < f <= 1 for f in fractions), stage
    assert len(seen["embed"]) >= 8 and seen["embed"][-1] == 1.0  # one report per batch of 16
    assert len(seen["reduce"]) >= 10 and seen["reduce"][-1] == 1.0  # every 50 of t-SNE's 750 iterations
    assert len(seen["render"]) >= 2 and seen["render"][0] < 1  # every 64 tiles


def test_the_services_progress_weights_a_stages_own_progress_and_never_goes_back(tmp_path):
    from gridtsne.serve.jobs import SqliteQueue
    from gridtsne.serve.worker import Progress

    queue = SqliteQueue(tmp_path / "jobs.sqlite")
    job, _ = queue.submit({"paths": []}, None, limit=10)
    queue.claim()
    progress = Progress(queue, job.id)
    progress.within("embed", 0.5, force=True)
    assert (queue.get(job.id).stage, queue.get(job.id).percent) == ("embed", 25.0)
    progress.within("reduce", 0.5, force=True)
    assert (queue.get(job.id).stage, queue.get(job.id).percent) == ("reduce", 62.5)
    progress.within("embed", 1.0, force=True)  # late, out of order: ignored
    progress.within("reduce", 0.9)  # within a second of the last write: not written yet
    assert queue.get(job.id).percent == 62.5
