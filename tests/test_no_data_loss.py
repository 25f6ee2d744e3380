"""Nothing of the user's is written over: outputs that are photos or files gridtsne did not write."""

import hashlib

from PIL import Image


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder):
    return {path: digest(path) if path.is_file() else "folder" for path in folder.rglob("*")}


def test_a_shell_glob_that_left_the_output_off_never_overwrites_the_last_photo(cli, fake_model, photos):
    listed = sorted(photos.glob("*.jpg"))  # `gridtsne all photos/*.jpg`: the last photo becomes OUT
    before = snapshot(photos)
    for extra in ((), ("--overwrite",)):  # not even when told to
        result = cli("all", *listed, *extra)
        assert result.exit_code == 1 and "Did a shell glob take your last photo" in result.stderr
        assert "--overwrite" not in result.stderr  # no advice that would destroy the photo
        assert "Traceback" not in result.output
        assert snapshot(photos) == before  # nothing changed, nothing created


def test_no_photo_is_written_over_whatever_its_name_or_state(cli, fake_model, photos, tmp_path):
    other = tmp_path / "holiday.png"  # a photo of another kind than the inputs
    Image.new("RGB", (40, 30), "red").save(other)
    damaged = photos / "damaged.jpg"  # with the photos' extension: still a photo, though unreadable
    damaged.write_bytes(b"\xff\xd8 cut short")
    listed = sorted(photos.glob("land*.jpg"))[:4] or sorted(photos.glob("*.jpg"))[:4]
    for args in (
        ("all", photos, other, "-w", tmp_path / "w1", "--overwrite"),
        ("all", *listed, damaged, "-w", tmp_path / "w2", "--overwrite"),
    ):
        before = snapshot(tmp_path)
        result = cli(*args)
        assert result.exit_code == 1 and "gridtsne never writes over a photo" in result.stderr, result.stderr
        assert snapshot(tmp_path) == before
    work = tmp_path / "w3"
    assert cli("all", photos, tmp_path / "m.png", "-w", work, "--tile", 8).exit_code == 0
    before = digest(other)
    result = cli("export", "-w", work, "-o", other, "--overwrite")
    assert result.exit_code == 1 and "never writes over a photo" in result.stderr
    assert digest(other) == before


def test_overwrite_as_advised_replaces_only_a_lost_mosaic(cli, fake_model, photos, tmp_path):
    for name in ("old.jpg", "old.png", "old.webp", "old.tiff"):
        out = tmp_path / name
        assert cli("all", photos, out, "-w", tmp_path / "w", "--tile", 8).exit_code == 0
        with Image.open(out) as picture:
            assert "gridtsne" in str(picture.info.get("Software") or picture.getexif().get(0x0131))
        (tmp_path / "w" / "written.json").unlink()  # the work directory forgot it wrote the mosaic
        result = cli("render", out, "-w", tmp_path / "w", "--tile", 9)
        assert result.exit_code == 1 and "add --overwrite" in result.stderr
        assert cli("render", out, "-w", tmp_path / "w", "--tile", 9, "--overwrite").exit_code == 0
        with Image.open(out) as picture:
            assert picture.size == (4 * 9, 3 * 9)


def test_all_never_makes_its_work_directory_among_photos_named_as_files(cli, fake_model, photos, tmp_path):
    listed = sorted(photos.glob("*.jpg"))
    before = snapshot(photos)
    result = cli("all", *listed, photos / "mosaic.jpg")
    assert result.exit_code == 1 and "would go among the photos" in result.stderr
    assert "-w DIR" in result.stderr
    assert snapshot(photos) == before
    # Following the advice works and still changes no photo.
    assert cli("all", *listed, tmp_path / "mosaic.jpg", "-w", tmp_path / "w", "--tile", 8).exit_code == 0
    assert snapshot(photos) == before


def test_an_output_named_among_the_photos_is_refused_even_with_overwrite(cli, fake_model, photos, tmp_path):
    photo = sorted(photos.glob("*.jpg"))[0]
    before = digest(photo)
    result = cli("all", photo, photos, photo, "-w", tmp_path / "w", "--overwrite")
    assert result.exit_code == 1 and "is one of the photos" in result.stderr
    assert digest(photo) == before


def test_render_and_export_replace_what_they_wrote_but_not_a_file_of_the_users(
    cli, fake_model, photos, tmp_path
):
    work, out, table = tmp_path / "w", tmp_path / "m.png", tmp_path / "t.csv"
    assert cli("all", photos, out, "-w", work, "--tile", 8).exit_code == 0
    assert cli("render", out, "-w", work, "--tile", 9).exit_code == 0  # its own picture: replaced
    with Image.open(out) as picture:
        assert picture.size == (4 * 9, 3 * 9)
    assert cli("export", "-w", work, "-o", table).exit_code == 0
    assert cli("export", "-w", work, "-o", table).exit_code == 0

    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's own file")
    for args in (("render", mine, "-w", work), ("export", "-w", work, "-o", mine)):
        result = cli(*args)
        assert result.exit_code == 1 and "--overwrite" in result.stderr
        assert mine.read_bytes() == b"the user's own file"
    out.write_bytes(b"edited by the user since")  # gridtsne wrote it, but it changed since
    assert cli("render", out, "-w", work, "--tile", 10).exit_code == 1
    assert cli("render", out, "-w", work, "--tile", 10, "--overwrite").exit_code == 0


def test_a_link_where_the_output_goes_is_not_followed_or_replaced(cli, fake_model, photos, tmp_path):
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"keep me")
    (tmp_path / "m.png").symlink_to(target)
    result = cli("all", photos, tmp_path / "m.png", "-w", tmp_path / "w")
    assert result.exit_code == 1 and (tmp_path / "m.png").is_symlink()
    assert target.read_bytes() == b"keep me"


def test_a_file_where_the_work_directory_goes_is_a_clear_error(cli, fake_model, photos, tmp_path):
    (tmp_path / "m.gridtsne").write_text("not a folder")
    result = cli("all", photos, tmp_path / "m.png")
    assert result.exit_code == 2 and "is a file, not a work directory" in result.stderr
    assert (tmp_path / "m.gridtsne").read_text() == "not a folder"
