"""The web page in a real browser: Debian's Chromium driven by playwright-core (tests/browser/).

Needs /usr/bin/chromium (or $CHROMIUM), node, and `npm ci --prefix tests/browser`; `.ci/run`
installs them. Without them the test is skipped with the reason, except under CI (CI=true),
where a missing browser is a failure.
"""

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from .conftest import layout_workdir
from .test_render import CELLS

BROWSER_TEST = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def missing_tools() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)"
    if shutil.which("node") is None:
        return "no node on PATH (apt-get install nodejs npm)"
    if not (BROWSER_TEST / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: npm ci --prefix tests/browser"
    return None


@pytest.fixture
def browser():
    """Runs check_page.mjs on a page; its JSON report."""
    reason = missing_tools()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run the browser test, but: {reason}")
        pytest.skip(reason)

    def check(page: Path, cells: list[int], screenshot: Path | None = None) -> dict:
        job = {"page": str(page), "cells": cells, "screenshot": str(screenshot) if screenshot else None}
        result = subprocess.run(
            ["node", str(BROWSER_TEST / "check_page.mjs"), json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=90,
            env=os.environ | {"CHROMIUM": CHROMIUM},
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    return check


def test_the_page_shows_the_mosaic_and_names_and_opens_the_photo_under_the_pointer(
    cli, tmp_path, colour_photos, browser
):
    from PIL import Image

    blue = colour_photos[2].rename(colour_photos[2].with_name("blue sky #1 ü?.jpg"))  # links must escape
    colour_photos[2] = blue
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    assert (
        cli(
            "render", tmp_path / "page.html", "-w", work.path, "--tile", 300, "--background", "white"
        ).exit_code
        == 0
    )
    report = browser(tmp_path / "page" / "index.html", [CELLS[2], CELLS[3]], tmp_path / "shot.png")

    assert report["errors"] == []
    assert [(h["hoveredCell"], h["name"], h["labelShown"]) for h in report["hovers"]] == [
        (CELLS[2], "blue sky #1 ü?.jpg", True),
        (CELLS[3], "yellow.jpg", True),
    ]
    assert urllib.parse.unquote(report["opened"]) == urllib.parse.unquote(blue.resolve().as_uri())
    assert report["tilesLoaded"] >= 2
    with Image.open(tmp_path / "shot.png") as shot:  # the mosaic is on screen: blue in the bottom right
        colours = {pixel for _, pixel in shot.convert("RGB").getcolors(1 << 20)}
    assert any(b > 200 and r < 60 and g < 60 for r, g, b in colours)
    assert any(r > 200 and g > 200 and b < 60 for r, g, b in colours)


def explore(job: dict) -> dict:
    result = subprocess.run(
        ["node", str(BROWSER_TEST / "explore_page.mjs"), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"CHROMIUM": CHROMIUM},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


#: Names a page must show as text: markup, quotes, a link scheme, a right-to-left override, 4,000 characters.
HOSTILE = [
    "<script>window.pwned=true</script>.png",
    '<img src=x onerror="window.pwned=true">.png',
    'quote\'s "double" & amp;.png',
    "javascript:window.pwned=true.png",
    "\u202egnp.exe.png",
]
LONG_NAME = "x" * 3996 + ".png"  # no file system takes it: the photo is listed, its file is unreadable


def exploring_workdir(tmp_path):
    """A 5 x 6 grid of 29 photos in two folders (one cell empty), hostile names among them,
    random 16-d embeddings; returns the work directory and, per image, (path, cell, shown path)."""
    import hashlib

    import numpy as np
    from PIL import Image

    from gridtsne import assign
    from gridtsne.workdir import COORDS, EMBEDDINGS, IMAGES, Workdir, save_json, save_npy

    rng = np.random.default_rng(17)
    root = tmp_path / "photos"
    names = [("animals", f"animal {i:02d}.png") for i in range(12)] + [("animals", "zebra crossing.png")]
    names += [("things/red", f"red thing {i}.png") for i in range(10)] + [("things/red", n) for n in HOSTILE]
    entries, shown = [], []
    for index, (folder, name) in enumerate(names):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + index, 30), tuple(int(v) for v in rng.integers(0, 255, 3))).save(path)
        entries.append({"path": str(path), "bytes": path.stat().st_size, "width": 40 + index, "height": 30,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})  # fmt: skip
        shown.append(f"photos/{folder}/{name}")
    entries.append({"path": str(root / "animals" / LONG_NAME), "bytes": 0, "sha256": "0" * 64,
                    "width": 0, "height": 0})  # fmt: skip
    shown.append(f"photos/animals/{LONG_NAME}")
    rows, cols = 5, 6
    cells = rng.permutation(rows * cols)[: len(entries)]
    work = Workdir(tmp_path / "work")
    work.path.mkdir()
    save_json(work.file(IMAGES), {"images": entries, "skipped": []})
    save_npy(work.file(COORDS), rng.random((len(entries), 2)).astype(np.float32))
    vectors = rng.normal(size=(len(entries), 16)).astype(np.float32)
    save_npy(work.file(EMBEDDINGS), vectors)
    assign.save_grid(work, cells.astype(np.int32), rows, cols)
    return work, [(e["path"], int(c), s) for e, c, s in zip(entries, cells, shown, strict=True)], vectors


def test_using_the_page_search_details_similar_keys_selection_and_links(tmp_path, browser):
    import numpy as np

    from gridtsne import render
    from gridtsne.options import RenderOptions

    work, photos, vectors = exploring_workdir(tmp_path)
    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=64, preview=128))
    at_cell = {cell: shown for _, cell, shown in photos}
    cell_of = {shown: cell for _, cell, shown in photos}
    rows, cols = 5, 6
    empty = [cell for cell in range(rows * cols) if cell not in at_cell]
    hostile = [cell_of[f"photos/things/red/{name}"] for name in HOSTILE] + [cell_of[photos[-1][2]]]
    zebra = cell_of["photos/animals/zebra crossing.png"]
    # the keys walk from the photo before the empty cell, over it
    start = empty[0] - 1 if empty[0] % cols else empty[0] + 1
    lasso = [[1.2, 1.2], [5.8, 1.3], [1.3, 4.8]]  # a triangle, clear of the search bar
    job = {
        "page": str(tmp_path / "page" / "index.html"), "hostile": hostile, "search": "ZEBRA",
        "multiSearch": ["red thing", "thing 3", "animal red"], "similarOf": [zebra, hostile[0]],
        "keyStart": start, "keys": ["ArrowRight", "ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"],
        "rectangle": [1 * cols + 1, 3 * cols + 4], "lasso": lasso,
        "link": {"open": zebra, "then": cell_of["photos/animals/animal 03.png"]},
    }  # fmt: skip
    report = explore(job)
    assert report["errors"] == [] and report["requests"] == []  # nothing from the network

    # Hostile names are text: shown as they are, no element made, no script run.
    for seen, cell in zip(report["hostile"], hostile, strict=True):
        name = at_cell[cell].rsplit("/", 1)[1]
        assert seen["label"] == name and seen["panel"] == name and seen["elements"] == 0
        assert seen["link"].startswith("file://")  # never a javascript: link
    assert sorted(report["scripts"], key=str) == [None, "data.js", "neighbours.js"] and not report["pwned"]

    # Search: "/" focuses it, case-insensitive, all words must match; Enter flies to the match.
    assert report["searchFocused"] and report["searchCount"] == "1 match"
    assert report["search"]["opened"] == {"cell": zebra, "path": "photos/animals/zebra crossing.png"}
    assert report["search"]["cellPxAfter"] > report["search"]["cellPxBefore"]
    spot = report["search"]["onScreenAt"]
    assert abs(spot["x"] - (1000 - 360) / 2) < 2 and abs(spot["y"] - 350) < 2  # centred beside the panel
    assert [s["matches"] for s in report["searchMulti"]] == [15, 1, 0]  # folders match too: things/red

    # More like this: numpy's exact top 12 by cosine, with their similarity; a click opens the first.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = unit.astype(np.float64) @ unit.T
    np.fill_diagonal(exact, -np.inf)
    shown_of = [shown for _, _, shown in photos]
    for seen in report["similar"]:
        image = shown_of.index(at_cell[seen["cell"]])
        expected = np.argsort(-exact[image], kind="stable")[:12]
        assert [n["path"] for n in seen["near"]] == [shown_of[i] for i in expected]
        assert np.allclose([n["similarity"] for n in seen["near"]], exact[image, expected], atol=0.01)
        assert seen["shown"] == [shown_of[i].rsplit("/", 1)[1] for i in expected]
    assert report["similarClicked"]["path"] == report["similar"][-1]["near"][0]["path"]

    # Keyboard: each arrow moves to the next photo that way on the grid, over empty cells.
    def walk(cell, key):
        row, col = divmod(cell, cols)
        d_row, d_col = {"ArrowRight": (0, 1), "ArrowLeft": (0, -1), "ArrowDown": (1, 0), "ArrowUp": (-1, 0)}[
            key
        ]
        while True:
            row, col = row + d_row, col + d_col
            if not (0 <= row < rows and 0 <= col < cols):
                return cell
            if row * cols + col in at_cell:
                return row * cols + col

    expected_cells, cell = [], start
    for key in job["keys"]:
        cell = walk(cell, key)
        expected_cells.append(cell)
    assert report["keys"] == expected_cells and report["closedByEscape"]

    # Rectangle: exactly the photos of rows 1-3, columns 1-4, in cell order, as .txt and .csv.
    inside = [at_cell[c] for c in sorted(at_cell) if 1 <= c // cols <= 3 and 1 <= c % cols <= 4]
    rectangle = report["rectangle"]
    assert rectangle["selected"] == inside and rectangle["count"] == f"{len(inside)} selected"
    assert rectangle["txt"]["name"] == "selection.txt" and rectangle["txt"]["text"].splitlines() == inside
    csv_rows = list(__import__("csv").reader(rectangle["csv"]["text"].splitlines()))
    assert csv_rows[0] == ["path", "row", "col", "folder"]
    assert csv_rows[1:] == [
        [p, str(cell_of[p] // cols), str(cell_of[p] % cols), p.rsplit("/", 1)[0]] for p in inside
    ]

    # Lasso: the photos whose cell centre is inside the triangle.
    def in_triangle(x, y):
        (x1, y1), (x2, y2), (x3, y3) = lasso
        d1 = (x - x2) * (y1 - y2) - (x1 - x2) * (y - y2)
        d2 = (x - x3) * (y2 - y3) - (x2 - x3) * (y - y3)
        d3 = (x - x1) * (y3 - y1) - (x3 - x1) * (y - y1)
        return not ((d1 < 0 or d2 < 0 or d3 < 0) and (d1 > 0 or d2 > 0 or d3 > 0))

    lassoed = [at_cell[c] for c in sorted(at_cell) if in_triangle(c % cols + 0.5, c // cols + 0.5)]
    assert report["lasso"]["selected"] == lassoed and report["lasso"]["txt"]["text"].splitlines() == lassoed

    # Deep link: the same view, photo, search and selection; back and forward.
    link = report["link"]
    assert link["there"]["opened"] == link["here"]["opened"] == {"cell": zebra, "path": at_cell[zebra]}
    assert np.allclose(link["there"]["centre"], link["here"]["centre"], atol=0.02)
    assert abs(link["there"]["cellPx"] - link["here"]["cellPx"]) < 0.02 * link["here"]["cellPx"]
    assert link["there"]["matches"] == 1 and link["searchBox"] == "ZEBRA"
    assert link["there"]["selected"] == link["here"]["selected"] == lassoed
    assert link["panelName"] == "zebra crossing.png"
    assert link["back"]["cell"] == zebra and link["forward"]["cell"] == job["link"]["then"]


def brightness(shot, at):
    """The mean brightness of a 5 x 5 patch of a screenshot around a point (CSS px = pixels here)."""
    import numpy as np

    x, y = round(at["x"]), round(at["y"])
    return float(np.asarray(shot.convert("L"))[y - 2 : y + 3, x - 2 : x + 3].mean())


def test_a_folder_switched_off_is_dimmed_and_left_out_of_search_and_selection(tmp_path, browser):
    from PIL import Image

    from gridtsne import render
    from gridtsne.options import RenderOptions

    work, photos, _ = exploring_workdir(tmp_path)
    render.run(work, RenderOptions(output=str(tmp_path / "page.html"), tile=64, preview=0))
    things = [cell for _, cell, shown in photos if shown.startswith("photos/things/")]
    animals = sorted((cell, shown) for _, cell, shown in photos if shown.startswith("photos/animals/"))
    shots = [tmp_path / "before.png", tmp_path / "after.png"]
    folders = {"toggle": "things", "queries": ["red thing", "animal"], "shots": [str(s) for s in shots],
               "cells": [cell for _, cell, _ in photos], "all": [0, 29]}  # fmt: skip
    job = {"page": str(tmp_path / "page" / "index.html"), "folders": folders}
    report = explore(job)
    assert report["errors"] == [] and report["requests"] == []

    # At first sight the toolbar covers no photo: the whole map lies below it.
    initial = report["initial"]
    assert initial["firstCell"]["y"] - initial["cellPx"] / 2 >= initial["toolbarBottom"]

    folders = report["folders"]
    assert folders["before"] == [{"name": "things", "count": 15, "on": True},
                                 {"name": "animals", "count": 14, "on": True}]  # fmt: skip
    assert folders["after"][0]["on"] is False and folders["pressed"] == "false" and folders["off"] == 15
    assert folders["matches"] == {"red thing": 0, "animal": 14}
    assert folders["selected"] == [shown for _, shown in animals]  # a rectangle over the whole grid
    assert folders["restored"] == 0

    with Image.open(shots[0]) as before, Image.open(shots[1]) as after:
        centre = folders["cells"]
        brightest = max(things, key=lambda cell: brightness(before, centre[str(cell)]))
        assert brightness(after, centre[str(brightest)]) < 0.5 * brightness(before, centre[str(brightest)])
        for cell, _ in animals:
            assert abs(brightness(after, centre[str(cell)]) - brightness(before, centre[str(cell)])) < 8


HOSTILE_LABEL = '<img src=x onerror="window.pwned=true"> & "q"'
LONG_LABEL = "\x07" + "y" * 4000  # a control character and 4,000 characters


def labelled_workdir(tmp_path):
    """An 8 x 16 grid: 60 cats in the left half, 60 dogs in the right, under a folder whose name a
    spreadsheet would take for a formula; ``labels.csv`` labels them (two with hostile labels,
    two dogs not at all). Returns the work directory, the labels file and the photos' cells."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    root = tmp_path / "=photos"
    photos, cells, rows = [], [], [("path", "label")]
    for kind, first_col in (("cat", 0), ("dog", 8)):
        half = [row * 16 + col for row in range(8) for col in range(first_col, first_col + 8)]
        for index, cell in enumerate(sorted(rng.choice(half, 60, replace=False).tolist())):
            name = 'cat, "the" first.png' if (kind, index) == ("cat", 0) else f"{kind} {index:02d}.png"
            path = root / f"{kind}s" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            base = (200, 90, 60) if kind == "cat" else (60, 110, 210)
            Image.new(
                "RGB", (32, 32), tuple(int(v) for v in np.clip(base + rng.integers(-40, 40, 3), 0, 255))
            ).save(path)
            photos.append(path)
            cells.append(cell)
            label = {("cat", 1): HOSTILE_LABEL, ("cat", 2): LONG_LABEL}.get((kind, index), kind)
            if not (kind == "dog" and index < 2):
                rows.append((f"=photos/{kind}s/{name}", label))
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    work = layout_workdir(tmp_path / "work", photos, cells, 8, 16)
    return work, labels_csv, dict(zip(cells, photos, strict=True))


def test_labels_colour_the_map_with_a_legend_that_switches_them_and_regions_are_named(tmp_path, browser):
    import csv

    from gridtsne import render
    from gridtsne.options import RenderOptions

    work, labels_csv, photo_at = labelled_workdir(tmp_path)
    render.run(
        work, RenderOptions(output=str(tmp_path / "page.html"), tile=32, preview=0, labels=str(labels_csv))
    )
    shown = {
        cell: "=photos/" + path.relative_to(tmp_path / "=photos").as_posix()
        for cell, path in photo_at.items()
    }
    hostile_cell = next(cell for cell, path in shown.items() if path == "=photos/cats/cat 01.png")
    job = {"page": str(tmp_path / "page" / "index.html"), "rectangle": [0, 127],
           "labels": {"toggle": "dog", "queries": ["dog", "cat"], "open": hostile_cell},
           "regions": True}  # fmt: skip
    report = explore(job)
    assert report["errors"] == [] and report["requests"] == []

    # At first sight the legend is open and the whole map lies beside it and below the toolbar.
    initial = report["initial"]
    assert initial["firstCell"]["x"] - initial["cellPx"] / 2 >= initial["groupsRight"]
    assert initial["firstCell"]["y"] - initial["cellPx"] / 2 >= initial["toolbarBottom"]

    # The legend: each label with its count, most first; hostile labels as text; a fixed width.
    labels = report["labels"]
    assert labels["open"] and labels["colour"] and labels["button"] == "labels"
    assert [(entry["name"], entry["count"]) for entry in labels["legend"]] == [
        ("cat", 58), ("dog", 58), (HOSTILE_LABEL, 1), ("y" * 4000, 1), ("(no label)", 2)
    ]  # fmt: skip
    assert labels["markup"] == 0 and labels["width"] == 250 and labels["panel"] == HOSTILE_LABEL
    assert len(set(labels["swatches"][:4])) == 4  # four labels, four colours
    assert sorted((f["name"], f["count"]) for f in labels["folders"]) == [("cats", 60), ("dogs", 60)]
    assert not report["pwned"] and not report["pwnedAtEnd"]

    # Switching "dog" off: its 58 photos are dimmed and no longer match; the 2 unlabelled dogs do.
    assert labels["off"] == 58 and labels["after"][1] == {"name": "dog", "count": 58, "on": False}
    assert labels["matches"] == {"dog": 2, "cat": 60} and labels["restored"] == 0

    # Region names at the whole map: one per half; a click on one zooms in to fill the view with it.
    regions = report["regions"]
    assert [(name["name"], name["box"]) for name in regions["names"]] == [
        ("cat", [0, 0, 8, 8]), ("dog", [8, 0, 16, 8])
    ]  # fmt: skip
    after = regions["after"]
    assert after["cellPx"] > 1.3 * regions["cellPx"] and after["opened"] is None
    for corner in after["corners"]:  # the region's corner photos are on screen
        assert initial["groupsRight"] < corner["x"] < 1000 and initial["toolbarBottom"] < corner["y"] < 700
    assert abs(regions["back"] - regions["cellPx"]) < 0.01  # back returns to the whole map

    # Downloads: every line of the .txt ends in a newline; the .csv keeps formulas out, quotes per RFC 4180.
    in_order = [shown[cell] for cell in sorted(shown)]
    rectangle = report["rectangle"]
    assert rectangle["selected"] == in_order
    assert rectangle["txt"]["text"] == "".join(path + "\n" for path in in_order)
    text = rectangle["csv"]["text"]
    assert text.endswith("\r\n") and '"\'=photos/cats/cat, ""the"" first.png"' in text
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["path", "row", "col", "folder"]
    assert rows[1:] == [
        ["'" + shown[cell], str(cell // 16), str(cell % 16), "'" + shown[cell].rsplit("/", 1)[0]]
        for cell in sorted(shown)
    ]
