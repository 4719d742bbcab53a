"""Plain HTTP to a port no Service declares, through the real sidecar: Istio's sidecar has no HTTP listener
there, so the connection takes the virtual outbound listener's passthrough filter chain as TCP.

ALLOW_ANY: ``PassthroughCluster``, the request's bytes carried unchanged to the original destination
and the answer back (the app gets its answer; the sidecar reports Istio's TCP metrics and Envoy's
TCP access-log line, no ``istio_requests_total``). REGISTRY_ONLY: ``BlackHoleCluster``, the
connection closed with no answer (curl's "Empty reply from server"), flag ``UH``. A port some Service
declares for HTTP keeps the HTTP behaviour (tests/proxy/test_egress.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.proxy.listener import _origin_form
from tests.proxy.conftest import EchoApp, StartProxy
from tests.proxy.test_egress import _snapshot


async def _metrics(admin: int) -> dict[str, list[dict[str, str]]]:
    """The sidecar's ``istio_requests_total`` and ``istio_tcp_connections_opened_total`` samples."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{admin}/stats/prometheus") as resp:
        text = await resp.text()
    found: dict[str, list[dict[str, str]]] = {"istio_requests_total": [],
                                              "istio_tcp_connections_opened_total": []}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name].append({**sample.labels, "value": str(int(sample.value))})
    return found


async def _raw_get(outbound: int, url: str) -> bytes:
    """An app's GET through its sidecar as HTTP_PROXY (absolute URI), everything the sidecar sends back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", outbound)
    host = url.split("://", 1)[1].split("/", 1)[0]
    writer.write(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _logged(log: Path, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10  # a tunnel logs when it closes
    lines: list[str] = []
    while asyncio.get_running_loop().time() < deadline:
        lines = await asyncio.to_thread(_lines, log)
        if len(lines) >= count:
            break
        await asyncio.sleep(0.02)  # polls a file the proxy's sink writes: no event to wait on
    return [json.loads(line) for line in lines]


async def test_allow_any_carries_the_request_as_tcp_to_the_original_destination(
        echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = await start_proxy(_snapshot(echo_app.port, "ALLOW_ANY"), "--access-log", str(log))
    answer = await _raw_get(proxy.ports["outbound"], f"http://127.0.0.1:{echo_app.port}/headers")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert b'"path": "/headers"' in body, answer
    assert b"x-envoy-upstream-service-time" not in head.lower()  # the sidecar never parsed the answer
    [entry] = await _logged(log, 1)
    assert (entry["upstream_cluster"], entry["response_flags"], entry["method"], entry["status"]) == (
        "PassthroughCluster", "-", None, 0), entry
    assert entry["upstream_host"] == f"127.0.0.1:{echo_app.port}" and entry["bytes_received"] > 0, entry
    metrics = await _metrics(proxy.ports["admin"])
    assert metrics["istio_requests_total"] == [], metrics
    [opened] = metrics["istio_tcp_connections_opened_total"]
    assert (opened["destination_service_name"], opened["response_flags"], opened["value"]) == (
        "PassthroughCluster", "-", "1"), opened


async def test_registry_only_closes_the_connection_from_the_black_hole(
        echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = await start_proxy(_snapshot(echo_app.port, "REGISTRY_ONLY"), "--access-log", str(log))
    answer = await _raw_get(proxy.ports["outbound"], f"http://127.0.0.1:{echo_app.port}/headers")
    assert answer == b""  # curl: (52) Empty reply from server
    [entry] = await _logged(log, 1)
    assert (entry["upstream_cluster"], entry["response_flags"], entry["upstream_host"]) == (
        "BlackHoleCluster", "UH", None), entry
    metrics = await _metrics(proxy.ports["admin"])
    assert metrics["istio_requests_total"] == [], metrics
    [opened] = metrics["istio_tcp_connections_opened_total"]
    assert (opened["destination_service_name"], opened["destination_service"], opened["response_flags"]) == (
        "BlackHoleCluster", "unknown", "UH"), opened
    # the mesh's own HTTP port is still HTTP, and routed
    answer = await _raw_get(proxy.ports["outbound"], "http://reviews:9080/reviews/0")
    assert answer.startswith(b"HTTP/1.1 200"), answer


async def test_a_name_with_no_stand_in_on_an_undeclared_port_is_closed_not_answered(
        echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    stand_in = {"httpbin.org:80": f"127.0.0.1:{echo_app.port}"}
    proxy = await start_proxy(_snapshot(echo_app.port, "ALLOW_ANY", stand_in), "--access-log", str(log))
    assert await _raw_get(proxy.ports["outbound"], "http://httpbin.org:8080/headers") == b""
    [entry] = await _logged(log, 1)
    assert (entry["upstream_cluster"], entry["response_flags"]) == ("PassthroughCluster", "DF"), entry
    # a Host without a port stays HTTP: its stand-in answers
    answer = await _raw_get(proxy.ports["outbound"], "http://httpbin.org/headers")
    assert answer.startswith(b"HTTP/1.1 200"), answer


@pytest.mark.parametrize(("sent", "carried"), [
    (b"GET http://tcp-echo:9002/ HTTP/1.1\r\nHost: tcp-echo:9002\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: tcp-echo:9002\r\n\r\n"),
    (b"POST http://reviews:9999/a/b?c=1 HTTP/1.1\r\nHost: reviews:9999\r\n\r\nbody",
     b"POST /a/b?c=1 HTTP/1.1\r\nHost: reviews:9999\r\n\r\nbody"),
    (b"GET http://reviews:9999?c=1 HTTP/1.1\r\n\r\n", b"GET /?c=1 HTTP/1.1\r\n\r\n"),
    (b"GET /already HTTP/1.1\r\nHost: x:1\r\n\r\n", b"GET /already HTTP/1.1\r\nHost: x:1\r\n\r\n"),
])
def test_the_destination_gets_the_origin_form_as_iptables_delivers_it(sent: bytes, carried: bytes) -> None:
    assert _origin_form(bytearray(sent)) == carried
