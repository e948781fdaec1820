"""Dependencies point inward (STYLE.md): the core never imports the console, and the console
reaches the dispatcher only through its public surface (the Dispatcher, values, errors, auth
and the app-state keys), never stores, sinks, pools or the engine's internals."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
CONSOLE_MAY_USE = {
    "dispatcher",
    "dispatcher.auth",
    "dispatcher.dispatcher",
    "dispatcher.errors",
    "dispatcher.message",
    "dispatcher.state",
    "dispatcher.timefmt",
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_app_edge_imports_the_console() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "dispatcher").rglob("*.py"))
        if path.name != "app.py" and any(m.split(".")[0] == "console" for m in imports(path))
    ]
    assert offenders == []


def test_the_console_uses_only_the_public_surface() -> None:
    used = {
        (str(path.relative_to(ROOT)), module)
        for path in sorted((ROOT / "console").rglob("*.py"))
        for module in imports(path)
        if module.split(".")[0] == "dispatcher"
    }
    assert used, "the console should use the dispatcher"
    assert {(p, m) for p, m in used if m not in CONSOLE_MAY_USE} == set()
