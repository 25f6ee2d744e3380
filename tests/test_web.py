"""The web page folder: the tile pyramid, the data the page reads, replacing it safely."""

import base64
import fcntl
import json
import os
import re
import threading
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from gridtsne import render, web
from gridtsne.errors import StageError
from gridtsne.options import RenderOptions

from .conftest import layout_workdir
from .test_render import CELLS


def page_data(folder):
    text = (folder / "data.js").read_text()
    return json.loads(re.fullmatch(r"window\.GRIDTSNE = (.*);\n", text, re.S)[1])


def test_pyramid_levels_halve_down_to_one_tile():
    assert web.pyramid_levels(1000, 300) == [(250, 75), (500, 150), (1000, 300)]
    assert web.pyramid_levels(200, 100) == [(200, 100)]


def test_each_level_of_the_pyramid_is_the_whole_picture_at_its_size(tmp_path):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (700, 1100, 3), dtype=np.uint8))
    pyramid = web.Pyramid(tmp_path / "tiles", 1100, 700, quality=95)
    for top in range(0, 700, 256):
        pyramid.add(picture.crop((0, top, 1100, min(top + 256, 700))))
    pyramid.finish()
    for zoom, (width, height) in enumerate(pyramid.levels):
        names = sorted(p.name for p in (tmp_path / "tiles" / str(zoom)).iterdir())
        columns, rows = -(-width // 256), -(-height // 256)
        assert names == sorted(f"{x}_{y}.jpg" for x in range(columns) for y in range(rows))
        with Image.open(tmp_path / "tiles" / str(zoom) / f"{columns - 1}_{rows - 1}.jpg") as corner:
            assert corner.size == (width - 256 * (columns - 1), height - 256 * (rows - 1))
    with Image.open(tmp_path / "tiles" / "0" / "0_0.jpg") as smallest:
        expected = picture.reduce(8)  # 1100 -> 550 -> 275 -> 138 wide
        assert smallest.size == expected.size
        difference = np.abs(np.asarray(smallest, float) - np.asarray(expected, float)).mean()
        assert difference < 12  # the same picture, give or take JPEG


def photo_table(folder):
    """Per photo of a page, in cell order: (cell, name, folder as shown, link, width, height)."""
    data = page_data(folder)

    def decode(name, dtype):
        return np.frombuffer(base64.b64decode(data[name]), dtype=dtype)

    cells, folders, sizes = decode("cell", "<i4"), decode("folder", "<i4"), decode("size", "<u4")
    shown = [data["root"] + ("/" + f if f else "") for f in data["folders"]]
    return [
        {"cell": int(cells[p]), "name": data["names"][p], "folder": shown[folders[p]],
         "link": data["folder_links"][folders[p]] + urllib.parse.quote(data["names"][p]),
         "size": (int(sizes[2 * p]), int(sizes[2 * p + 1]))}
        for p in range(data["count"])
    ]  # fmt: skip


def neighbours_of(folder):
    text = (folder / "neighbours.js").read_text()
    data = json.loads(re.fullmatch(r"window\.GRIDTSNE_NEIGHBOURS = (.*);\n", text, re.S)[1])
    k = data["k"]
    index = np.frombuffer(base64.b64decode(data["index"]), "<i4").reshape(-1, k)
    similarity = np.frombuffer(base64.b64decode(data["similarity"]), "i1").reshape(-1, k) / 127
    return index, similarity


def test_the_page_folder_holds_the_page_its_data_and_tiles_and_links_each_cell_to_its_photo(
    cli, tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    result = cli("render", tmp_path / "site" / "gallery.html", "-w", work.path, "--tile", 100)
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "site" / "gallery"
    assert result.stdout.strip() == str(folder / "index.html")
    assert {p.name for p in folder.iterdir()} == {
        "index.html", "data.js", "neighbours.js", "previews", "tiles", web.MARKER
    }  # fmt: skip
    assert '<script src="data.js">' in (folder / "index.html").read_text()
    data = page_data(folder)
    assert (data["rows"], data["cols"], data["width"], data["height"]) == (3, 3, 300, 300)
    assert data["levels"] == [[150, 150], [300, 300]]
    table = photo_table(folder)
    assert [photo["cell"] for photo in table] == sorted(CELLS)  # in the order of their cells
    by_cell = {photo["cell"]: photo for photo in table}
    for photo, cell in zip(colour_photos, CELLS, strict=True):
        shown = by_cell[cell]
        assert (folder / urllib.parse.unquote(shown["link"])).resolve() == photo.resolve()
        assert (shown["name"], shown["folder"]) == (photo.name, "colours")
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["gallery"]  # no temporary folders left


def test_previews_are_the_photos_at_most_preview_px_long_and_the_next_render_reuses_them(
    tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    options = RenderOptions(output=str(tmp_path / "page.html"), tile=16, preview=100)
    render.run(work, options)
    table = photo_table(tmp_path / "page")
    for p, photo in enumerate(table):
        with (
            Image.open(tmp_path / "page" / "previews" / f"{p}.jpg") as preview,
            Image.open(tmp_path / "colours" / photo["name"]) as original,
        ):
            assert preview.format == "JPEG"
            expected = min(100, max(original.size))  # never enlarged
            assert max(preview.size) == expected
            assert abs(preview.width / preview.height - original.width / original.height) < 0.05
    writer = web.WebWriter(preview_px=100)
    mosaic = render.Mosaic(work.load_images()["images"], np.load(work.file("grid.npy")), 3, 3,
                           tile_maker=render.tiles.Tiles(work.path, 16, "crop"))  # fmt: skip
    writer.save(mosaic, tmp_path / "page.html")
    assert writer.counts["previews"] == {"made": 0, "reused": 6, "unreadable": 0}
    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=16, preview=0))
    assert not (tmp_path / "page" / "previews").exists()
    assert page_data(tmp_path / "page")["preview_px"] == 0


def test_the_neighbours_file_holds_the_exact_12_most_similar_photos_of_each_in_page_order(tmp_path):
    names = [f"p{i:02d}.png" for i in range(20)]
    (tmp_path / "photos").mkdir()
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 12, 0, 0)).save(tmp_path / "photos" / name)
    cells = np.random.default_rng(3).permutation(20)
    work = layout_workdir(tmp_path / "work", [tmp_path / "photos" / n for n in names], cells, 4, 5)
    vectors = np.random.default_rng(4).normal(size=(20, 7)).astype(np.float32)
    np.save(work.file("embeddings.npy"), vectors)
    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=8, preview=0))
    table = photo_table(tmp_path / "page")
    index, similarity = neighbours_of(tmp_path / "page")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(exact, -np.inf)
    for p, photo in enumerate(table):
        image = names.index(photo["name"])
        expected = np.argsort(-exact[image], kind="stable")[:12]
        assert [table[q]["name"] for q in index[p]] == [names[i] for i in expected]
        assert np.allclose(similarity[p], exact[image, expected], atol=0.01)
    assert (work.path / web.NEIGHBOURS_CACHE).is_file()


