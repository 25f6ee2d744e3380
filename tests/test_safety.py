"""Safety: gridtsne never writes through a link, and odd inputs are skipped with a reason."""

import fcntl
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from gridtsne import images, render, web
from gridtsne.errors import StageError
from gridtsne.images import UnreadableImage
from gridtsne.options import RenderOptions
from gridtsne.workdir import Workdir

from .conftest import REPO, layout_workdir


def test_the_lock_never_follows_a_link_and_never_empties_a_file(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    work = Workdir(tmp_path / "work")
    work.path.mkdir()
    (work.path / ".lock").symlink_to(precious)
    with pytest.raises(StageError, match=r"\.lock is a symbolic link.*remove the link"):
        with work.lock():
            pass
    assert precious.read_text() == "keep me"


def test_a_dangling_lock_link_creates_nothing_where_it_points(tmp_path):
    work = Workdir(tmp_path / "work")
    work.path.mkdir()
    (work.path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StageError, match="symbolic link"):
        with work.lock():
            pass
    assert not (tmp_path / "elsewhere").exists()


def test_the_lock_file_is_kept_not_truncated(tmp_path):
    work = Workdir(tmp_path)
    (tmp_path / ".lock").write_text("left by an earlier run")
    with work.lock():
        pass
    assert (tmp_path / ".lock").read_text() == "left by an earlier run"
    assert os.listdir(tmp_path) == [".lock"]


# --- odd inputs: refused with a reason, never opened ---


def jpeg(path, colour="red", size=(40, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_a_fifo_or_socket_named_like_a_photo_is_skipped_as_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "named.jpg")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket.png"))
        found = images.find_images([tmp_path, tmp_path / "named.jpg"])
    assert found.files == []
    assert sorted(found.skipped) == [
        (tmp_path / "named.jpg", "not a regular file: a named pipe (FIFO)"),
        (tmp_path / "pipe.jpg", "not a regular file: a named pipe (FIFO)"),
        (tmp_path / "socket.png", "not a regular file: a socket"),
    ]


def test_a_fifo_that_takes_a_photos_place_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # nobody writes to it: open() for reading would wait forever
    outcome = []

    def hash_it():
        try:
            images.content_hash(tmp_path / "pipe.jpg")
        except UnreadableImage as error:
            outcome.append(str(error))

    reader = threading.Thread(target=hash_it, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # let the blocked open() return, so that the test run can end
        os.close(os.open(tmp_path / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
    assert outcome == ["not a regular file: a named pipe (FIFO)"]


def test_a_device_named_on_the_command_line_is_not_a_regular_file(tmp_path):
    found = images.find_images(["/dev/null"])
    assert found.skipped == [(Path("/dev/null"), "not a regular file: a character device")]


def test_a_name_that_is_not_utf8_is_skipped_with_a_reason_json_can_store(tmp_path):
    jpeg(tmp_path / "good.jpg")
    jpeg(tmp_path / os.fsdecode(b"caf\xe9.jpg"))  # Latin-1
    bad_folder = tmp_path / os.fsdecode(b"\xff\xfe")
    bad_folder.mkdir()
    jpeg(bad_folder / "inside.jpg")
    found = images.find_images([tmp_path])
    assert found.files == [tmp_path / "good.jpg"]
    assert sorted(found.skipped) == [
        (
            tmp_path / "\\xff\\xfe" / "inside.jpg",
            "bad file name: not valid UTF-8 (rename the file to include it)",
        ),
        (tmp_path / "caf\\xe9.jpg", "bad file name: not valid UTF-8 (rename the file to include it)"),
    ]
    json.dumps([str(path) for path, _ in found.skipped]).encode("utf-8")  # what images.json does


def test_the_fingerprint_takes_any_file_name(tmp_path):
    bad = jpeg(tmp_path / os.fsdecode(b"caf\xe9.jpg"))
    before = images.fingerprint([bad, tmp_path / "gone.jpg"])
    os.utime(bad, ns=(0, 0))
    assert images.fingerprint([bad, tmp_path / "gone.jpg"]) != before


@pytest.mark.parametrize(
    "fmt, cut", [("JPEG", 0.05), ("JPEG", 0.5), ("PNG", 0.5), ("GIF", 0.5), ("TIFF", 0.5)]
)
def test_a_file_cut_short_is_truncated_not_corrupt(tmp_path, fmt, cut):
    full = io.BytesIO()
    Image.effect_noise((120, 90), 60).convert("RGB").save(full, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(full.getvalue()[: int(len(full.getvalue()) * cut)])
    with pytest.raises(UnreadableImage, match="^truncated: "):
        images.open_image(path)


# --- the web page: what killed renders leave behind ---

KILLED_RENDER = """
import os, sys
from gridtsne import render, web
from gridtsne.options import RenderOptions
from gridtsne.workdir import Workdir
web.Pyramid.finish = lambda self: os._exit(9)  # as if killed with -9 halfway through the page
render.run(Workdir(sys.argv[1]), RenderOptions(output=sys.argv[2], tile=20))
"""


def hidden_leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".gallery."))


def test_a_killed_web_render_leaves_folders_the_next_render_removes(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, [4, 0, 8, 2, 6, 3], 3, 3)
    site = tmp_path / "site"
    site.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RENDER, str(work.path), str(site / "gallery.html")], cwd=REPO
    )
    assert killed.returncode == 9
    assert len(hidden_leftovers(site)) == 1 and not (site / "gallery").exists()
    old_page = site / ".gallery.abc123de.old" / "gallery"  # killed while swapping in a new page
    old_page.mkdir(parents=True)
    (old_page / web.MARKER).write_text("")

    render.run(work, RenderOptions(output=site / "gallery.html", tile=20))
    assert sorted(p.name for p in site.iterdir()) == ["gallery"]


def test_only_our_own_idle_leftovers_are_removed(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, [4, 0, 8, 2, 6, 3], 3, 3)
    site = tmp_path / "site"
    site.mkdir()
    kept = {
        ".gallery.a1b2c3d4.tmp": "no marker: not known to be ours",
        ".gallery.e5f6g7h8.tmp": "a marker a live render holds",
        ".gallery.linked_x.tmp": "a link, even to a folder of ours",
        ".other.a1b2c3d4.tmp": "another page's",
        ".gallery.a1b2c3d4.bak": "not a name we give",
    }
    for name in kept:
        if "link" not in name:
            (site / name).mkdir()
    (site / ".gallery.a1b2c3d4.tmp" / "notes.txt").write_text("the user's")
    (site / ".gallery.e5f6g7h8.tmp" / web.MARKER).write_text("")
    (site / ".other.a1b2c3d4.tmp" / web.MARKER).write_text("")
    (site / ".gallery.a1b2c3d4.bak" / web.MARKER).write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / web.MARKER).write_text("")
    (site / ".gallery.linked_x.tmp").symlink_to(elsewhere)
    live = os.open(site / ".gallery.e5f6g7h8.tmp" / web.MARKER, os.O_RDONLY)
    try:
        fcntl.flock(live, fcntl.LOCK_EX)
        render.run(work, RenderOptions(output=site / "gallery.html", tile=20))
    finally:
        os.close(live)
    assert sorted(p.name for p in site.iterdir()) == sorted([*kept, "gallery"])
    assert (elsewhere / web.MARKER).exists()
