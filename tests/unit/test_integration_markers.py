"""Every integration test module carries ``pytestmark = pytest.mark.integration``, so that
``pytest -m "not integration"`` runs the unit tests alone and never starts a server."""

from __future__ import annotations

import ast
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


def _marks_integration(module: ast.Module) -> bool:
    for node in module.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.integration" for mark in marks)
    return False


def test_every_integration_module_is_marked() -> None:
    modules = sorted(INTEGRATION.glob("test_*.py"))
    assert modules
    unmarked = [p.name for p in modules if not _marks_integration(ast.parse(p.read_text()))]
    assert unmarked == []
