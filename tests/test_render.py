"""render: tiles keep their aspect, every tile lies inside the canvas."""

import numpy as np
import pytest
from PIL import Image

from gridtsne import render
from gridtsne.workdir import StageError


def two_tone(width, height):
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), "red")
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def test_every_tile_lands_inside_the_canvas_in_its_own_cell():
    rows, cols, tile = 3, 4, 10
    tiles = [(cell, Image.new("RGB", (tile, tile), (cell * 20, 0, 0))) for cell in range(rows * cols)]
    canvas = render.compose(tiles, rows, cols, tile)
    assert canvas.size == (cols * tile, rows * tile)
    pixels = np.asarray(canvas)
    for cell in range(rows * cols):
        row, col = divmod(cell, cols)
        block = pixels[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile, 0]
        assert (block == cell * 20).all()  # the last row and column included


def test_empty_cells_show_the_background():
    canvas = render.compose([(0, Image.new("RGB", (8, 8), "red"))], 2, 2, 8, background=(0, 255, 0))
    assert canvas.getpixel((12, 12)) == (0, 255, 0)


def test_crop_fills_the_tile_without_stretching():
    tile = render.make_tile(two_tone(400, 100), 50, "crop", (0, 0, 0))
    assert tile.size == (50, 50)
    # The centre crop of a 4:1 image shows its middle: half red, half blue, undistorted.
    assert tile.getpixel((10, 25))[0] > 200 and tile.getpixel((40, 25))[2] > 200


def test_fit_shows_the_whole_photo_with_margins():
    tile = render.make_tile(two_tone(400, 100), 40, "fit", (0, 255, 0))
    assert tile.size == (40, 40)
    assert tile.getpixel((20, 2)) == (0, 255, 0)  # margin above a wide photo
    assert tile.getpixel((2, 20))[0] > 200 and tile.getpixel((38, 20))[2] > 200


def test_format_follows_the_extension():
    assert render.output_format("a.JPG")[0] == "JPEG"
    assert render.output_format("a.webp")[0] == "WEBP"
    with pytest.raises(StageError, match="format"):
        render.output_format("a.tiff")


def test_colours():
    assert render.parse_colour("#102030") == (16, 32, 48)
    assert render.parse_colour("white") == (255, 255, 255)
    with pytest.raises(ValueError):
        render.parse_colour("not-a-colour")
