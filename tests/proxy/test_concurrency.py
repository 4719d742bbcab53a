"""``--concurrency N``: worker processes sharing the sidecar's ports (real processes, real sockets).

Default 1 forks nothing. With 2: ``/ready`` waits for every worker, both processes serve requests
(per-process counters in ``/stats``), ``/stats`` and ``/stats/prometheus`` sum them, both append
whole lines to the access log, a new snapshot (SIGHUP-reloaded file) reaches the connections of
both, a certificate rotation (real control plane and CA) reaches both, killing the first process
leaves no worker behind, and a worker that dies stops the sidecar with a message naming it (exit 1:
as Envoy, whose process ends when a worker dies).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.server import run_control_plane
from meshkit.proxy import stats_merge
from tests.pids import alive
from tests.proxy.conftest import EchoApp, ProxyProcess, make_snapshot, simple_route, spawn_proxy, stop_process
from tests.waiting import async_wait_until, wait_until

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CONNECTIONS = 24  # spread over 2 processes by the kernel (SO_REUSEPORT hashes each 4-tuple)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _ready(port: int) -> bool:
    try:
        return _get(port, "/ready")[0] == 200
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


class KeepAlive:
    """One HTTP/1.1 keep-alive connection to a port: the same TCP connection for every request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, host: str, path: str = "/x") -> tuple[int, dict[str, Any]]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        pairs = (line.partition(":") for line in lines[1:] if line)
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 10)
        return int(lines[0].split()[1]), json.loads(body) if body.startswith(b"{") else {}

    async def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def apps() -> AsyncIterator[tuple[EchoApp, EchoApp]]:
    v1, v2 = EchoApp("echo-v1"), EchoApp("echo-v2")
    await v1.start()
    await v2.start()
    yield v1, v2
    await v1.stop()
    await v2.stop()


def _start(tmp_path: Path, snapshot: dict[str, Any], *extra: str) -> ProxyProcess:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot))
    proxy = spawn_proxy(["--config", str(path), *extra], tmp_path)
    wait_until(lambda: _ready(proxy.admin), 20, "the sidecar to be ready")
    return proxy


def test_default_concurrency_forks_no_worker(apps: tuple[EchoApp, EchoApp], tmp_path: Path) -> None:
    proxy = _start(tmp_path, make_snapshot(apps[0].port))
    try:
        assert "workers" not in proxy.ports
        assert _children(proxy.proc.pid) == []
        status, body = _get(proxy.admin, "/memory")
        assert status == 200
        memory = json.loads(body)
        assert memory["concurrency"] == 1 and memory["processes"][0]["pid"] == proxy.proc.pid
        assert memory["processes"][0]["rss_bytes"] > 0
        assert "workers" not in json.loads(_get(proxy.admin, "/stats")[1])
    finally:
        assert stop_process(proxy) == 0


