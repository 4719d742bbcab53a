"""Admin pages of a real sidecar process: readiness, config dump, clusters, stats, Prometheus text."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from meshkit.proxy.http import Headers, Request
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot, spawn_proxy, stop_process
from tests.waiting import async_wait_until


def _in_flight(admin: int) -> bool:
    return bool(json.loads(_get(admin, "/stats")[1])["listeners"]["outbound"]["downstream_rq_active"])


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_admin_pages_of_a_process(echo_app: EchoApp, tmp_path) -> None:
    snapshot = make_snapshot(echo_app.port, version="admin-1")
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snapshot))
    proxy = spawn_proxy(["--config", str(path)], tmp_path)
    try:
        assert _get(proxy.admin, "/ready") == (200, "LIVE\n")
        assert _get(proxy.admin, "/healthz/ready")[0] == 200
        status, body = _get(proxy.admin, "/config_dump")
        dump = json.loads(body)
        assert status == 200 and dump["version"] == "admin-1" and dump["snapshot"] == snapshot
        assert dump["last_nack"] is None
        # Traffic through the outbound listener (runs in a thread: the echo app lives on this loop).
        results = await asyncio.gather(
            *(asyncio.to_thread(_get, proxy.outbound, "/r", {"Host": "reviews"}) for _ in range(5))
        )
        assert all(status == 200 for status, _ in results)
        status, body = _get(proxy.admin, "/clusters")
        clusters = json.loads(body)
        assert status == 200 and "reviews|v1" in clusters and "inbound|9080||" in clusters
        stats = json.loads(_get(proxy.admin, "/stats")[1])
        assert stats["listeners"]["outbound"]["downstream_rq_total"] == 5
        assert stats["listeners"]["outbound"]["downstream_rq_2xx"] == 5
        assert stats["upstream"]["rq_total"] == 5
        status, text = _get(proxy.admin, "/stats/prometheus")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        total = families["istio_requests"]
        samples = [s for s in total.samples if s.name == "istio_requests_total"]
        assert sum(s.value for s in samples) == 5
        labels = samples[0].labels
        assert labels["reporter"] == "source"
        assert labels["source_workload"] == "productpage-v1"
        assert labels["destination_service"] == "reviews.default.svc.cluster.local"
        assert labels["destination_version"] == "v1"
        assert labels["response_code"] == "200" and labels["response_flags"] == "-"
        duration = families["istio_request_duration_milliseconds"]
        count = [s for s in duration.samples if s.name.endswith("_count")]
        assert sum(s.value for s in count) == 5
        assert _get(proxy.admin, "/nope")[0] == 404
    finally:
        assert stop_process(proxy) == 0


async def test_not_ready_without_a_snapshot(tmp_path) -> None:
    # Dynamic mode against a control plane that is not there: serves 503 and /ready says so.
    proxy = spawn_proxy(["--control", "http://127.0.0.1:9", "--id", "x-0.default"], tmp_path)
    try:
        assert _get(proxy.admin, "/ready")[0] == 503
        status, body = _get(proxy.outbound, "/", {"Host": "reviews"})
        assert status == 503 and "no configuration" in body
    finally:
        assert stop_process(proxy) == 0


async def test_sigterm_drains_in_flight_requests(echo_app: EchoApp, tmp_path) -> None:
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(make_snapshot(echo_app.port)))
    proxy = spawn_proxy(["--config", str(path), "--drain-seconds", "5"], tmp_path)
    try:
        request = asyncio.to_thread(_get, proxy.outbound, "/slow/700", {"Host": "reviews"})
        slow = asyncio.ensure_future(request)
        await async_wait_until(lambda: _in_flight(proxy.admin), 10, "the slow request to be in flight")
        proxy.signal(signal.SIGTERM)
        status, body = await asyncio.wait_for(slow, 10)
        assert status == 200 and json.loads(body)["path"] == "/slow/700"
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        stop_process(proxy)


async def test_certs_rotate_is_refused_to_callers_off_loopback(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    """On Kubernetes the admin port listens on 0.0.0.0: POST /certs/rotate is for the pod itself.

    The real sidecar's admin handler, with the caller address its listener would have taken
    from the socket (this machine's tests only send traffic to 127.0.0.0/8)."""
    proxy = await start_proxy(make_snapshot(echo_app.port))

    async def rotate(caller: str) -> tuple[int, bytes]:
        request = Request(
            "POST", "/certs/rotate", "pod:15000", Headers(), direction="admin", downstream_addr=caller
        )
        response = await proxy.admin.handle(request)
        assert isinstance(response.body, bytes)
        return response.status, response.body

    for outsider in ("10.244.0.7", "::ffff:10.0.0.1", "fe80::1", ""):
        status, body = await rotate(outsider)
        assert status == 403 and b"answered only on 127.0.0.1" in body, (outsider, body)
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        status, body = await rotate(local)
        assert status == 409 and b"without mTLS" in body, (local, body)  # past the guard
    # Over a real socket from 127.0.0.1 too, and reads stay open to everyone.
    assert (await asyncio.to_thread(_get, proxy.ports["admin"], "/certs"))[0] == 200
    status, body = await asyncio.to_thread(_post, proxy.ports["admin"], "/certs/rotate")
    assert status == 409
    status, _ = await rotate_get(proxy)
    assert status == 405


async def rotate_get(proxy: Any) -> tuple[int, bytes]:
    request = Request(
        "GET", "/certs/rotate", "pod:15000", Headers(), direction="admin", downstream_addr="127.0.0.1"
    )
    response = await proxy.admin.handle(request)
    return response.status, response.body  # type: ignore[return-value]


def _post(port: int, path: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST", data=b"")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
