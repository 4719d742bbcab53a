"""The forward path through the real sidecar: outbound (Host and absolute-form), inbound, two hops."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.waiting import async_wait_until


def _headers(info: dict) -> dict[str, str]:
    return {k: v for k, v in info["headers"]}


async def test_origin_form_is_routed_on_host(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/reviews/0?x=1"
        async with session.get(url, headers={"Host": "reviews:9080"}) as resp:
            assert resp.status == 200
            info = await resp.json()
    assert info["path"] == "/reviews/0?x=1"
    seen = _headers(info)
    assert seen["host"] == "reviews:9080"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert len(seen["x-request-id"]) == 36
    assert seen["x-meshkit-source"] == (
        "productpage-v1;default;productpage;v1;spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    )


async def test_absolute_form_explicit_proxy(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    async with aiohttp.ClientSession() as session:
        proxy_url = f"http://127.0.0.1:{proxy.ports['outbound']}"
        async with session.get("http://reviews:9080/ratings?a=b", proxy=proxy_url) as resp:
            assert resp.status == 200
            info = await resp.json()
    assert info["path"] == "/ratings?a=b"
    assert _headers(info)["host"] == "reviews:9080"
    # Hop-by-hop proxy headers never reach the app.
    assert "proxy-connection" not in _headers(info)


async def test_inbound_forwards_to_local_app_and_strips_source_headers(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.ports['inbound']}/details"
        headers = {"x-meshkit-source": "ratings-v1;default;ratings;v1;-", "Host": "productpage:9080"}
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            info = await resp.json()
    assert info["path"] == "/details"
    assert not [k for k, _ in info["headers"] if k.startswith("x-meshkit-")]


async def test_two_sidecars_in_a_row(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    """outbound of A -> inbound of B -> app: the mesh path every request takes."""
    b = await start_proxy(make_snapshot(echo_app.port, app_port=echo_app.port))
    a = await start_proxy(make_snapshot(b.ports["inbound"]))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{a.ports['outbound']}/reviews/1"
        for _ in range(3):
            async with session.get(url, headers={"Host": "reviews"}) as resp:
                assert resp.status == 200
                info = await resp.json()
    assert info["app"] == "echo-v1"
    xff = _headers(info)["x-forwarded-for"]
    assert xff == "127.0.0.1, 127.0.0.1"  # appended by each hop
    text = b.metrics.render()
    # Plaintext hop: the destination trusts nothing the caller sent about itself (issue 15).
    assert 'reporter="destination",source_workload="unknown"' in text
    destination_side = text.split('reporter="destination"', 1)[1]
    assert "productpage-v1" not in destination_side.split(",destination_workload", 1)[0]


async def test_keep_alive_reuses_upstream_connections(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/x"
        for _ in range(25):
            async with session.get(url, headers={"Host": "reviews"}) as resp:
                assert resp.status == 200
                await resp.read()
    assert proxy.upstream.cx_total == 1
    assert proxy.listeners["outbound"].stats.downstream_cx_total == 1
    assert proxy.listeners["outbound"].stats.downstream_rq_total == 25


async def test_bodies_both_directions(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    base = f"http://127.0.0.1:{proxy.ports['outbound']}"
    small = b"hello world"
    big = os.urandom(3 * 1024 * 1024 + 17)

    async def chunks():
        for i in range(0, len(big), 100_000):
            yield big[i:i + 100_000]

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/echo", data=small, headers={"Host": "reviews"}) as resp:
            info = await resp.json()
            assert info["body_len"] == len(small)
        # A big Content-Length body (streamed through, never buffered whole).
        async with session.put(f"{base}/echo", data=big, headers={"Host": "reviews"}) as resp:
            info = await resp.json()
            assert info["body_len"] == len(big)
            assert info["body_sha"] == hashlib.sha256(big).hexdigest()
        # A chunked request body.
        async with session.post(f"{base}/echo", data=chunks(), headers={"Host": "reviews"}) as resp:
            info = await resp.json()
            assert info["body_sha"] == hashlib.sha256(big).hexdigest()
        # A large Content-Length response and a chunked one.
        async with session.get(f"{base}/bytes/2000000", headers={"Host": "reviews"}) as resp:
            assert resp.headers["Content-Length"] == "2000000"
            assert len(await resp.read()) == 2_000_000
        async with session.get(f"{base}/stream/300", headers={"Host": "reviews"}) as resp:
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            data = await resp.read()
            assert len(data) == 300 * 1024
            assert data[:5] == b"00000" and data[-1024:-1019] == b"00299"
    assert proxy.upstream.cx_active >= 1


async def test_client_gone_mid_request_is_dc_and_frees_the_upstream(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    writer.write(b"GET /slow/600 HTTP/1.1\r\nHost: reviews\r\n\r\n")
    await writer.drain()
    await async_wait_until(lambda: proxy.upstream.cx_active >= 1, 10, "the request to reach the upstream")
    # A reset (not a FIN: a half-closed client still gets its answer).
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await async_wait_until(lambda: 'response_code="0",response_flags="DC"' in proxy.metrics.render(), 10,
                           "the DC request in the metrics")
    assert proxy.upstream.cx_active == 0  # the half-used upstream connection was discarded
    del reader


async def test_many_concurrent_clients(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_snapshot(echo_app.port))
    url = f"http://127.0.0.1:{proxy.ports['outbound']}/c"
    statuses: list[int] = []

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(10):
                async with session.post(url, data=b"p" * 100, headers={"Host": "reviews"}) as resp:
                    await resp.read()
                    statuses.append(resp.status)

    await asyncio.gather(*(client() for _ in range(60)))
    assert statuses == [200] * 600
    assert proxy.upstream.cx_total <= 60  # pooled: at most one upstream connection per concurrent request
    assert proxy.listeners["outbound"].stats.downstream_rq_active == 0


async def test_inbound_enforces_authorization_policies(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    snapshot = make_snapshot(echo_app.port)
    snapshot["inbound"]["authz"] = {
        "deny": [{"name": "default/no-admin", "rules": [{"to": [{"paths": ["/admin*"]}]}]}],
        "allow": [],
        "audit": [],
    }
    proxy = await start_proxy(snapshot)
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{proxy.ports['inbound']}"
        async with session.get(f"{base}/admin/users", headers={"Host": "productpage"}) as resp:
            assert resp.status == 403 and await resp.text() == "RBAC: access denied"
        async with session.get(f"{base}/public", headers={"Host": "productpage"}) as resp:
            assert resp.status == 200
    assert 'reporter="destination"' in proxy.metrics.render()
    assert 'response_code="403"' in proxy.metrics.render()


async def test_upstream_service_time_header(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    """Envoy's router adds x-envoy-upstream-service-time (ms from the request to the response head)."""
    proxy = await start_proxy(make_snapshot(echo_app.port))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/slow/200"
        async with session.get(url, headers={"Host": "reviews"}) as resp:
            assert resp.status == 200
            values = resp.headers.getall("x-envoy-upstream-service-time")
    assert len(values) == 1 and values[0].isdigit() and int(values[0]) >= 200


