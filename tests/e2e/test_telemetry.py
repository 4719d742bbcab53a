"""The control plane's telemetry against known load: what `meshkit top` and the labs chart is true.

A fresh Bookinfo mesh gets `LoadGenerator` traffic at a known rate through the ingress; the
``/api/v1/telemetry`` answer must show that rate on the ingress -> productpage edge (within 10%)
and, once the load stopped, exactly the number of requests sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.runtime.load import LoadGenerator
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.traffic import eventually

RPS = 20.0
SECONDS = 10.0
WINDOW = 5.0
INGRESS = "istio-ingressgateway"


@pytest.fixture(scope="module")
def fresh_bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("telemetry"), ["bookinfo"]) as mesh:
        yield mesh


def _edges(mesh: RunningMesh, window: float, source: str) -> list[dict[str, Any]]:
    answer = mesh.client.request("GET", "telemetry", query={"window": window, "source": source})
    edges: list[dict[str, Any]] = answer["edges"]
    return edges


def _rate(edges: list[dict[str, Any]], service: str) -> float:
    return sum(e["rps"] for e in edges if e["destination_service"] == service)


async def test_edge_rates_match_the_load_sent(fresh_bookinfo: RunningMesh) -> None:
    mesh = fresh_bookinfo
    gen = LoadGenerator(f"{mesh.ingress}/productpage", rps=RPS, duration=SECONDS)
    run = asyncio.ensure_future(gen.run())
    await asyncio.sleep(SECONDS - 2.0)  # a full window of steady load, well before the end
    ingress_edges = _edges(mesh, WINDOW, INGRESS)
    productpage_edges = _edges(mesh, WINDOW, "productpage-v1")
    summary = await run
    seen = _rate(ingress_edges, "productpage")
    print(f"telemetry over {WINDOW:.0f}s at {RPS:.0f} rps sent: ingress->productpage {seen:.2f} rps, "
          f"productpage->reviews {_rate(productpage_edges, 'reviews'):.2f}, "
          f"->details {_rate(productpage_edges, 'details'):.2f}; load summary {summary}")
    assert summary["completed"] == summary["sent"] >= 0.95 * RPS * SECONDS
    assert summary["codes"] == {"200": summary["sent"]}
    assert abs(seen - RPS) <= 0.1 * RPS
    # Each page calls details once and reviews once: the same rate one hop further.
    assert abs(_rate(productpage_edges, "reviews") - RPS) <= 0.1 * RPS
    assert abs(_rate(productpage_edges, "details") - RPS) <= 0.1 * RPS
    edge = next(e for e in ingress_edges if e["destination_service"] == "productpage")
    assert edge["error_rate"] == 0.0 and edge["codes"] == {"200": edge["requests"]}
    assert edge["latency_ms"]["p50"] is not None

    # After the load, a window covering the whole run counts exactly what was sent.
    def total() -> int:
        edges = _edges(mesh, 120.0, INGRESS)
        return sum(e["requests"] for e in edges if e["destination_service"] == "productpage")

    assert await eventually(total, lambda n: n == summary["sent"]) == summary["sent"]
