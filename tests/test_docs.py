"""The documentation keeps up with the code: the CLI reference and the links between pages."""

import importlib.util
import re
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def load_generator():
    path = DOCS / "generate_cli_reference.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def cli_md_sections() -> dict[str, str]:
    """docs/cli.md by command: ``{"gridtsne embed": "...its section..."}``."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_cli_reference_is_what_the_generator_writes_now():
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert written == generator.reference(), "docs/cli.md is stale: run `make docs`"


def test_generator_check_exits_1_on_a_stale_reference_and_writes_nothing(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "cli.md"
    monkeypatch.setattr(generator, "CLI_MD", reference)
    reference.write_text("# an old reference\n", encoding="utf-8")
    assert generator.main(["--check"]) == 1
    assert "docs/cli.md is stale: run `make docs`" in capsys.readouterr().err
    assert reference.read_text(encoding="utf-8") == "# an old reference\n"

    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert reference.read_text(encoding="utf-8") == generator.reference()


def test_every_command_and_every_long_option_is_in_the_cli_reference():
    sections = cli_md_sections()
    missing = []
    for ctx, command in generator.contexts():
        section = sections.get(ctx.command_path)
        if section is None:
            missing.append(ctx.command_path)
            continue
        for param in command.get_params(ctx):
            if not isinstance(param, click.Option) or param.hidden:
                continue
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section):
                    missing.append(f"{ctx.command_path} {flag}")
    assert missing == [], f"not in docs/cli.md (run `make docs`): {missing}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", without_code_blocks(page.read_text(encoding="utf-8")), re.M):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def relative_links(page: Path) -> list[str]:
    """Targets of the page's markdown links and images, and of src/href attributes, not web addresses."""
    text = without_code_blocks(page.read_text(encoding="utf-8"))
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.MULTILINE)
    targets += re.findall(r"(?:src|href)=\"([^\"]+)\"", text)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"broken links in {page.relative_to(REPO)}: {broken}"


def test_the_link_check_finds_the_readme_links():
    assert "docs/demo.jpg" in relative_links(REPO / "README.md")
