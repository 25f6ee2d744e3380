"""A folder of hostile inputs goes through `gridtsne all` untouched, every file accounted for."""

import json
import traceback

from click.testing import CliRunner

from gridtsne import images
from gridtsne.cli import main

from .hostile_inputs import make_hostile_folder, snapshot


def test_every_hostile_input_is_accounted_for_and_none_is_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDTSNE_WORKDIR", raising=False)
    monkeypatch.delenv("GRIDTSNE_CACHE", raising=False)
    folder = tmp_path / "hostile"
    expected = make_hostile_folder(folder)
    assert len(expected) >= 100
    before = snapshot(folder)

    result = CliRunner().invoke(main, ["all", str(folder), str(tmp_path / "mosaic.jpg")])
    crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    assert result.exit_code == 0, result.output + crash
    assert "Traceback" not in result.output

    listing = json.loads((tmp_path / "mosaic.gridtsne" / "images.json").read_text(encoding="utf-8"))
    outcome = {entry["path"]: "image" for entry in listing["images"]}
    for entry in listing["skipped"]:
        assert entry["path"] not in outcome, f"{entry['path']} is listed twice"
        outcome[entry["path"]] = images.reason_kind(entry["reason"])
    wrong = {}
    for name, wanted in expected.items():
        got = outcome.pop(str(images.shown_path(folder / name)), "ignored")
        if got != wanted:
            wrong[name] = f"{got}, not {wanted}"
    assert wrong == {}
    assert outcome == {}, "listed in images.json but not made by make_hostile_folder"
    assert snapshot(folder) == before