def test_a_page_holds_no_absolute_path_of_this_machine(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    render.run(work, RenderOptions(output=str(tmp_path / "site" / "page.html"), tile=16))
    for path in (tmp_path / "site" / "page").rglob("*"):
        if path.is_file() and path.suffix in (".js", ".html", ".json"):
            text = path.read_text()
            assert str(tmp_path) not in text and "/tmp" not in text, path


def test_a_new_render_replaces_the_page_but_never_a_folder_it_did_not_write(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    assert cli("render", tmp_path / "gallery.html", "-w", work.path, "--tile", 40).exit_code == 0
    assert cli("render", tmp_path / "gallery.html", "-w", work.path, "--tile", 200).exit_code == 0
    assert page_data(tmp_path / "gallery")["tile_px"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "gallery", "work"]

    with pytest.raises(StageError, match="not a page gridtsne wrote"):
        render.run(work, RenderOptions(output=tmp_path / "colours.html"))  # the photos' own folder
    assert sorted(p.name for p in (tmp_path / "colours").iterdir()) == sorted(p.name for p in colour_photos)


def test_a_page_written_into_the_photo_folder_is_not_taken_for_photos(cli, photos, tmp_path):
    out = photos / "gallery.html"
    assert cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work").exit_code == 0
    second = cli("all", photos, out, "--tile", 16, "-w", tmp_path / "work")
    assert second.exit_code == 0
    assert "embed: fresh, skipped" in second.stderr and "render: fresh, skipped" in second.stderr


def test_labels_go_into_the_page_as_a_table_and_a_small_index_per_photo(tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "path,label\ncolours/red.jpg,warm\ncolours/yellow.jpg,warm\ncolours/blue.jpg,cold\n"
    )
    render.run(
        work, RenderOptions(output=str(tmp_path / "page.html"), tile=8, preview=0, labels=str(labels_csv))
    )
    data = page_data(tmp_path / "page")
    assert data["labels"] == ["warm", "cold"] and data["label_bytes"] == 1
    label_of = np.frombuffer(base64.b64decode(data["label"]), "<u1")
    shown = {photo["name"]: int(label_of[p]) for p, photo in enumerate(photo_table(tmp_path / "page"))}
    assert shown == {
        "red.jpg": 1,
        "yellow.jpg": 1,
        "blue.jpg": 2,
        "lime.jpg": 0,
        "magenta.jpg": 0,
        "cyan.jpg": 0,
    }

    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=8, preview=0))
    assert page_data(tmp_path / "page")["labels"] is None  # without labels the page keys by folder