async def test_client_closing_mid_request_cancels_the_call_as_dc(
    echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path
) -> None:
    """A normal close (FIN) mid-request: the upstream call is cancelled, logged code 0 flag DC,
    and the circuit-breaker slot it held is released (issue 13)."""
    snapshot = make_snapshot(echo_app.port)
    pool = {"max_connections": 1, "http1_max_pending_requests": 1}
    snapshot["clusters"]["reviews|"]["connection_pool"] = pool
    log = tmp_path / "access.log"
    proxy = await start_proxy(snapshot, "--access-log", str(log))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["outbound"])
    writer.write(b"GET /slow/5000 HTTP/1.1\r\nHost: reviews\r\n\r\n")
    await writer.drain()
    traffic = proxy.state.current.clusters["reviews|"].traffic
    await _poll(lambda: traffic.rq_active == 1)  # the slow call holds the only slot
    writer.close()  # FIN, as curl does when interrupted
    await _poll(lambda: 'response_code="0",response_flags="DC"' in proxy.metrics.render())
    assert traffic.rq_active == 0 and not traffic.pending
    await _poll(lambda: proxy.upstream.cx_active == 0)  # the half-used upstream connection was dropped
    await _poll(lambda: log.exists() and '"status":0' in log.read_text())
    (line,) = [json.loads(raw) for raw in log.read_text().splitlines()]
    assert (line["status"], line["response_flags"], line["path"]) == (0, "DC", "/slow/5000")
    del reader


async def _poll(condition: Callable[[], bool], wait: float = 10.0) -> None:
    deadline = time.monotonic() + wait
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


async def test_the_ingress_answers_as_istio_envoy(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    """Istio's gateways overwrite `server` with "istio-envoy" (local replies too); sidecars pass the app's."""
    gateway = make_snapshot(echo_app.port)
    gateway["node"].update(kind="gateway", service=None, workload="istio-ingressgateway")
    ingress = await start_proxy(gateway)
    sidecar = await start_proxy(make_snapshot(echo_app.port))
    async with aiohttp.ClientSession() as session:
        front = f"http://127.0.0.1:{ingress.ports['outbound']}/x"
        for host, status in (("reviews", 200), ("nowhere.example", 404)):
            async with session.get(front, headers={"Host": host}) as resp:
                assert resp.status == status
                assert resp.headers.getall("server") == ["istio-envoy"]
        side = f"http://127.0.0.1:{sidecar.ports['outbound']}/x"
        async with session.get(side, headers={"Host": "reviews"}) as resp:
            assert "aiohttp" in resp.headers["server"]
