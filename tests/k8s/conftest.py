"""Fixtures shared by the Kubernetes tests: an HTTP session, and a control plane following KMock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.k8s.control_plane import RunningKubernetesControlPlane
from tests.k8s.cluster_harness import running_cluster
from tests.k8s.netns_pod import namespaces_fixture  # noqa: F401  (the ``namespaces`` fixture)


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


@pytest.fixture()
async def plane(kmock: Any, session: aiohttp.ClientSession,
                tmp_path: Path) -> AsyncIterator[RunningKubernetesControlPlane]:
    """KMock with the Istio kinds and a small Bookinfo, and a real control plane following it
    (`tests.k8s.cluster_harness.running_cluster`)."""
    async for running in running_cluster(kmock, session, tmp_path / "control"):
        yield running
