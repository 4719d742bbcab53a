"""Fixtures for the sidecar core tests: a real echo app, snapshots, and the proxy in-process or as a process.

``echo_app`` is an aiohttp server on 127.0.0.1 that reports what it received (method, path,
headers, body size) and can answer with a status, a size, a chunked stream or a delay.
``start_proxy(snapshot)`` runs the real sidecar (``meshkit.proxy.main.Proxy``) on the test's
event loop with port 0 everywhere; ``proxy_process(snapshot)`` runs ``python -m meshkit.proxy``
as a subprocess and reads its ports file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meshkit.proxy.main import Proxy, parse_args

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = web.AppKey("name", str)


async def _echo(request: web.Request) -> web.StreamResponse:
    path = request.path
    body = await request.read()
    if path.startswith("/status/"):
        code = int(path.split("/")[2])
        return web.Response(status=code, text=f"status {code}")
    if path.startswith("/bytes/"):
        size = int(path.split("/")[2])
        return web.Response(body=b"x" * size, content_type="application/octet-stream")
    if path.startswith("/stream/"):
        chunks = int(path.split("/")[2])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(chunks):
            await response.write(b"%05d" % i + b"y" * 1019)
        await response.write_eof()
        return response
    if path.startswith("/slow/"):
        await asyncio.sleep(int(path.split("/")[2]) / 1000)
    if path.startswith("/nocontent"):
        return web.Response(status=204)
    info = {
        "method": request.method,
        "path": request.path_qs,
        "headers": [[k.lower(), v] for k, v in request.headers.items()],
        "body_len": len(body),
        "body_sha": hashlib.sha256(body).hexdigest(),
        "app": request.app[APP_NAME],
    }
    return web.json_response(info, headers={"x-app": request.app[APP_NAME]})


class EchoApp:
    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app[APP_NAME] = self.name
        app.router.add_route("*", "/{tail:.*}", _echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def echo_app() -> AsyncIterator[EchoApp]:
    app = EchoApp("echo-v1")
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def echo_v2() -> AsyncIterator[EchoApp]:
    app = EchoApp("echo-v2")
    await app.start()
    yield app
    await app.stop()


def endpoint(port: int, instance: str, version: str, workload: str = "") -> dict[str, Any]:
    return {
        "address": "127.0.0.1",
        "port": port,
        "instance": instance,
        "workload": workload or f"reviews-{version}",
        "version": version,
        "labels": {"app": "reviews", "version": version},
        "identity": "spiffe://cluster.local/ns/default/sa/reviews",
        "has_sidecar": False,
        "healthy": True,
    }


def cluster(service: str, subset: str, endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "service": service,
        "subset": subset,
        "port": 9080,
        "lb": "ROUND_ROBIN",
        "endpoints": endpoints,
        "connection_pool": None,
        "outlier_detection": None,
        "tls": None,
        **extra,
    }


def vhost(service: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": f"{service}.default.svc.cluster.local:9080",
        "service": service,
        "domains": [service, f"{service}:9080", f"{service}.default.svc.cluster.local"],
        "port": 9080,
        "routes": routes,
    }


def simple_route(cluster_name: str, **extra: Any) -> dict[str, Any]:
    return {"name": "default", "match": [], "route": [{"cluster": cluster_name, "weight": 100}], **extra}


def make_snapshot(
    v1_port: int,
    v2_port: int | None = None,
    routes: list[dict[str, Any]] | None = None,
    version: str = "v-1",
    app_port: int | None = None,
) -> dict[str, Any]:
    """A productpage sidecar calling 'reviews' (v1, optionally v2); inbound app = ``app_port``."""
    clusters = {
        "reviews|": cluster("reviews", "", [endpoint(v1_port, "reviews-v1-0", "v1")]),
        "reviews|v1": cluster("reviews", "v1", [endpoint(v1_port, "reviews-v1-0", "v1")]),
    }
    if v2_port is not None:
        clusters["reviews|v2"] = cluster("reviews", "v2", [endpoint(v2_port, "reviews-v2-0", "v2")])
        clusters["reviews|"]["endpoints"].append(endpoint(v2_port, "reviews-v2-0", "v2"))
    return {
        "schema": 1,
        "version": version,
        "revision": 1,
        "node": {
            "id": "productpage-v1-0.default",
            "workload": "productpage-v1",
            "instance": "productpage-v1-0",
            "namespace": "default",
            "service": "productpage",
            "version": "v1",
            "labels": {"app": "productpage", "version": "v1"},
            "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            "kind": "sidecar",
        },
        "outbound": {"virtual_hosts": [vhost("reviews", routes or [simple_route("reviews|")])]},
        "clusters": clusters,
        "inbound": {
            "app": {"address": "127.0.0.1", "port": app_port or v1_port},
            "service_port": 9080,
            "mtls": {"mode": "PERMISSIVE", "port_level": {}},
            "authz": {"deny": [], "allow": [], "audit": []},
            "rate_limit": None,
        },
        "trust": None,
    }


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start the real sidecar in this process on ports 0; stopped at teardown."""
    started: list[Proxy] = []

    async def start(snapshot: dict[str, Any], *extra: str) -> Proxy:
        path = tmp_path / f"snapshot-{len(started)}.json"
        path.write_text(json.dumps(snapshot))
        args = parse_args(
            ["--config", str(path), "--outbound-port", "0", "--inbound-port", "0", "--admin-port", "0",
             "--drain-seconds", "0.5", *extra]
        )
        proxy = Proxy(args)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