def test_render_rewrites_the_page_when_the_labels_file_changes_and_only_then(
    tmp_path, colour_photos, monkeypatch
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("colours/red.jpg,warm\n")
    options = RenderOptions(output=str(tmp_path / "page.html"), tile=8, preview=0, labels=str(labels_csv))
    render.run(work, options)
    written = (tmp_path / "page" / "data.js").stat().st_mtime_ns

    assert render.run(work, options, skip_if_fresh=True)["ran"] is False
    assert (tmp_path / "page" / "data.js").stat().st_mtime_ns == written  # nothing rewritten

    labels_csv.write_text("colours/red.jpg,hot\n")
    assert render.run(work, options, skip_if_fresh=True)["ran"] is True
    assert page_data(tmp_path / "page")["labels"] == ["hot"]
    assert render.run(work, options, skip_if_fresh=True)["ran"] is False

    monkeypatch.chdir(tmp_path)  # inline labels: paths relative to the working folder
    inline = options.replace(labels=[("colours/red.jpg", "hot")])
    assert render.run(work, inline, skip_if_fresh=True)["ran"] is True
    assert render.run(work, inline, skip_if_fresh=True)["ran"] is False
    assert render.run(work, inline.replace(labels=[("colours/red.jpg", "warm")]), skip_if_fresh=True)["ran"]
    assert page_data(tmp_path / "page")["labels"] == ["warm"]


def stamps(folder):
    """(inode, modification time) of a page folder (".") and of everything in it."""
    return {
        str(path.relative_to(folder)): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in [folder, *folder.rglob("*")]
    }


def changed(before, after):
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_a_new_labels_file_rewrites_only_data_js_in_the_page_as_it_stands(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("colours/red.jpg,warm\n")
    page = tmp_path / "page"
    args = ["render", tmp_path / "page.html", "-w", work.path, "--tile", 16, "--preview", 32]
    assert cli(*args, "--labels", labels_csv).exit_code == 0
    before = stamps(page)
    assert {"tiles/0/0_0.jpg", "previews/0.jpg", "neighbours.js", "index.html"} <= before.keys()

    labels_csv.write_text("colours/red.jpg,hot\ncolours/yellow.jpg,hot\ncolours/blue.jpg,cold\n")
    result = cli(*args, "--labels", labels_csv)
    assert result.exit_code == 0, result.stderr
    assert "only the labels changed: data.js rewritten" in result.stderr
    after = stamps(page)
    assert changed(before, after) == {".", "data.js", web.MARKER}  # ".": data.js replaced in it
    assert page_data(page)["labels"] == ["hot", "cold"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "labels.csv", "page", "work"]
    assert {p.name for p in page.iterdir()} == {
        "index.html", "data.js", "neighbours.js", "previews", "tiles", web.MARKER
    }  # fmt: skip
    # The same data.js as a whole new page of these labels has.
    assert cli(args[0], tmp_path / "fresh.html", *args[2:], "--labels", labels_csv).exit_code == 0
    assert (page / "data.js").read_text() == (tmp_path / "fresh" / "data.js").read_text()

    assert cli(*args).exit_code == 0  # no labels now: the folders are the groups again
    assert changed(after, stamps(page)) == {".", "data.js", web.MARKER}
    assert page_data(page)["labels"] is None

    # render asked again with nothing changed builds the page again, as it always has
    before = stamps(page)
    assert "only the labels changed" not in cli(*args).stderr
    assert before["tiles/0/0_0.jpg"] != stamps(page)["tiles/0/0_0.jpg"]


def test_new_inline_labels_rewrite_only_data_js_and_a_rerun_with_nothing_new_rewrites_nothing(
    tmp_path, colour_photos
):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    red = str(tmp_path / "colours" / "red.jpg")
    options = RenderOptions(output=str(tmp_path / "page.html"), tile=16, preview=32, labels=[(red, "warm")])
    first = render.run(work, options, skip_if_fresh=True)
    before = stamps(tmp_path / "page")
    second = render.run(work, options.replace(labels=[(red, "hot")]), skip_if_fresh=True)
    after = stamps(tmp_path / "page")
    assert changed(before, after) == {".", "data.js", web.MARKER}
    assert page_data(tmp_path / "page")["labels"] == ["hot"]
    assert second["labels_only"] and (second["decoded"], second["from_cache"]) == (0, 0)
    assert {k: second[k] for k in ("output", "width", "height", "tiles", "unreadable")} == {
        k: first[k] for k in ("output", "width", "height", "tiles", "unreadable")
    }
    assert render.run(work, options.replace(labels=[(red, "hot")]), skip_if_fresh=True)["ran"] is False
    assert stamps(tmp_path / "page") == after  # nothing changed: nothing rewritten


def labelled_page(tmp_path, colour_photos, preview):
    """A page rendered from a 3 x 3 layout with labels from labels.csv (red: "warm"): the work
    directory, the labels file and the render's options."""
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("colours/red.jpg,warm\n")
    options = RenderOptions(
        output=str(tmp_path / "page.html"), tile=16, preview=preview, labels=str(labels_csv)
    )
    render.run(work, options)
    return work, labels_csv, options


def test_a_change_beside_the_labels_still_builds_the_page_afresh(tmp_path, colour_photos):
    work, labels_csv, options = labelled_page(tmp_path, colour_photos, preview=32)
    page = tmp_path / "page"

    def rebuilt(change):
        before = stamps(page)
        labels_csv.write_text(labels_csv.read_text() + "colours/blue.jpg,cold\n")  # labels change too
        change()
        assert render.run(work, options, skip_if_fresh=True)["ran"]
        after = stamps(page)
        return before["tiles/0/0_0.jpg"] != after["tiles/0/0_0.jpg"] and before["."] != after["."]

    assert rebuilt(lambda: None) is False  # labels alone: the same page
    new_cells = [0, 4, 8, 2, 6, 3]
    assert rebuilt(lambda: layout_workdir(tmp_path / "work", colour_photos, new_cells, 3, 3))  # the grid
    assert [photo["cell"] for photo in photo_table(page)] == sorted(new_cells)
    options = options.replace(quality=50)
    assert rebuilt(lambda: None)
    options = options.replace(preview=40)
    assert rebuilt(lambda: None)
    assert rebuilt(lambda: (page / "index.html").write_text("changed by hand"))  # a damaged page
    assert "GRIDTSNE" in (page / "index.html").read_text()
    assert rebuilt(lambda: (page / web.MARKER).write_text(web.MARKER_NOTE))  # an older gridtsne's page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_labels_rewrite_never_writes_through_a_link_in_the_page_s_place(tmp_path, colour_photos):
    work, labels_csv, options = labelled_page(tmp_path, colour_photos, preview=0)
    (tmp_path / "page").rename(tmp_path / "elsewhere")
    (tmp_path / "page").symlink_to(tmp_path / "elsewhere")
    data_elsewhere = (tmp_path / "elsewhere" / "data.js").read_text()
    labels_csv.write_text("colours/red.jpg,hot\n")
    render.run(work, options)
    assert (tmp_path / "elsewhere" / "data.js").read_text() == data_elsewhere
    assert not (tmp_path / "page").is_symlink() and page_data(tmp_path / "page")["labels"] == ["hot"]


@pytest.mark.parametrize("quality", [90, 50], ids=["labels only", "a new page"])
def test_a_render_waits_for_another_render_holding_the_page(tmp_path, colour_photos, quality):
    work, labels_csv, options = labelled_page(tmp_path, colour_photos, preview=0)
    labels_csv.write_text("colours/red.jpg,hot\n")
    held = os.open(tmp_path / "page" / web.MARKER, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a render rewriting its data.js or replacing it holds it
    rewrite = threading.Thread(target=render.run, args=(work, options.replace(quality=quality)))
    rewrite.start()
    rewrite.join(0.5)
    assert rewrite.is_alive() and page_data(tmp_path / "page")["labels"] == ["warm"]
    os.close(held)
    rewrite.join(30)
    assert not rewrite.is_alive() and page_data(tmp_path / "page")["labels"] == ["hot"]


def test_the_page_names_regions_of_the_map_by_their_folders(tmp_path):
    photos = []
    for side, folder in ((0, "beach"), (1, "mountains")):
        for i in range(18):
            path = tmp_path / "photos" / folder / f"IMG_{side}{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (side * 200, 0, 0)).save(path)
            photos.append(path)
    cells = [row * 6 + side * 3 + col for side in (0, 1) for row in range(6) for col in range(3)]
    work = layout_workdir(tmp_path / "work", photos, cells, 6, 6)
    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=8, preview=0))
    assert page_data(tmp_path / "page")["regions"] == [["beach", 0, 0, 3, 6], ["mountains", 3, 0, 6, 6]]
