"""Istio's httpbin tasks on the real local mesh: Mirroring (v1 serves, v2 gets a shadow copy)
and Circuit Breaking (one connection, one pending request: the rest overflow with 503 UO).

The mesh runs the `httpbin` app set (v1 and v2) and the `clients` set (`sleep` in the mesh);
requests leave from sleep's sidecar, like `kubectl exec sleep -- curl http://httpbin:8000/...`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mesh import RunningMesh, sample, start_mesh
from tests.e2e.traffic import codes, eventually, flagged, get_many, get_one, istio_requests, pods

MIRRORING = sample("httpbin-mirroring.yaml")
CIRCUIT_BREAKER = sample("httpbin-circuit-breaker.yaml")
OVERFLOW = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
REQUESTS = 20


@pytest.fixture(scope="module")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("httpbin"), ["httpbin", "clients"]) as mesh:
        yield mesh


def _access_log(mesh: RunningMesh, instance: str) -> list[dict[str, Any]]:
    path = Path(mesh.home) / "logs" / f"{instance}.access.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_mirrored_requests_reach_v2_as_shadow_while_callers_see_v1(httpbin: RunningMesh) -> None:
    sleep = httpbin.workload("sleep-v1-0")
    v1, v2 = httpbin.workload("httpbin-v1-0"), httpbin.workload("httpbin-v2-0")
    inbound = {"reporter": "destination", "destination_service_name": "httpbin"}
    before_v1 = istio_requests(v1["admin_port"], **inbound)
    before_v2 = istio_requests(v2["admin_port"], **inbound)
    logged_v1 = len(_access_log(httpbin, "httpbin-v1-0"))
    logged_v2 = len(_access_log(httpbin, "httpbin-v2-0"))
    with httpbin.rules(*MIRRORING):
        replies = await get_many("http://httpbin:8000/headers", REQUESTS, proxy=sleep["outbound_proxy"])
        # The sleep app itself, calling through its sidecar: the same answer, from v1.
        fetched = await get_one(f"http://127.0.0.1:{sleep['app_port']}/fetch?url=http://httpbin:8000/get")
        assert fetched.status == 200
        report = fetched.json()
        assert report["status"] == 200 and report["json"]["podname"] == "httpbin-v1-0", report
        sent = REQUESTS + 1
        # Shadows run in the background: wait (bounded) for them to land.
        await eventually(lambda: istio_requests(v2["admin_port"], **inbound) - before_v2, lambda n: n >= sent)
    assert codes(replies) == {200: REQUESTS}
    assert pods(replies) == {"httpbin-v1-0": REQUESTS}
    assert all(r.json()["headers"].get("Host", r.json()["headers"].get("host")) == "httpbin:8000"
               for r in replies)
    assert istio_requests(v1["admin_port"], **inbound) - before_v1 == sent
    assert istio_requests(v2["admin_port"], **inbound) - before_v2 == sent
    shadows = [e for e in _access_log(httpbin, "httpbin-v2-0")[logged_v2:] if e["direction"] == "inbound"]
    assert len(shadows) == sent
    assert {e["authority"] for e in shadows} == {"httpbin-shadow:8000"}
    assert all(e["status"] == 200 for e in shadows)
    primaries = [e for e in _access_log(httpbin, "httpbin-v1-0")[logged_v1:] if e["direction"] == "inbound"]
    assert {e["authority"] for e in primaries} == {"httpbin:8000"}


async def test_without_the_rule_v2_serves_callers_too(httpbin: RunningMesh) -> None:
    # The control: with only the default subsets, both versions answer callers directly.
    sleep = httpbin.workload("sleep-v1-0")
    replies = await get_many("http://httpbin:8000/get", 40, proxy=sleep["outbound_proxy"])
    assert codes(replies) == {200: 40}
    assert set(pods(replies)) == {"httpbin-v1-0", "httpbin-v2-0"}


async def test_circuit_breaker_lets_one_connection_and_one_pending_through(httpbin: RunningMesh) -> None:
    sleep = httpbin.workload("sleep-v1-0")
    labels = {"reporter": "source", "destination_service_name": "httpbin", "response_code": "503"}
    before = flagged(sleep["admin_port"], "UO", **labels)
    with httpbin.rules(*CIRCUIT_BREAKER):
        # Eight callers at once on a 1 s answer: one is served, one waits, the others overflow.
        replies = await get_many("http://httpbin:8000/delay/1", 8, proxy=sleep["outbound_proxy"],
                                 concurrency=8)
        after = flagged(sleep["admin_port"], "UO", **labels)
    seen = codes(replies)
    print(f"circuit breaking: 8 concurrent calls -> {dict(seen)}")
    assert set(seen) == {200, 503} and seen[200] >= 1 and seen[503] >= 4, seen
    assert all(r.body == OVERFLOW for r in replies if r.status == 503)
    assert after - before == seen[503]
    # Without the DestinationRule's limits the same burst is served in full.
    again = await get_many("http://httpbin:8000/delay/1", 8, proxy=sleep["outbound_proxy"], concurrency=8)
    assert codes(again) == {200: 8}