class ProxyProcess:
    def __init__(self, proc: subprocess.Popen[bytes], ports: dict[str, int], stderr: Path) -> None:
        self.proc = proc
        self.ports = ports
        self.stderr = stderr

    @property
    def outbound(self) -> int:
        return self.ports["outbound"]

    @property
    def inbound(self) -> int:
        return self.ports["inbound"]

    @property
    def admin(self) -> int:
        return self.ports["admin"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def spawn_proxy(args: list[str], workdir: Path, wait_ports: bool = True) -> ProxyProcess:
    ports_file = workdir / f"ports-{time.monotonic_ns()}.json"
    stderr = workdir / f"proxy-{time.monotonic_ns()}.err"
    cmd = [sys.executable, "-m", "meshkit.proxy", "--outbound-port", "0", "--inbound-port", "0",
           "--admin-port", "0", "--ports-file", str(ports_file), *args]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    while wait_ports and not ports_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"proxy did not start: {stderr.read_text()}")
        time.sleep(0.02)
    ports = json.loads(ports_file.read_text()) if wait_ports else {}
    return ProxyProcess(proc, ports, stderr)


def stop_process(proxy: ProxyProcess) -> int:
    if proxy.proc.poll() is None:
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            proxy.proc.wait(10)
        except subprocess.TimeoutExpired:
            proxy.proc.kill()
            proxy.proc.wait(5)
    return proxy.proc.returncode


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Run ``python -m meshkit.proxy --config <snapshot>`` as a real process; killed at teardown."""
    procs: list[ProxyProcess] = []

    def start(snapshot: dict[str, Any] | None = None, *extra: str) -> ProxyProcess:
        args = list(extra)
        if snapshot is not None:
            path = tmp_path / f"snapshot-{len(procs)}.json"
            path.write_text(json.dumps(snapshot))
            args = ["--config", str(path), *args]
        proxy = spawn_proxy(args, tmp_path)
        procs.append(proxy)
        return proxy

    yield start
    for proxy in procs:
        with contextlib.suppress(Exception):
            stop_process(proxy)


async def raw_exchange(port: int, data: bytes, wait: float = 5.0, until_close: bool = False) -> bytes:
    """Send raw bytes, read what comes back (until close, or until one response seems complete)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not until_close and _looks_complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _looks_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n")


def env_no_proxy() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(key, None)
    return env
