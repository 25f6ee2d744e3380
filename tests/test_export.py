"""export: one row per photo with its grid cell and map position, for spreadsheets, jq and notebooks."""

import csv
import io
import json

import numpy as np

from .conftest import layout_workdir
from .test_render import CELLS


def test_csv_has_a_header_and_one_row_per_photo_matching_the_work_directory(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    result = cli("export", "-w", work.path)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["index", "path", "row", "col", "cell", "x", "y"]
    coords = np.load(work.file("coords.npy"))
    assert len(rows) == 6
    for index, (row, photo, cell) in enumerate(zip(rows, colour_photos, CELLS, strict=True)):
        assert row["path"] == str(photo) and int(row["index"]) == index
        assert (int(row["row"]), int(row["col"]), int(row["cell"])) == (cell // 3, cell % 3, cell)
        assert np.allclose([float(row["x"]), float(row["y"])], coords[index], atol=1e-6)


def test_json_and_jsonl_carry_the_same_rows(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    as_json = json.loads(cli("export", "-w", work.path, "--format", "json").stdout)
    lines = cli("export", "-w", work.path, "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == as_json
    assert as_json[2]["cell"] == CELLS[2] and as_json[2]["path"].endswith("blue.jpg")


def test_output_file_takes_its_format_from_the_extension(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    result = cli("export", "-w", work.path, "-o", tmp_path / "positions.jsonl")
    assert result.exit_code == 0 and result.stdout == ""
    assert len((tmp_path / "positions.jsonl").read_text().splitlines()) == 6


def test_a_grid_older_than_the_map_is_refused(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    np.save(work.file("coords.npy"), np.zeros((6, 2), dtype=np.float32))  # reduce ran again, assign not
    result = cli("export", "-w", work.path)
    assert result.exit_code == 1 and "gridtsne assign" in result.stderr
