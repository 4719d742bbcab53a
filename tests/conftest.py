"""Settings for every test: parallel pytest workers pick mesh port plans from their own slice, and
the slowest files are handed out first."""

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


# The files that take longest (seconds on one worker, full CI run of 8 Dec 2026, 2 cores), run
# first: `./dev test` keeps each file whole on one worker (--dist loadfile) and hands files out in
# collection order (--no-loadscope-reorder; xdist's default puts the files with the most tests
# first, which left these few-test, minute-long files for the end of the run, one worker busy with
# them while the other had finished). Longest first, the last files a worker takes are short ones.
SLOWEST_FILES = (
    "tests/labs/test_browser_learner.py",  # 343
    "tests/labs/test_notebooks.py",  # 389, then the learner editions' runs moved to the browser test
    "tests/e2e/test_tcp_traffic_shifting_mesh.py",  # 91
    "tests/labs/test_browser.py",  # 78
    "tests/labs/test_incidents.py",  # 56
    "tests/e2e/test_mtls_migration.py",  # 54
    "tests/e2e/test_egress_gateway_tls_origination.py",  # 44
    "tests/labs/test_catalog_checks.py",  # 40
    "tests/e2e/test_egress_network_policy.py",  # 39
    "tests/e2e/test_egress_gateway_tls_origination_api.py",  # 37
)
# then the rest of these directories (end-to-end files start a mesh each), then everything else
SLOW_DIRECTORIES = ("tests/labs/", "tests/e2e/", "tests/console/", "tests/benchmarks/", "tests/k8s/")


def _file_rank(path: str) -> tuple[int, int]:
    if path in SLOWEST_FILES:
        return 0, SLOWEST_FILES.index(path)
    slow = [index for index, directory in enumerate(SLOW_DIRECTORIES) if path.startswith(directory)]
    return (1, slow[0]) if slow else (2, 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest files first (see `SLOWEST_FILES`); a file's tests keep their order."""
    items.sort(key=lambda item: _file_rank(item.nodeid.partition("::")[0]))
