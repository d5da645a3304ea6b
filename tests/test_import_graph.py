"""The import graph of the three packages: the layering of DESIGN.md and no circles.

Read from the source (ast), every import counts, lazy ones inside functions included: a
circle hidden in a function is still a circle a reader has to hold in mind. Imports under
`if TYPE_CHECKING:` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "search", "tracking")


def _modules() -> dict[str, Path]:
    """`tunetrack.<package>.<module>` -> its file, for every module of the three."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join(("tunetrack", *parts))] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The tunetrack modules `name` imports -> the line of the first such import.
    `from package import module` counts as the module, not the package's `__init__`."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            modules = [f"{target}.{a.name}" for a in node.names
                       if f"{target}.{a.name}" in known]
            targets = modules if len(modules) == len(node.names) else [target, *modules]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                found.setdefault(target, node.lineno)
    return found


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    found = circles(_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_circle_is_found():
    """The finder itself: a three-module circle and a self-contained chain."""
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b": 1}, "b": {}}) == []


@pytest.mark.parametrize(("package", "forbidden"), [
    ("models", ("search", "tracking")),  # pure PyTorch
    ("tracking", ("search",)),  # tracking may read models, never search
])
def test_layering(package, forbidden):
    bad = [f"{name} -> {target} (line {line})"
           for name, targets in _graph().items() if name.startswith(f"tunetrack.{package}")
           for target, line in targets.items()
           if target.split(".")[1] in forbidden]
    assert not bad, bad
