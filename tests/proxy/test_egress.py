"""Hosts outside the mesh through the real sidecar: PassthroughCluster (ALLOW_ANY), BlackHoleCluster
(REGISTRY_ONLY), the stand-in host map, and a gateway that never passes through.

Every upstream here is an echo app on 127.0.0.1; a name with no stand-in is never connected to. As
in Istio, plain HTTP is judged as HTTP (PassthroughCluster, or 502 from BlackHoleCluster)
only on a port some Service declares for HTTP (the sidecar has an HTTP listener there:
``declared`` below); on any other port it is TCP (tests/proxy/test_egress_opaque.py).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.proxy.snapshot import Snapshot, SnapshotError
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot


def _snapshot(echo_port: int, policy: str | None, hosts: dict[str, str] | None = None,
              kind: str = "sidecar", declared: tuple[int, ...] = ()) -> dict[str, Any]:
    """``declared``: ports a Service declares for HTTP (a virtual host names them), so the sidecar has
    an HTTP listener on them."""
    snap = make_snapshot(echo_port)
    snap["outbound"]["virtual_hosts"][0]["domains"] += [f"declared:{port}" for port in declared]
    if policy is not None:
        snap["mesh"] = {"outbound_traffic_policy": policy}
    snap["egress"] = {"hosts": hosts or {}, "real_dns": False}
    snap["node"]["kind"] = kind
    return snap


async def _get(outbound: int, url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(url, proxy=f"http://127.0.0.1:{outbound}") as resp:
        return resp.status, await resp.text()


async def _requests_by_service(admin: int) -> dict[tuple[str, str, str], float]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{admin}/stats/prometheus") as resp:
        text = await resp.text()
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "istio_requests":
            continue
        for sample in family.samples:
            if sample.name == "istio_requests_total":
                labels = sample.labels
                key = (labels.get("destination_service_name", ""), labels.get("destination_service", ""),
                       labels["response_code"])
                found[key] = found.get(key, 0) + sample.value
    return found


async def test_allow_any_passes_an_unknown_host_through(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    # no policy: Istio's default ALLOW_ANY
    proxy = await start_proxy(_snapshot(echo_app.port, None, declared=(echo_app.port,)))
    status, body = await _get(proxy.ports["outbound"], f"http://127.0.0.1:{echo_app.port}/headers")
    assert status == 200
    assert '"path": "/headers"' in body
    metrics = await _requests_by_service(proxy.ports["admin"])
    assert metrics[("PassthroughCluster", f"127.0.0.1:{echo_app.port}", "200")] == 1


async def test_registry_only_answers_502_from_the_black_hole(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app.port, "REGISTRY_ONLY", declared=(echo_app.port,)))
    status, body = await _get(proxy.ports["outbound"], f"http://127.0.0.1:{echo_app.port}/headers")
    assert status == 502
    assert "BlackHoleCluster" in body
    metrics = await _requests_by_service(proxy.ports["admin"])
    assert metrics[("BlackHoleCluster", f"127.0.0.1:{echo_app.port}", "502")] == 1
    # a host the mesh knows is still routed
    status, _ = await _get(proxy.ports["outbound"], "http://reviews:9080/reviews/0")
    assert status == 200


async def test_a_name_goes_to_its_stand_in(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    hosts = {"httpbin.org:80": f"127.0.0.1:{echo_app.port}"}
    proxy = await start_proxy(_snapshot(echo_app.port, "ALLOW_ANY", hosts, declared=(8080,)))
    status, body = await _get(proxy.ports["outbound"], "http://httpbin.org/headers")
    assert status == 200
    assert '["host", "httpbin.org"]' in body  # the Host is the app's, unchanged
    # another port of the same name has no stand-in, and without real DNS nothing is tried
    status, body = await _get(proxy.ports["outbound"], "http://httpbin.org:8080/headers")
    assert status == 503
    assert "no stand-in" in body


async def test_a_gateway_never_passes_through(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app.port, "ALLOW_ANY", kind="gateway"))
    status, _ = await _get(proxy.ports["outbound"], f"http://127.0.0.1:{echo_app.port}/headers")
    assert status == 404


@pytest.mark.parametrize(("mesh", "egress", "where"), [
    ({"outbound_traffic_policy": "DENY"}, None, "mesh.outbound_traffic_policy"),
    (None, {"hosts": {"httpbin.org:80": 8080}, "real_dns": False}, "egress.hosts.httpbin.org:80"),
    (None, {"hosts": {}, "real_dns": "yes"}, "egress.real_dns"),
    (None, {"hosts": {"httpbin.org:x": "127.0.0.1:1"}}, "egress.hosts.httpbin.org:x"),
])
def test_bad_egress_settings_are_refused_by_key(mesh: Any, egress: Any, where: str) -> None:
    doc = make_snapshot(1)
    doc["mesh"], doc["egress"] = mesh, egress
    with pytest.raises(SnapshotError, match=f"^{where}"):
        Snapshot.from_json(doc)
