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
    result = cli("all", *listed)
    assert result.exit_code == 1 and "already exists and gridtsne did not write it" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(photos) == before  # nothing changed, nothing created


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
