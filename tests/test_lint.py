"""The code stays lint-clean (ruff) and type-checks (mypy), both configured in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def _tool(name: str) -> list[str]:
    found = shutil.which(name, path=str(ROOT / ".venv" / "bin")) or shutil.which(name)
    return [found] if found else [sys.executable, "-m", name]


def test_ruff_finds_nothing() -> None:
    done = subprocess.run([*_tool("ruff"), "check", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_functions() -> None:
    done = subprocess.run([*_tool("mypy"), "--no-incremental"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
