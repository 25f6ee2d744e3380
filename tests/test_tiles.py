"""tiles: the tile cache draws each photo as it is now, and a render from it is the same picture."""

import os

import pytest
from PIL import Image

from gridtsne import images, render, tiles
from gridtsne.options import RenderOptions

from .conftest import layout_workdir

CELLS = [0, 1, 2, 3]  # a 2x2 grid


def bmp_photos(folder, colours=("red", "lime", "blue", "yellow")):
    """Photos whose byte size depends only on their pixel size: one can be rewritten at the same size."""
    folder.mkdir()
    paths = []
    for colour in colours:
        path = folder / f"{colour}.bmp"
        Image.new("RGB", (48, 32), colour).save(path)
        paths.append(path)
    return paths


def render_png(work, out, **options):
    summary = render.run(work, RenderOptions(output=out, tile=16, **options))
    with Image.open(out) as picture:
        return summary, picture.convert("RGB")


def test_a_photo_rewritten_at_the_same_size_is_drawn_as_it_is_now(tmp_path):
    photos = bmp_photos(tmp_path / "photos")
    work = layout_workdir(tmp_path / "work", photos, CELLS, 2, 2)
    _, before = render_png(work, tmp_path / "before.png")
    assert before.getpixel((8, 8)) == (255, 0, 0)

    size, mtime_ns = photos[0].stat().st_size, photos[0].stat().st_mtime_ns
    Image.new("RGB", (48, 32), "white").save(photos[0])  # red.bmp is white now, at the same size
    os.utime(photos[0], ns=(mtime_ns + 10**9, mtime_ns + 10**9))
    assert photos[0].stat().st_size == size

    summary, after = render_png(work, tmp_path / "after.png")
    assert after.getpixel((8, 8)) == (255, 255, 255)
    assert (summary["decoded"], summary["from_cache"]) == (1, 3)


def test_an_unchanged_photo_is_not_read_again_to_draw_it_from_the_cache(tmp_path, monkeypatch):
    photos = bmp_photos(tmp_path / "photos")
    work = layout_workdir(tmp_path / "work", photos, CELLS, 2, 2)
    render_png(work, tmp_path / "first.png")

    def must_not_read(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(images, "content_hash", must_not_read)
    summary, _ = render_png(work, tmp_path / "second.png")
    assert (summary["decoded"], summary["from_cache"]) == (0, 4)


@pytest.mark.parametrize("name", ["mosaic.jpg", "mosaic.png"])
def test_a_render_from_the_tile_cache_is_the_same_picture_byte_for_byte(tmp_path, colour_photos, name):
    noisy = []  # photos with detail, where a lossy cache would show
    for index, photo in enumerate(colour_photos):
        Image.effect_noise((90, 70), 40 + 10 * index).convert("RGB").save(photo, quality=95)
        noisy.append(photo)
    work = layout_workdir(tmp_path / "work", noisy, [4, 0, 8, 2, 6, 3], 3, 3)
    first = render.run(work, RenderOptions(output=tmp_path / "one" / name, tile=40))
    second = render.run(work, RenderOptions(output=tmp_path / "two" / name, tile=40))
    assert (first["decoded"], second["from_cache"]) == (6, 6)
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_a_lossy_tile_left_by_an_older_version_is_made_again(tmp_path):
    photos = bmp_photos(tmp_path / "photos")
    work = layout_workdir(tmp_path / "work", photos, CELLS, 2, 2)
    render_png(work, tmp_path / "first.png")
    for cached in (work.path / tiles.CACHE_DIRNAME).rglob("*.tile"):
        with Image.open(cached) as tile:
            tile.convert("RGB").save(cached, format="JPEG")
    summary, _ = render_png(work, tmp_path / "second.png")
    assert (summary["decoded"], summary["from_cache"]) == (4, 0)


def test_a_fifo_in_a_photos_place_at_render_time_is_reported_and_never_opened(tmp_path):
    photos = bmp_photos(tmp_path / "photos")
    work = layout_workdir(tmp_path / "work", photos, CELLS, 2, 2)
    render_png(work, tmp_path / "first.png")
    photos[1].unlink()
    os.mkfifo(photos[1])  # nobody writes to it: opening it for reading would wait forever
    summary, _ = render_png(work, tmp_path / "second.png")
    assert summary["unreadable"] == [
        {"path": str(photos[1]), "reason": "not a regular file: a named pipe (FIFO)"}
    ]