async def test_both_processes_serve_and_the_admin_sums_them(
    apps: tuple[EchoApp, EchoApp], tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    proxy = _start(tmp_path, make_snapshot(apps[0].port), "--concurrency", "2",
                   "--access-log", str(access_log))
    try:
        workers = proxy.ports["workers"]
        assert len(workers) == 1 and workers[0] != proxy.proc.pid
        assert _children(proxy.proc.pid) == workers
        for _ in range(CONNECTIONS):  # one request per connection: each lands on one process
            conn = await KeepAlive.open(proxy.outbound)
            status, echo = await conn.get("reviews:9080")
            assert (status, echo["app"]) == (200, "echo-v1")
            await conn.close()
        stats = json.loads(_get(proxy.admin, "/stats")[1])
        per_process = {w["pid"]: w["listeners"]["outbound"]["downstream_rq_total"] for w in stats["workers"]}
        assert set(per_process) == {proxy.proc.pid, workers[0]}
        assert all(count > 0 for count in per_process.values()), per_process
        assert sum(per_process.values()) == CONNECTIONS
        # both processes append to the one access log: a whole line per request
        wait_until(lambda: len(access_log.read_text().splitlines()) == CONNECTIONS, 20,
                   "every access-log line")
        lines = [json.loads(line) for line in access_log.read_text().splitlines()]
        assert len({line["request_id"] for line in lines}) == CONNECTIONS
        assert stats["listeners"]["outbound"]["downstream_rq_total"] == CONNECTIONS
        assert stats["upstream"]["rq_total"] == CONNECTIONS
        text = _get(proxy.admin, "/stats/prometheus")[1]
        served = [line for line in text.splitlines() if line.startswith("istio_requests_total{")]
        assert len(served) == 1 and served[0].endswith(f" {CONNECTIONS}"), served
        assert text.count("# TYPE istio_requests_total counter") == 1
        memory = json.loads(_get(proxy.admin, "/memory")[1])
        assert [p["pid"] for p in memory["processes"]] == [proxy.proc.pid, workers[0]]
        assert all(p["rss_bytes"] > 0 and p["pss_bytes"] > 0 for p in memory["processes"])
        assert memory["pss_bytes"] == sum(p["pss_bytes"] for p in memory["processes"])
    finally:
        assert stop_process(proxy) == 0
    assert not alive(workers[0])


async def test_a_new_snapshot_reaches_the_connections_of_every_process(
    apps: tuple[EchoApp, EchoApp], tmp_path: Path
) -> None:
    v1, v2 = apps
    proxy = _start(tmp_path, make_snapshot(v1.port, v2.port, routes=[simple_route("reviews|v1")]),
                   "--concurrency", "2")
    conns = [await KeepAlive.open(proxy.outbound) for _ in range(CONNECTIONS)]
    try:
        for conn in conns:
            assert (await conn.get("reviews:9080"))[1]["app"] == "echo-v1"
        stats = json.loads(_get(proxy.admin, "/stats")[1])
        assert all(w["listeners"]["outbound"]["downstream_cx_total"] > 0 for w in stats["workers"]), stats
        new = make_snapshot(v1.port, v2.port, routes=[simple_route("reviews|v2")], version="v-2")
        (tmp_path / "snapshot.json").write_text(json.dumps(new))
        proxy.signal(signal.SIGHUP)  # the first process reloads, and hands the snapshot to its worker
        wait_until(lambda: json.loads(_get(proxy.admin, "/config_dump")[1])["version"] == "v-2", 20,
                   "the first process to apply v-2")
        wait_until(lambda: _ready(proxy.admin), 20, "every worker to apply v-2")
        for conn in conns:  # the same connections, on both processes: all follow the new route
            assert (await conn.get("reviews:9080"))[1]["app"] == "echo-v2"
        seqs = {w["snapshot_seq"] for w in json.loads(_get(proxy.admin, "/stats")[1])["workers"]}
        assert seqs == {2}
    finally:
        for conn in conns:
            await conn.close()
        assert stop_process(proxy) == 0


def test_ready_waits_for_every_worker_to_apply_the_snapshot(
    apps: tuple[EchoApp, EchoApp], tmp_path: Path
) -> None:
    """A stopped worker (SIGSTOP) cannot apply a new snapshot: /ready says which, until it does."""
    v1, v2 = apps
    proxy = _start(tmp_path, make_snapshot(v1.port, v2.port), "--concurrency", "2")
    (worker,) = proxy.ports["workers"]
    os.kill(worker, signal.SIGSTOP)
    try:
        (tmp_path / "snapshot.json").write_text(json.dumps(make_snapshot(v1.port, v2.port, version="v-2")))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: json.loads(_get(proxy.admin, "/config_dump")[1])["version"] == "v-2", 20,
                   "the first process to apply v-2")
        status, text = _get(proxy.admin, "/ready")
        assert (status, text) == (503, f"not ready: worker 1 (pid {worker}) has not applied the current "
                                       "snapshot yet\n")
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: _ready(proxy.admin), 20, "the worker to catch up")
    assert stop_process(proxy) == 0


def test_killing_the_first_process_leaves_no_worker(apps: tuple[EchoApp, EchoApp], tmp_path: Path) -> None:
    proxy = _start(tmp_path, make_snapshot(apps[0].port), "--concurrency", "3")
    workers = proxy.ports["workers"]
    assert len(workers) == 2 and all(alive(pid) for pid in workers)
    proxy.proc.kill()  # SIGKILL: no chance to stop its workers
    proxy.proc.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in workers), 20, "the workers to exit on their pipe's EOF")


def test_a_dead_worker_stops_the_sidecar_and_says_which(
    apps: tuple[EchoApp, EchoApp], tmp_path: Path
) -> None:
    proxy = _start(tmp_path, make_snapshot(apps[0].port), "--concurrency", "3")
    workers = proxy.ports["workers"]
    os.kill(workers[0], signal.SIGKILL)
    assert proxy.proc.wait(20) == 1
    error = proxy.stderr.read_text()
    assert f"worker 1 (pid {workers[0]}) was killed by signal 9" in error, error
    wait_until(lambda: not alive(workers[1]), 20, "the other worker to be stopped")


