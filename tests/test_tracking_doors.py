"""tracking's sub-packages are rooms with one door each: code outside a room (search/, the
other rooms) imports it only through its `__init__`, never `tunetrack.tracking.<room>.<module>`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = sorted(p.parent.name for p in (ROOT / "tracking").glob("*/__init__.py"))


def _module_of(path: Path) -> list[str]:
    """`tunetrack.<package>...` of a file under search/ or tracking/."""
    rel = path.relative_to(ROOT).with_suffix("")
    return ["tunetrack", *[p for p in rel.parts if p != "__init__"]]


def past_doors(path: Path) -> list[str]:
    """`file:line target` for each import in `path` that reaches into a room it is not in."""
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            targets = [".".join(base + ([node.module] if node.module else []))]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if (len(parts) >= 4 and parts[:2] == ["tunetrack", "tracking"]
                    and parts[2] in ROOMS and package[:3] != parts[:3]):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
    return found


def test_search_and_rooms_import_tracking_only_through_doors():
    files = [*(ROOT / "search").rglob("*.py"), *(ROOT / "tracking").rglob("*.py")]
    assert ROOMS and files
    assert [hit for f in sorted(files) for hit in past_doors(f)] == []


def test_an_import_past_a_door_is_found(monkeypatch):
    bad = ROOT / "search" / "_door_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        "from tunetrack.tracking.store.uri import redact\n"
        "from ..tracking.runs.study import StudyTracker\n"))
    assert past_doors(bad) == ["search/_door_probe.py:1 tunetrack.tracking.store.uri",
                               "search/_door_probe.py:2 tunetrack.tracking.runs.study"]
