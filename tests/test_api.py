"""The Python API, as a notebook or a program calls it."""

import numpy as np
import pytest
from PIL import Image

import gridtsne
from gridtsne import embed, render


def test_mosaic_from_python_then_each_stage_alone(photos, tmp_path):
    summaries = gridtsne.mosaic([photos], tmp_path / "m.png", tile=20, seed=1)
    assert [s["stage"] for s in summaries] == ["embed", "reduce", "assign", "render"]
    with Image.open(tmp_path / "m.png") as picture:
        assert picture.size == (4 * 20, 3 * 20)  # 12 photos: 3 x 4
    work = gridtsne.Workdir(tmp_path / "m.gridtsne")
    assert embed.run(work, gridtsne.EmbedOptions(paths=[photos]), skip_if_fresh=True)["ran"] is False
    summary = render.run(work, gridtsne.RenderOptions(output=tmp_path / "page.html", tile=20))
    assert summary["output"].endswith("index.html")


def test_layout_of_an_array_gives_the_grid_that_the_pipeline_gives(photos, tmp_path):
    gridtsne.mosaic([photos], tmp_path / "m.png", tile=8, seed=4)
    work = gridtsne.Workdir(tmp_path / "m.gridtsne")
    cells, rows, cols = gridtsne.layout(work.load_embeddings(), seed=4)
    assert (rows, cols) == (3, 4)
    assert np.array_equal(cells, np.load(work.file("grid.npy")))


def test_errors_name_the_option_in_python_terms(photos, tmp_path):
    with pytest.raises(gridtsne.OptionError) as error:
        gridtsne.mosaic([photos], tmp_path / "m.png", seed=-1)
    assert error.value.option == "seed"
    with pytest.raises(gridtsne.OptionError, match="no option"):
        gridtsne.mosaic([photos], tmp_path / "m.png", tile_px=20)
    with pytest.raises(ValueError, match="N x D"):
        gridtsne.layout(np.full((5, 3), np.nan))
