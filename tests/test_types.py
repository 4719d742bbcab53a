"""mypy over meshkit, as configured in pyproject.toml ([tool.mypy]): strict for the sidecar
(meshkit/proxy) and the config model (meshkit/config), mypy's standard checks for the rest.

Like ruff and import-linter in test_lint.py, it runs inside the tests. Its cache is ``.mypy_cache``
in the repository (git ignores it): the first run on a fresh clone checks everything, later runs
only what changed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout, result.stdout