async def test_a_certificate_rotation_reaches_every_worker(
    apps: tuple[EchoApp, EchoApp], tmp_path: Path
) -> None:
    """A real control plane and CA: one CSR per rotation (the first process's), and the inbound
    connections of both processes present the new certificate after ``POST /certs/rotate``."""
    running = await run_control_plane(port=0, state_dir=tmp_path / "control", with_ca=True)
    identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    proxy = None
    try:
        async with aiohttp.ClientSession(headers=running.admin_headers) as session:
            doc = {"instance": "productpage-v1-0", "workload": "productpage-v1", "service": "productpage",
                   "namespace": "default", "address": "127.0.0.1", "port": apps[0].port,
                   "labels": {"app": "productpage", "version": "v1"},
                   "service_account": "bookinfo-productpage", "has_sidecar": True}
            async with session.post(f"{running.url}/api/v1/registry/services",
                                    json={"name": "productpage", "namespace": "default", "port": 9080}) as r:
                assert r.status == 200, await r.text()
            async with session.post(f"{running.url}/api/v1/registry/endpoints", json=doc) as r:
                assert r.status == 200, await r.text()
        token = running.control_plane.tokens.issue_token(identity)
        os.environ["MESHKIT_CA_TOKEN"] = token
        try:
            proxy = spawn_proxy(["--control", running.url, "--id", "productpage-v1-0.default",
                                 "--concurrency", "2"], tmp_path)
        finally:
            del os.environ["MESHKIT_CA_TOKEN"]
        await async_wait_until(lambda: _ready(proxy.admin), 30, "the sidecar and its worker to be ready")
        first = json.loads(_get(proxy.admin, "/certs")[1])["chain"][0]["serial"]
        assert await _presented(proxy.inbound) == {first}
        rotate = f"http://127.0.0.1:{proxy.admin}/certs/rotate"
        async with aiohttp.ClientSession() as session, session.post(rotate) as resp:  # the CA is on this loop
            answer = await resp.json()
            assert resp.status == 200, answer
        new = answer["new"]["serial"]
        assert new != first
        await async_wait_until(lambda: _ready(proxy.admin), 30, "the worker to install the new certificate")
        assert await _presented(proxy.inbound) == {new}
        certs = json.loads(_get(proxy.admin, "/certs")[1])
        assert certs["certificates_issued"] == 2  # one CSR per rotation, not one per process
        seqs = {w["certificate_seq"] for w in json.loads(_get(proxy.admin, "/stats")[1])["workers"]}
        assert seqs == {2}
    finally:
        if proxy is not None:
            assert stop_process(proxy) == 0
        await running.close()


async def _presented(port: int) -> set[str]:
    """The serials the inbound port presents to ``CONNECTIONS`` new TLS connections (both processes)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    serials = set()
    for _ in range(CONNECTIONS):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        serials.add(_serial(der))
    return serials


def _serial(der: bytes) -> str:
    from cryptography import x509  # noqa: PLC0415 - the test process may; the sidecar never does

    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def test_prometheus_texts_are_summed_by_series() -> None:
    one = ("# HELP c Requests.\n# TYPE c counter\nc{a=\"1\"} 2\nc{a=\"2\"} 1\n"
           "# TYPE h histogram\nh_bucket{le=\"5\"} 1\nh_sum 2.5\nh_count 1\n"
           "# TYPE t gauge\nx_timestamp_seconds 10.5\n")
    two = ("# HELP c Requests.\n# TYPE c counter\nc{a=\"1\"} 3\nc{a=\"3\"} 4\nh_sum 0.25\n"
           "x_timestamp_seconds 12.25\n")
    merged = stats_merge.prometheus([one, two]).splitlines()
    assert merged == ["# HELP c Requests.", "# TYPE c counter", 'c{a="1"} 5', 'c{a="2"} 1',
                      "# TYPE h histogram", 'h_bucket{le="5"} 1', "h_sum 2.75", "h_count 1",
                      "# TYPE t gauge", "x_timestamp_seconds 12.25", 'c{a="3"} 4']


def test_stats_documents_are_summed_key_by_key() -> None:
    merged = stats_merge.documents([{"a": 1, "b": {"c": 2.5, "d": "x"}, "e": None},
                                    {"a": 2, "b": {"c": 0.5, "d": "y", "f": 1}, "e": None}])
    assert merged == {"a": 3, "b": {"c": 3.0, "d": "x", "f": 1}, "e": None}
