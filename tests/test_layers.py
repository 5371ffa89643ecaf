"""The parts depend only on the layer below them (domain/) and their own engine: no part
imports another part or the composition root (scrubin/). Read from the source with ast,
so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("imaging", "registration", "headset_bridge", "mentor", "slicer_link")
FIRST_PARTY = (*PARTS, "domain", "scrubin")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", [*PARTS, "domain"])
def test_a_part_imports_only_domain_and_itself(package: str) -> None:
    allowed = {package} if package == "domain" else {package, "domain"}
    bad = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in _imports(path)
        if name in FIRST_PARTY and name not in allowed
    }
    assert sorted(bad) == [], sorted(bad)
