"""Embedding a real photo library: every file accounted for, cached, resumable, shardable."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from gridtsne import embed
from gridtsne import images as imagelib
from gridtsne.cache import EmbeddingCache
from gridtsne.options import EmbedOptions
from gridtsne.workdir import Workdir

from .conftest import sample_photos


def header_only_png(width, height):
    """A PNG whose header claims width x height pixels, with no pixel data at all."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def library(tmp_path):
    """A folder with good photos and one file of every awkward kind."""
    root = tmp_path / "library"
    (root / "trip" / "day1").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    good = sample_photos(6)
    for photo in good[:3]:
        shutil.copy(photo, root / photo.name)
    for photo in good[3:]:
        shutil.copy(photo, root / "trip" / "day1" / photo.name)
    photo = Image.open(good[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "rotated.jpg", exif=exif.tobytes())
    photo.convert("CMYK").save(root / "cmyk.jpg")
    photo.convert("RGBA").save(root / "rgba.png")
    deep = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(deep).save(root / "deep16.png")
    frames = [photo, photo.rotate(180)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    (root / "truncated.jpg").write_bytes(good[1].read_bytes()[:3000])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("a text file with an image's name")
    (root / "bomb.png").write_bytes(header_only_png(100_000, 100_000))
    (root / "readme.txt").write_text("not looked at: not an image extension")
    shutil.copy(good[2], root / ".thumbnails" / "hidden.jpg")
    (root / "trip" / "loop").symlink_to(root)
    (root / "same.jpg").symlink_to(root / good[0].name)
    return root


def run_embed(cli, *args):
    result = cli("embed", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result


def test_every_file_is_accounted_for_once_with_what_happened_to_it(cli, library, tmp_path):
    summary, result = run_embed(cli, library, "-w", tmp_path / "work")
    listing = json.loads((tmp_path / "work" / "images.json").read_text())
    embedded = {os.path.relpath(e["path"], library): e for e in listing["images"]}
    skipped = {os.path.relpath(s["path"], library): s["reason"] for s in listing["skipped"]}

    for name in ("rotated.jpg", "cmyk.jpg", "rgba.png", "deep16.png", "animated.gif"):
        assert name in embedded, skipped.get(name)
    assert sum(name.startswith("trip/day1/") for name in embedded) == 3
    assert (embedded["rotated.jpg"]["width"], embedded["rotated.jpg"]["height"]) == (
        embedded["cmyk.jpg"]["height"],
        embedded["cmyk.jpg"]["width"],
    )  # upright size
    assert skipped["truncated.jpg"].startswith("truncated: ")
    assert skipped["zero.jpg"] == "empty: zero bytes"
    assert skipped["notes.jpg"].startswith("not an image: ")
    assert skipped["bomb.png"].startswith("too large: ") and "10000000000 pixels" in skipped["bomb.png"]
    assert skipped["same.jpg"].startswith("duplicate: same file as ")
    assert not any(name.startswith(".thumbnails") or name.endswith(".txt") for name in embedded | skipped)
    paths = [e["path"] for e in listing["images"]] + [s["path"] for s in listing["skipped"]]
    assert len(paths) == len(set(paths)) == 16  # every path looked at, exactly once (loop walked once)

    assert summary["embedded"] == 11 and summary["skipped"] == 5
    assert (
        "embed: 11 images embedded, 5 skipped: 1 duplicate, 1 empty, 1 not an image, 1 too large, 1 truncated"
    ) in result.stderr
    assert np.load(tmp_path / "work" / "embeddings.npy").shape == (11, 1280)


def test_hidden_files_are_looked_at_on_request(cli, library, tmp_path):
    summary, _ = run_embed(cli, library, "-w", tmp_path / "work", "--hidden")
    assert summary["embedded"] == 12


def test_paths_from_stdin_newline_or_nul_separated(library, tmp_path):
    names = [str(p) for p in sorted(library.glob("*.jpg"))[:3]]
    for separator, flags in (("\n", []), ("\0", ["-0"])):
        work = tmp_path / f"work{len(flags)}"
        result = subprocess.run(
            [sys.executable, "-m", "gridtsne", "embed", *flags, "-", "-w", str(work), "--json"],
            input=separator.join(names).encode(),
            capture_output=True,
            check=True,
        )
        assert json.loads(result.stdout)["embedded"] == 3


def test_nothing_embeddable_is_an_error_and_inputs_are_untouched(cli, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_text("no")
    before = os.stat(folder / "a.jpg").st_mtime_ns
    result = cli("embed", folder, "-w", tmp_path / "w")
    assert result.exit_code == 1
    assert "no image could be embedded" in result.stderr and "1 not an image" in result.stderr
    assert os.stat(folder / "a.jpg").st_mtime_ns == before


def test_added_photos_are_the_only_ones_embedded_again(cli, photos, tmp_path):
    work = tmp_path / "work"
    first, _ = run_embed(cli, photos, "-w", work)
    assert first["computed"] == 12
    for photo in sample_photos(40)[-2:]:
        shutil.copy(photo, photos / f"new-{photo.name}")
    second, _ = run_embed(cli, photos, "-w", work)
    assert (second["embedded"], second["computed"], second["reused"]) == (14, 2, 12)


def test_a_moved_photo_is_not_embedded_again_and_a_changed_one_is(cli, photos, tmp_path):
    work = tmp_path / "work"
    run_embed(cli, photos, "-w", work)
    first = sorted(photos.glob("*.jpg"))
    (photos / "moved").mkdir()
    first[0].rename(photos / "moved" / "renamed.jpg")
    Image.open(first[1]).rotate(90).save(first[1])  # new content under the old name
    summary, _ = run_embed(cli, photos, "-w", work)
    assert (summary["embedded"], summary["computed"]) == (12, 1)


def test_unchanged_files_are_not_even_read_again(photos, tmp_path, model, monkeypatch):
    work = Workdir(tmp_path / "work")
    embed.run(work, EmbedOptions(paths=[photos]))

    def must_not_read(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(imagelib, "content_hash", must_not_read)
    summary = embed.run(work, EmbedOptions(paths=[photos]))
    assert summary["reused"] == 12


def test_a_cache_shared_between_work_directories(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDTSNE_CACHE", str(tmp_path / "shared"))
    run_embed(cli, photos, "-w", tmp_path / "one")
    summary, _ = run_embed(cli, photos, "-w", tmp_path / "two")
    assert summary["computed"] == 0 and summary["reused"] == 12
    assert not (tmp_path / "two" / "cache").exists()


def many_photos(tmp_path, count):
    folder = tmp_path / "many"
    folder.mkdir()
    for photo in sample_photos(count):
        shutil.copy(photo, folder / photo.name)
    return folder


def start_embed(folder, work, *extra):
    command = [
        sys.executable,
        "-m",
        "gridtsne",
        "embed",
        str(folder),
        "-w",
        str(work),
        "--batch-size",
        "4",
        "--jobs",
        "1",
        "--threads",
        "1",
        *extra,
    ]
    # A runner started in the background (as CI may be) ignores SIGINT, and the child would
    # inherit that: give it the default, as a terminal would, so Ctrl-C can be tested.
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_chunks(cache_folder, count, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(cache_folder.glob("*/*.npz"))) >= count:
            return
        assert process.poll() is None, "embed finished before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("no batch was saved in time")


def test_a_killed_run_resumes_and_loses_at_most_the_batch_in_flight(cli, tmp_path, model):
    folder = many_photos(tmp_path, 40)
    work = tmp_path / "work"
    process = start_embed(folder, work)
    wait_for_chunks(work / "cache", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (work / "embeddings.npy").exists()  # no artifact pretends to be finished
    saved = len(EmbeddingCache(work / "cache", model.cache_key))
    assert saved >= 8  # the two batches seen on disk survived the kill

    resumed, _ = run_embed(cli, folder, "-w", work)
    assert resumed["reused"] == saved and resumed["computed"] == 40 - saved
    uninterrupted, _ = run_embed(cli, folder, "-w", tmp_path / "clean")
    assert np.array_equal(np.load(work / "embeddings.npy"), np.load(tmp_path / "clean" / "embeddings.npy"))
    assert (work / "images.json").read_text() == (tmp_path / "clean" / "images.json").read_text()


def test_ctrl_c_stops_promptly_and_says_how_far_it_got(tmp_path):
    # Many more photos than it embeds before the signal: on a loaded machine the test
    # may see the first batch late, and the run must not have finished by then.
    folder = many_photos(tmp_path, 200)
    process = start_embed(folder, tmp_path / "work")
    wait_for_chunks(tmp_path / "work" / "cache", 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert b"embed interrupted after" in stderr and b"run the same command again" in stderr


def test_shards_fill_the_cache_and_a_plain_run_assembles_them(cli, photos, tmp_path):
    work = tmp_path / "work"
    first, _ = run_embed(cli, photos, "-w", work, "--shard", "1/2")
    second, _ = run_embed(cli, photos, "-w", work, "--shard", "2/2")
    assert first["embedded"] + second["embedded"] == 12 and min(first["embedded"], second["embedded"]) > 0
    assert not (work / "images.json").exists()
    assembled, _ = run_embed(cli, photos, "-w", work)
    assert (assembled["computed"], assembled["reused"]) == (0, 12)
    run_embed(cli, photos, "-w", tmp_path / "direct")
    assert np.array_equal(np.load(work / "embeddings.npy"), np.load(tmp_path / "direct" / "embeddings.npy"))


def test_a_bad_shard_is_a_usage_error(cli, photos, tmp_path):
    assert cli("embed", photos, "--shard", "3/2").exit_code == 2
    assert cli("embed", photos, "--shard", "x").exit_code == 2


def test_an_unavailable_execution_provider_is_a_clear_error(cli, photos, tmp_path):
    result = cli("embed", photos, "-w", tmp_path / "w", "--provider", "tensorrt")
    assert result.exit_code == 1 and "TensorrtExecutionProvider" in result.stderr
