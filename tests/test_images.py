"""images: finding files and decoding every kind of picture, or saying why not."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from gridtsne import images
from gridtsne.images import UnreadableImage, open_image


def test_folders_are_walked_recursively_hidden_entries_skipped_duplicates_kept_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for path in ("a/one.jpg", "a/b/two.PNG", ".hidden/three.jpg", "a/.four.jpg", "a/notes.txt"):
        (tmp_path / path).write_bytes(b"x")
    found = images.find_images([tmp_path, tmp_path / "a" / "one.jpg", tmp_path / "nope"])
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == ["a/b/two.PNG", "a/one.jpg"]
    assert found.missing == [(tmp_path / "nope", "no such file or folder")]


def test_a_file_named_explicitly_is_tried_whatever_its_extension(tmp_path):
    (tmp_path / "photo.data").write_bytes(b"x")
    assert images.find_images([tmp_path / "photo.data"]).files == [tmp_path / "photo.data"]


def save(image, tmp_path, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 30), "red")
    image.paste((0, 0, 255), (0, 0, 30, 30))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = save(image, tmp_path, "turned.jpg", exif=exif.tobytes())
    upright, size = open_image(path)
    assert upright.size == (30, 60) and size == (30, 60)
    assert upright.getpixel((15, 5))[2] > 200  # the blue half is now on top


def test_transparency_is_laid_on_white(tmp_path):
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    rgb, _ = open_image(save(image, tmp_path, "clear.png"))
    assert rgb.mode == "RGB" and rgb.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = save(Image.fromarray(ramp), tmp_path, "deep.png")
    rgb, _ = open_image(path)
    values = np.asarray(rgb)[0, :, 0]
    assert values[0] == 0 and values[-1] == 255 and 100 < values[32] < 160


def test_cmyk_and_palette_images_become_rgb(tmp_path):
    cmyk, _ = open_image(save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path, "c.jpg"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200
    palette, _ = open_image(save(Image.new("RGB", (32, 32), "green").convert("P"), tmp_path, "p.gif"))
    assert palette.mode == "RGB"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"plain text, not a picture", "not an image Pillow can read"),
])
def test_non_images_are_refused_with_a_reason(tmp_path, content, reason):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        open_image(tmp_path / "x.jpg")


def test_truncated_and_tiny_and_huge_images_are_refused(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(UnreadableImage, match="cannot decode"):
        open_image(tmp_path / "cut.jpg")
    with pytest.raises(UnreadableImage, match="too small"):
        open_image(save(Image.new("RGB", (8, 8)), tmp_path, "tiny.png"))
    with pytest.raises(UnreadableImage, match="too many pixels"):
        open_image(save(Image.new("RGB", (100, 100)), tmp_path, "big.png"), max_pixels=5000)


def test_reading_never_changes_the_file(tmp_path):
    path = save(Image.new("RGB", (40, 40), "red"), tmp_path, "a.jpg")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    open_image(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
