"""Static checks that keep the codebase honest: ruff, and the import rules (.importlinter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def test_ruff_clean() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "meshkit", "tests", "benchmarks", "operator"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers() -> None:
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_process_does_not_load_heavy_libraries() -> None:
    """Importing the sidecar entry point must not drag in pydantic or aiohttp (hot, small process)."""
    code = (
        "import sys, meshkit.proxy.main; "
        "bad = [m for m in ('pydantic', 'aiohttp', 'yaml', 'typer', 'rich') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"sidecar imports {result.stdout.strip()}"
