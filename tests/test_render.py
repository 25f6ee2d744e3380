"""render: how photos fill their tiles, where tiles land, formats, the tile cache, odd photos."""

import io

import numpy as np
import pytest
from PIL import Image

from gridtsne import render, tiles
from gridtsne.errors import OptionError
from gridtsne.options import RenderOptions, parse_colour

from .conftest import layout_workdir

#: Colours of the conftest ``colour_photos``, in order, and the cells this layout puts them in.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
CELLS = [4, 0, 8, 2, 6, 3]  # 3x3 grid: cells 1, 5 and 7 stay empty


def two_tone(width, height):
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), "red")
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def near(pixel, colour, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def test_crop_fills_the_tile_without_stretching():
    tile = tiles.make_tile(two_tone(400, 100), 50, "crop")
    assert tile.size == (50, 50)
    # The centre crop of a 4:1 image shows its middle: half red, half blue, undistorted.
    assert tile.getpixel((10, 25))[0] > 200 and tile.getpixel((40, 25))[2] > 200


def test_pad_keeps_the_whole_photo_and_the_mosaic_centres_it_on_the_background(tmp_path, colour_photos):
    tile = tiles.make_tile(two_tone(400, 100), 40, "pad")
    assert tile.size == (40, 10)  # the whole photo, its long side the tile's
    assert tile.getpixel((2, 5))[0] > 200 and tile.getpixel((38, 5))[2] > 200
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    _, picture = render_to(work, tmp_path / "m.png", tile=30, fit="pad", background="#00ff00")
    left, top = 30, 30  # cell 4: the red photo, 120 x 80, so a 30 x 20 tile with 5 px above and below
    assert picture.getpixel((left + 15, top + 2)) == (0, 255, 0)
    assert near(picture.getpixel((left + 15, top + 15)), COLOURS[0])
    assert picture.getpixel((left + 15, top + 27)) == (0, 255, 0)


def test_stretch_squeezes_the_whole_photo_into_the_tile():
    image = two_tone(400, 100)
    image.paste((0, 255, 0), (0, 0, 10, 100))  # a green strip at the far left edge
    tile = tiles.make_tile(image, 40, "stretch")
    assert tile.size == (40, 40)
    assert tile.getpixel((0, 0))[1] > 200 and tile.getpixel((39, 39))[2] > 200  # both ends kept, no margin


def render_to(work, out, **options):
    summary = render.run(work, RenderOptions(output=out, **options))
    with Image.open(out) as picture:
        return summary, picture.convert("RGB")


def test_every_photo_lands_in_its_own_cell_with_gaps_and_empty_cells_in_the_background(
    tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    summary, picture = render_to(work, tmp_path / "m.png", tile=10, gap=2, background="white")
    assert picture.size == (34, 34) == (summary["width"], summary["height"])  # gaps between tiles only
    for colour, cell in zip(COLOURS, CELLS, strict=True):
        row, col = divmod(cell, 3)
        assert near(picture.getpixel((col * 12 + 5, row * 12 + 5)), colour)
        assert near(picture.getpixel((col * 12, row * 12)), colour)  # the tile's corner too
    for empty in (1, 5, 7):
        row, col = divmod(empty, 3)
        assert picture.getpixel((col * 12 + 5, row * 12 + 5)) == (255, 255, 255)
    assert picture.getpixel((10, 5)) == picture.getpixel((5, 11)) == (255, 255, 255)  # the gaps


@pytest.mark.parametrize("gap_px", [0, 3])
def test_the_png_made_strip_by_strip_is_the_picture_pillow_would_write(tmp_path, colour_photos, gap_px):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    _, streamed = render_to(work, tmp_path / "m.png", tile=23, gap=gap_px, background="#123456")
    _, whole = render_to(work, tmp_path / "m.tif", tile=23, gap=gap_px, background="#123456")
    assert np.array_equal(np.asarray(streamed), np.asarray(whole))


def test_strips_of_any_height_make_up_the_whole_picture(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    mosaic = render.Mosaic(
        work.load_images()["images"],
        np.array(CELLS),
        3,
        3,
        tile_maker=tiles.Tiles(None, 16, "crop"),
        gap_px=1,
        background=(9, 9, 9),
    )
    whole = np.asarray(mosaic.picture())
    for height in (1, 7, 16, 17, 256):
        strips = list(mosaic.strips(height))
        assert all(strip.height == height for strip in strips[:-1])
        assert np.array_equal(np.concatenate([np.asarray(s) for s in strips]), whole)


def test_the_format_follows_the_extension_unless_given():
    assert render.format_of("a.JPG") == "jpeg" and render.format_of("a.jpeg") == "jpeg"
    assert render.format_of("a.webp") == "webp" and render.format_of("a.tif") == "tiff"
    assert render.format_of("gallery.html") == "html"
    assert render.format_of("picture.out", "png") == "png"
    with pytest.raises(OptionError, match="format") as error:
        render.format_of("a.gif")
    assert error.value.option == "output"
    with pytest.raises(OptionError, match="needs format") as error:
        render.format_of("-")
    assert error.value.worded(lambda name: f"--{name}").endswith("needs --format: png, jpeg, webp or tiff")
    with pytest.raises(OptionError, match="stdout"):
        render.format_of("-", "html")


def test_a_mosaic_too_large_for_one_file_points_to_png_and_the_web_page():
    with pytest.raises(OptionError) as error:
        render.resolve_writer("m.jpg").check(70_000, 1_000)
    assert "JPEG" in str(error.value) and ".png" in str(error.value) and ".html" in str(error.value)
    with pytest.raises(OptionError, match="WEBP"):
        render.resolve_writer("m.webp").check(20_000, 100)
    render.resolve_writer("m.png").check(70_000, 70_000)
    render.resolve_writer("m.html").check(10**6, 10**6)


def test_a_jpeg_that_would_not_fit_in_memory_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(render, "available_memory_bytes", lambda: 2**30)  # 1 GiB free
    with pytest.raises(OptionError) as error:
        render.resolve_writer("m.jpg").check(20_000, 20_000)  # 1.5 GiB to hold
    assert "in memory" in str(error.value) and ".png" in str(error.value)
    render.resolve_writer("m.jpg").check(10_000, 10_000)  # 0.4 GiB: fine
    render.resolve_writer("m.png").check(20_000, 20_000)  # streamed: fine


def test_a_new_layout_at_the_same_tile_size_decodes_no_photo_again(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    first, _ = render_to(work, tmp_path / "a.jpg", tile=12)
    assert (first["decoded"], first["from_cache"]) == (6, 0)
    work = layout_workdir(tmp_path / "work", colour_photos, list(reversed(CELLS)), 3, 3)  # a new layout
    second, picture = render_to(work, tmp_path / "b.png", tile=12, background="white")
    assert (second["decoded"], second["from_cache"]) == (0, 6)
    row, col = divmod(CELLS[-1], 3)  # red now sits where cyan was
    assert near(picture.getpixel((col * 12 + 6, row * 12 + 6)), COLOURS[0])
    assert render.run(work, RenderOptions(output=tmp_path / "c.png", tile=20))["decoded"] == 6  # new size
    assert render.run(work, RenderOptions(output=tmp_path / "d.png", tile=20, fit="pad"))["decoded"] == 6


def test_a_photo_that_cannot_be_read_at_render_time_leaves_its_cell_empty_and_is_reported(
    tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    render.run(work, RenderOptions(output=tmp_path / "before.png", tile=10))  # their tiles are cached now
    colour_photos[2].unlink()  # blue, moved away since embed
    colour_photos[3].write_bytes(b"not a picture any more")  # yellow, overwritten
    summary, picture = render_to(work, tmp_path / "m.png", tile=10, background="white")
    assert summary["tiles"] == 4
    assert sorted(u["path"] for u in summary["unreadable"]) == sorted(map(str, colour_photos[2:4]))
    for cell in (CELLS[2], CELLS[3]):
        row, col = divmod(cell, 3)
        assert picture.getpixel((col * 10 + 5, row * 10 + 5)) == (255, 255, 255)


def test_render_to_stdout_writes_only_the_picture_there(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    result = cli("render", "-", "--format", "png", "-w", work.path, "--tile", 8)
    assert result.exit_code == 0, result.stderr
    with Image.open(io.BytesIO(result.stdout_bytes)) as picture:
        assert picture.format == "PNG" and picture.size == (24, 24)
    assert "render: - (24x24 px, 6 tiles)" in result.stderr
    assert cli("render", "-", "-w", work.path).exit_code == 2  # which format?
    assert cli("render", "-", "--format", "png", "--json", "-w", work.path).exit_code == 2


def test_every_render_option_makes_render_stale(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    options = RenderOptions(
        output=tmp_path / "m.jpg", tile=8, fit="crop", gap=0, background="black", quality=90
    )
    render.run(work, options)
    assert render.run(work, options, skip_if_fresh=True)["ran"] is False
    assert render.run(work, options.replace(background="#000000"), skip_if_fresh=True)["ran"] is False
    other = {"tile": 9, "fit": "pad", "gap": 1, "background": "white", "quality": 80, "format": "png"}
    for name, value in other.items():
        assert render.run(work, options.replace(**{name: value}), skip_if_fresh=True)["ran"]
        render.run(work, options)


def test_colours():
    assert parse_colour("#102030") == (16, 32, 48)
    assert parse_colour("white") == (255, 255, 255)
    with pytest.raises(ValueError):
        parse_colour("not-a-colour")
