"""The layers of pyproject.toml's import-linter contracts hold: dependencies point inward,
and the console reaches the engine only through the Dispatcher. Running them here puts them
in the README's test command, so CI fails on a new outward import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
# In a process of its own: import-linter reconfigures logging (dictConfig) and sys.path.
LINT = (
    "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
)


def test_the_import_contracts_are_kept() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
