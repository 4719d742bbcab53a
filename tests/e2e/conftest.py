"""Fixtures for the end-to-end tests: a real local mesh (LocalMesh) per test module.

Every mesh gets its own state dir under pytest's tmp dir and a port base whose whole port
plan is free (checked with `busy_ports`), below the kernel's ephemeral range so no client
socket of another test can take one of its ports. Rules a test applies are undone when the
test ends (see `RunningMesh.rules`), and the mesh is always stopped, even on failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.mesh import RunningMesh, start_mesh


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """Bookinfo with its default DestinationRules, shared by the tests of one module."""
    with start_mesh(tmp_path_factory.mktemp("bookinfo"), ["bookinfo"]) as mesh:
        yield mesh
