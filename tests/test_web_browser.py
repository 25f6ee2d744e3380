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
