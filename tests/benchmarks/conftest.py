"""Makes the benchmark harness (benchmarks/proxybench, not an installed package) importable here,
and gives the load generators' tests a local origin server."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from tests.benchmarks.origin import Origin  # noqa: E402


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    found = Origin()
    server = await asyncio.start_server(found.serve, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()
