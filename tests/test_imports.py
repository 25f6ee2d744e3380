"""How gridtsne's modules may use one another: through public names only, and never in a circle.

A module's leading-underscore names are its own to change; when another
module needs one, the name belongs in a public interface (as the per-photo
work of embed and the Dask runner does in ``photo_model.py``). And a module
that imports another, even inside a function, must not be imported back by
it: each such circle so far hid a piece of work that belonged to neither.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gridtsne"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def absolute(module: str, node: ast.ImportFrom, path: Path) -> str:
    """The module an ``ImportFrom`` names, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, str | None, str | None, int]]:
    """Every gridtsne import in ``module``, at any depth: (module imported, name taken from it
    or None, the local name it is bound to, line)."""
    path = MODULES[module]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gridtsne":
                    found.append((alias.name, None, alias.asname or alias.name.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node, path)
            if source.split(".")[0] == "gridtsne":
                for alias in node.names:
                    found.append((source, alias.name, alias.asname or alias.name, node.lineno))
    return found


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a plain name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def private_uses(module: str) -> list[str]:
    """Where ``module`` takes a private name from another gridtsne module: by ``from X import _y``
    or as ``x._y`` on a module it imported."""
    found, bound = [], {}
    for source, name, local, line in imports_of(module):
        if name is None:
            bound[local] = local if local == "gridtsne" else source
            continue
        if f"{source}.{name}" in MODULES:  # ``from gridtsne import embed``: a module, bound to a name
            bound[local] = f"{source}.{name}"
        if is_private(name) and source != module:
            found.append(f"{module}:{line} imports {name} from {source}")
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain = dotted(node.value)
        if chain is None or chain.split(".")[0] not in bound:
            continue
        head, _, rest = chain.partition(".")
        owner = ".".join(filter(None, (bound[head], rest)))
        if owner in MODULES and owner != module:
            found.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
    return found


def test_no_gridtsne_module_uses_another_modules_private_names():
    found = [use for module in MODULES for use in private_uses(module)]
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_checker_sees_each_way_of_taking_a_private_name(tmp_path, monkeypatch):
    """The test above would catch both spellings, and a relative import, were they in the package."""
    monkeypatch.setitem(MODULES, "gridtsne.example", tmp_path / "example.py")
    (tmp_path / "example.py").write_text(
        "from gridtsne.embed import _embed_files, run\n"
        "from . import photo_model as pm\n"
        "import gridtsne.cache\n"
        "from gridtsne import __version__\n"
        "def f():\n"
        "    from gridtsne import cluster\n"
        "    return cluster._chunks, pm.prepare, pm._loaded, gridtsne.cache._private, run._x\n"
    )
    assert private_uses("gridtsne.example") == [
        "gridtsne.example:1 imports _embed_files from gridtsne.embed",
        "gridtsne.example:7 uses gridtsne.cluster._chunks",
        "gridtsne.example:7 uses gridtsne.photo_model._loaded",
        "gridtsne.example:7 uses gridtsne.cache._private",
    ]


def import_graph() -> dict[str, set[str]]:
    """Which gridtsne modules each imports, at the top or inside a function. The package itself
    (``gridtsne/__init__.py``: the version, and an API that imports the stages when called)
    is left out: Python imports it before any of its modules anyway."""
    graph = {}
    for module in MODULES:
        targets = set()
        for source, name, _, _ in imports_of(module):
            target = f"{source}.{name}" if name and f"{source}.{name}" in MODULES else source
            if target in MODULES and target not in (module, "gridtsne"):
                targets.add(target)
        graph[module] = targets
    return graph


def test_no_gridtsne_modules_import_each_other_in_a_circle():
    graph = import_graph()
    circles = []

    def visit(module, path):
        for target in sorted(graph[module]):
            if target in path:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == [], "modules that import each other:\n" + "\n".join(circles)


def test_the_dask_runner_needs_no_stage():
    """The per-photo work comes from photo_model; the stages call the runner, never the reverse."""
    assert not {"gridtsne.embed", "gridtsne.render"} & import_graph()["gridtsne.cluster"]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, gridtsne.cluster; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    ).stdout
    assert "'gridtsne.photo_model'" in loaded
    assert "'gridtsne.embed'" not in loaded and "'gridtsne.render'" not in loaded
