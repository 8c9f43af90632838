"""The import rules of the README's "Where the parts live", checked on the source: which
package may import which, and no import cycle between the product's modules. Imports
under ``if TYPE_CHECKING:`` do not run, so they are left out."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("devices", "ingest", "alerts", "dashboards", "export", "stadtpuls")
# Which product packages each may import (itself always).
ALLOWED: dict[str, set[str]] = {
    "devices": set(),
    "ingest": {"devices"},
    "alerts": {"devices", "ingest"},
    "dashboards": {"devices", "ingest"},
    "export": {"devices", "ingest"},
    "stadtpuls": {"devices", "ingest", "alerts", "dashboards", "export"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        if not (ROOT / pkg).is_dir():  # export/ is new
            continue
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path, known: dict[str, Path], root: Path = ROOT) -> Iterator[str]:
    """The product modules ``path`` imports when it runs (module level or in functions)."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    yield from visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")
                    up = up[: len(up) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield sub if sub in known else base
            yield from visit(child)

    for name in visit(ast.parse(path.read_text(), str(path))):
        target = name
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != this:
            yield target


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = product_modules()
    return {name: set(imported(path, known)) for name, path in known.items()}


def test_packages_import_only_what_the_rules_allow(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if (top := target.split(".")[0]) != (own := source.split(".")[0])
        and top not in ALLOWED[own]
    )
    assert wrong == []


def test_no_import_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: any with two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert cycles == []


def test_the_check_sees_a_cycle(tmp_path: Path) -> None:
    """The parser resolves relative and ``from package import module`` imports, so a
    cycle written either way is found."""
    pkg = tmp_path / "devices"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from devices import b\n")
    (pkg / "b.py").write_text("from . import a\n")
    known = {"devices": pkg / "__init__.py", "devices.a": pkg / "a.py", "devices.b": pkg / "b.py"}
    assert set(imported(pkg / "a.py", known, tmp_path)) == {"devices.b"}
    assert set(imported(pkg / "b.py", known, tmp_path)) == {"devices.a"}
