"""images: finding files and decoding every kind of picture, or saying why not."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gridtsne import images
from gridtsne.images import UnreadableImage, open_image


def relative(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


def test_folders_are_walked_recursively_and_hidden_entries_skipped(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for path in ("a/one.jpg", "a/b/two.PNG", ".hidden/three.jpg", "a/.four.jpg", "a/notes.txt"):
        (tmp_path / path).write_bytes(b"x")
    found = images.find_images([tmp_path, tmp_path / "nope"])
    assert relative(found.files, tmp_path) == ["a/b/two.PNG", "a/one.jpg"]
    assert found.skipped == [(tmp_path / "nope", "missing: no such file or folder")]
    with_hidden = images.find_images([tmp_path], hidden=True)
    assert relative(with_hidden.files, tmp_path) == [
        ".hidden/three.jpg",
        "a/.four.jpg",
        "a/b/two.PNG",
        "a/one.jpg",
    ]


def test_extensions_decide_what_a_walk_looks_at(tmp_path):
    for name in ("a.jpg", "b.png", "c.raw"):
        (tmp_path / name).write_bytes(b"x")
    assert relative(images.find_images([tmp_path], extensions=[".png", "raw"]).files, tmp_path) == [
        "b.png",
        "c.raw",
    ]


def test_a_file_named_explicitly_is_tried_whatever_its_extension(tmp_path):
    (tmp_path / "photo.data").write_bytes(b"x")
    assert images.find_images([tmp_path / "photo.data"]).files == [tmp_path / "photo.data"]


def test_one_file_under_two_names_is_tried_once_and_the_other_name_reported(tmp_path):
    (tmp_path / "real.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    found = images.find_images([tmp_path, tmp_path / "real.jpg"])
    assert found.files == [tmp_path / "link.jpg"]
    assert found.skipped == [(tmp_path / "real.jpg", f"duplicate: same file as {tmp_path / 'link.jpg'}")]


def test_symlink_loops_end_and_broken_links_are_reported(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.jpg").write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "never-there.jpg")
    found = images.find_images([tmp_path])
    assert relative(found.files, tmp_path) == ["a/one.jpg"]
    assert found.skipped == [(tmp_path / "gone.jpg", "missing: broken symbolic link")]


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


def test_transparency_is_laid_on_the_background(tmp_path):
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    rgb, _ = open_image(save(image, tmp_path, "clear.png"))
    assert rgb.mode == "RGB" and rgb.getpixel((5, 5)) == (255, 255, 255)
    black, _ = open_image(tmp_path / "clear.png", background=(0, 0, 0))
    assert black.getpixel((5, 5)) == (0, 0, 0)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    rgb, _ = open_image(save(Image.fromarray(ramp), tmp_path, "deep.png"))
    values = np.asarray(rgb)[0, :, 0]
    assert values[0] == 0 and values[-1] == 255 and 100 < values[32] < 160


def test_float_images_in_zero_one_are_scaled(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))
    rgb, _ = open_image(save(Image.fromarray(ramp, mode="F"), tmp_path, "float.tif"))
    values = np.asarray(rgb)[0, :, 0]
    assert values[0] == 0 and values[-1] == 255


def test_cmyk_palette_and_animated_images_become_rgb(tmp_path):
    cmyk, _ = open_image(save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path, "c.jpg"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200
    palette, _ = open_image(save(Image.new("RGB", (32, 32), "green").convert("P"), tmp_path, "p.gif"))
    assert palette.mode == "RGB"
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    first, _ = open_image(save(frames[0], tmp_path, "anim.gif", save_all=True, append_images=frames[1:]))
    assert first.getpixel((4, 4))[0] > 200  # the first frame


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty: zero bytes"),
        (b"plain text, not a picture", "not an image: "),
        (b"\0\0\0\x18ftypheic\0\0\0\0", "unsupported format: HEIC/AVIF needs the pillow-heif plugin"),
    ],
)
def test_non_images_are_refused_with_a_reason(tmp_path, content, reason):
    if b"heic" in content and images.HEIF_PLUGIN:
        pytest.skip("pillow-heif is installed here")
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        open_image(tmp_path / "x.jpg")


def test_truncated_tiny_and_huge_images_are_refused(tmp_path):
    path = save(Image.effect_noise((200, 200), 50).convert("RGB"), tmp_path, "full.jpg")
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UnreadableImage, match="^truncated: "):
        open_image(tmp_path / "cut.jpg")
    with pytest.raises(UnreadableImage, match="^too small: 8 x 8"):
        open_image(save(Image.new("RGB", (8, 8)), tmp_path, "tiny.png"))
    with pytest.raises(UnreadableImage, match="^too large: 100 x 100 pixels"):
        open_image(save(Image.new("RGB", (100, 100)), tmp_path, "big.png"), max_pixels=5000)


def test_reading_never_changes_the_file(tmp_path):
    path = save(Image.new("RGB", (40, 40), "red"), tmp_path, "a.jpg")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    open_image(path)
    images.content_hash(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_every_file_of_a_walked_folder_is_embedded_skipped_or_counted(cli, tmp_path):
    import json

    from PIL import Image

    folder = tmp_path / "odd"
    (folder / ".thumbnails").mkdir(parents=True)
    picture = Image.new("RGB", (64, 48), "red")
    picture.paste(Image.new("RGB", (32, 24), "blue"), (0, 0))
    kinds = {"TGA": "a.tga", "ICO": "b.ico", "PCX": "c.pcx", "SGI": "d.sgi", "QOI": "e.qoi",
             "JPEG2000": "f.jp2", "MPO": "g.mpo", "DDS": "h.dds"}  # fmt: skip
    # The oldest Pillow gridtsne admits reads QOI but cannot write it: only what this one writes.
    Image.init()
    kinds = {kind: name for kind, name in kinds.items() if kind in Image.SAVE}
    for kind, name in kinds.items():
        picture.save(folder / name, format=kind)
    for name in ("notes.txt", "data.json", "README", ".DS_Store"):
        (folder / name).write_text("not a photo")
    result = cli("embed", folder, "-w", tmp_path / "w")
    assert result.exit_code == 0, result.stderr
    listing = json.loads((tmp_path / "w" / "images.json").read_text())
    assert sorted(Path(entry["path"]).name for entry in listing["images"]) == sorted(kinds.values())
    assert listing["left_out"] == {
        "not an image extension": 3, "hidden file": 1, "hidden folder": 1,
        "extensions": {".txt": 1, ".json": 1, "(none)": 1},
    }  # fmt: skip
    assert "left out: 3 not an image extension" in result.stderr and "1 hidden file" in result.stderr
