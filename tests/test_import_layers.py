"""Imports run one way inside care_core.features, care_core.model, care_core.regions and care_core.train (no module imports one that
imports it back, directly or through others of its package), at module level or inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "care_core"


def _imports(package: str) -> dict[str, set[str]]:
    """{module: modules of the same package it imports} for care_core.<package>."""
    folder = ROOT / package
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in names:
        found = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["care_core", package]:
                    targets = parts[2:3] or [a.name for a in node.names]  # `from care_core.features import x`
                    found |= {t for t in targets if t in names}
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = visit(nxt, path + [nxt])
            if found:
                return found
        return []

    return next((c for start in sorted(graph) if (c := visit(start, [start]))), [])


@pytest.mark.parametrize("package", ["features", "model", "regions", "train"])
def test_no_import_circle(package):
    assert _cycle(_imports(package)) == []


def test_the_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_grid_geometry_imports_no_torch():
    """Data workers compute sub-regions and candidates ahead: care_core.model.subregions is numpy only."""
    import subprocess
    import sys

    code = "import sys, care_core.model.subregions; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
