"""The web page folder: the tile pyramid, the data the page reads, replacing it safely."""

import json
import re
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from gridtsne import render, web
from gridtsne.errors import StageError
from gridtsne.options import RenderOptions

from .conftest import layout_workdir
from .test_render import CELLS


def page_data(folder):
    text = (folder / "data.js").read_text()
    return json.loads(re.fullmatch(r"window\.GRIDTSNE = (.*);\n", text, re.S)[1])


def test_pyramid_levels_halve_down_to_one_tile():
    assert web.pyramid_levels(1000, 300) == [(250, 75), (500, 150), (1000, 300)]
    assert web.pyramid_levels(200, 100) == [(200, 100)]


def test_each_level_of_the_pyramid_is_the_whole_picture_at_its_size(tmp_path):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (700, 1100, 3), dtype=np.uint8))
    pyramid = web.Pyramid(tmp_path / "tiles", 1100, 700, quality=95)
    for top in range(0, 700, 256):
        pyramid.add(picture.crop((0, top, 1100, min(top + 256, 700))))
    pyramid.finish()
    for zoom, (width, height) in enumerate(pyramid.levels):
        names = sorted(p.name for p in (tmp_path / "tiles" / str(zoom)).iterdir())
        columns, rows = -(-width // 256), -(-height // 256)
        assert names == sorted(f"{x}_{y}.jpg" for x in range(columns) for y in range(rows))
        with Image.open(tmp_path / "tiles" / str(zoom) / f"{columns - 1}_{rows - 1}.jpg") as corner:
            assert corner.size == (width - 256 * (columns - 1), height - 256 * (rows - 1))
    with Image.open(tmp_path / "tiles" / "0" / "0_0.jpg") as smallest:
        expected = picture.reduce(8)  # 1100 -> 550 -> 275 -> 138 wide
        assert smallest.size == expected.size
        difference = np.abs(np.asarray(smallest, float) - np.asarray(expected, float)).mean()
        assert difference < 12  # the same picture, give or take JPEG


def test_the_page_folder_holds_the_page_its_data_and_tiles_and_links_each_cell_to_its_photo(
    cli, tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    result = cli("render", tmp_path / "site" / "gallery.html", "-w", work.path, "--tile", 100)
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "site" / "gallery"
    assert result.stdout.strip() == str(folder / "index.html")
    assert {p.name for p in folder.iterdir()} == {"index.html", "data.js", "tiles", web.MARKER}
    assert '<script src="data.js">' in (folder / "index.html").read_text()
    data = page_data(folder)
    assert (data["rows"], data["cols"], data["width"], data["height"]) == (3, 3, 300, 300)
    assert data["levels"] == [[150, 150], [300, 300]]
    for photo, cell in zip(colour_photos, CELLS, strict=True):
        assert (folder / urllib.parse.unquote(data["photos"][cell])).resolve() == photo.resolve()
    assert [data["photos"][cell] for cell in (1, 5, 7)] == [None] * 3
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["gallery"]  # no temporary folders left


def test_a_new_render_replaces_the_page_but_never_a_folder_it_did_not_write(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    assert cli("render", tmp_path / "gallery.html", "-w", work.path, "--tile", 40).exit_code == 0
    assert cli("render", tmp_path / "gallery.html", "-w", work.path, "--tile", 200).exit_code == 0
    assert page_data(tmp_path / "gallery")["tile_px"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "gallery", "work"]

    with pytest.raises(StageError, match="not a page gridtsne wrote"):
        render.run(work, RenderOptions(output=tmp_path / "colours.html"))  # the photos' own folder
    assert sorted(p.name for p in (tmp_path / "colours").iterdir()) == sorted(p.name for p in colour_photos)


def test_a_page_written_into_the_photo_folder_is_not_taken_for_photos(cli, photos, tmp_path):
    out = photos / "gallery.html"
    assert cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work").exit_code == 0
    second = cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work")
    assert second.exit_code == 0
    assert "embed: fresh, skipped" in second.stderr and "render: fresh, skipped" in second.stderr
