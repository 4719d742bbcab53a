"""Settings for every test: parallel pytest workers pick mesh port plans from their own slice."""

from __future__ import annotations

import os

import pytest

from meshkit.runtime.ports import SLICE_ENV


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker (and every meshkit process it starts) keeps to its own slice
    of the port range: a mesh checks its spare blocks free at start but fills them only later, so
    two workers choosing at random could otherwise pick overlapping plans."""
    worker = getattr(config, "workerinput", None)
    if worker is not None and int(worker.get("workercount", 1)) > 1:
        os.environ[SLICE_ENV] = f"{int(worker['workerid'].removeprefix('gw'))}/{worker['workercount']}"
