"""An app's opaque TCP through its sidecar (proxy/tunnel.py): the mesh's ``tcp`` routes, real proxy.

Two plain TCP servers stand for tcp-echo v1 and v2 (each answers every line with its prefix, ``one`` or
``two``, as Istio's tcp-echo sample); the client is what ``nc tcp-echo 9000`` does in a pod with a
sidecar on the local mesh: ``CONNECT tcp-echo:9000`` to the sidecar, then raw bytes. The sidecar's
snapshot carries the ``tcp`` routes the compiler writes for ``mesh`` (a VirtualService with ``hosts:
[tcp-echo]`` and ``tcp: - match: - port: 9000``) and the default route of each Service port.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import EchoApp, StartProxy, cluster, endpoint, make_snapshot

FQDN = "tcp-echo.default.svc.cluster.local"
NAMES = ["tcp-echo", "tcp-echo.default", "tcp-echo.default.svc", FQDN]


@pytest.fixture
async def tcp_echo() -> AsyncIterator[dict[str, int]]:
    """tcp-echo v1 ("one") and v2 ("two"): each line comes back with the version's prefix."""
    servers, ports = [], {}
    for version, prefix in (("v1", b"one"), ("v2", b"two")):
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         prefix: bytes = prefix) -> None:
            while line := await reader.readline():
                writer.write(prefix + b" " + line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        ports[version] = server.sockets[0].getsockname()[1]
    yield ports
    for server in servers:
        server.close()


def _snapshot(echo: EchoApp, ports: dict[str, int], weights: tuple[int, int]) -> dict[str, Any]:
    doc = make_snapshot(echo.port)
    v1 = endpoint(ports["v1"], "tcp-echo-v1-0", "v1", "tcp-echo-v1")
    v2 = endpoint(ports["v2"], "tcp-echo-v2-0", "v2", "tcp-echo-v2")
    doc["clusters"].update({
        "tcp-echo.default|": cluster("tcp-echo", "", [v1, v2], port=9000, namespace="default"),
        "tcp-echo.default|v1": cluster("tcp-echo", "v1", [v1], port=9000, namespace="default"),
        "tcp-echo.default|v2": cluster("tcp-echo", "v2", [v2], port=9000, namespace="default"),
    })
    destinations = [{"host": FQDN, "port": 9000, "cluster": f"tcp-echo.default|{subset}", "weight": weight}
                    for subset, weight in zip(("v1", "v2"), weights, strict=True)]
    doc["tcp"] = {"routes": [
        {"name": "default/tcp-echo#tcp0", "hosts": NAMES, "port": 9000, "destinations": destinations},
        *({"name": f"{FQDN}:{port}", "hosts": NAMES, "port": port,
           "destinations": [{"host": FQDN, "port": port, "cluster": "tcp-echo.default|", "weight": 100}]}
          for port in (9000, 9001)),
    ]}
    return doc


def _nc(proxy_port: int, target: str, line: bytes = b"hello\n") -> str:
    """``nc`` through the sidecar: CONNECT, one line, half-close; what came back (or the error's name)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                return "no CONNECT answer"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError as exc:
            return type(exc).__name__
        return answer.decode()


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _logged(log: Path, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10  # each tunnel logs when it closes
    while len(await asyncio.to_thread(_lines, log)) < count and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polls a file: the proxy's sink writes it, no event to wait on
    return [json.loads(line) for line in await asyncio.to_thread(_lines, log)]


async def _opened(admin: int) -> dict[tuple[str, str, str], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode().split("\r\n\r\n", 1)[1]
    writer.close()
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "istio_tcp_connections_opened":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = (s.labels["destination_service"], s.labels["response_flags"], s.labels["reporter"])
                    found[key] = found.get(key, 0) + s.value
    return found


async def _destination_labels(admin: int) -> list[dict[str, str]]:
    """The ``destination_workload``.. ``destination_cluster`` labels of each opened series."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode().split("\r\n\r\n", 1)[1]
    writer.close()
    keys = ("destination_workload", "destination_workload_namespace", "destination_principal",
            "destination_app", "destination_version", "destination_canonical_service",
            "destination_canonical_revision", "destination_cluster")
    return [{k: s.labels.get(k, "absent") for k in keys} for f in text_string_to_metric_families(text)
            if f.name == "istio_tcp_connections_opened" for s in f.samples if s.name.endswith("_total")]


async def test_an_apps_tcp_goes_by_the_mesh_tcp_route_subset_and_logs_envoys_cluster(
        echo_app: EchoApp, tcp_echo: dict[str, int], start_proxy: StartProxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = await start_proxy(_snapshot(echo_app, tcp_echo, (100, 0)), "--access-log", str(log))
    port = proxy.ports["outbound"]
    for name in ("tcp-echo", FQDN):  # the short name (same namespace) and the FQDN take the route
        assert await asyncio.to_thread(_nc, port, f"{name}:9000") == "one hello\n"
    entries = await _logged(log, 2)
    assert [(e["upstream_cluster"], e["status"], e["method"], e["response_flags"], e["requested_server_name"],
             e["bytes_received"], e["bytes_sent"]) for e in entries] == [
        (f"outbound|9000|v1|{FQDN}", 0, None, "-", None, 6, 10)] * 2
    assert await _opened(proxy.ports["admin"]) == {(FQDN, "-", "source"): 2}
    # plaintext to the endpoint (no mTLS, so no metadata exchange): Istio's client-side fallback is the
    # endpoint's own metadata (workload, namespace, canonical names), no app, version or principal
    assert await _destination_labels(proxy.ports["admin"]) == [{
        "destination_workload": "tcp-echo-v1", "destination_workload_namespace": "default",
        "destination_principal": "unknown", "destination_app": "unknown", "destination_version": "unknown",
        "destination_canonical_service": "reviews", "destination_canonical_revision": "v1",
        "destination_cluster": "Kubernetes"}]


async def test_the_route_is_for_its_port_and_other_ports_take_the_service_default(
        echo_app: EchoApp, tcp_echo: dict[str, int], start_proxy: StartProxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = await start_proxy(_snapshot(echo_app, tcp_echo, (0, 100)), "--access-log", str(log))
    port = proxy.ports["outbound"]
    assert await asyncio.to_thread(_nc, port, "tcp-echo:9000") == "two hello\n"  # the route: v2 only
    assert await asyncio.to_thread(_nc, port, "tcp-echo:9001") in ("one hello\n", "two hello\n")
    entries = await _logged(log, 2)
    assert [e["upstream_cluster"] for e in entries] == [f"outbound|9000|v2|{FQDN}", f"outbound|9001||{FQDN}"]


async def test_weights_split_connections_between_subsets(
        echo_app: EchoApp, tcp_echo: dict[str, int], start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app, tcp_echo, (50, 50)))
    answers = [await asyncio.to_thread(_nc, proxy.ports["outbound"], "tcp-echo:9000") for _ in range(40)]
    assert set(answers) == {"one hello\n", "two hello\n"}  # all 40 on one side: p = 2**-39


async def test_a_port_the_service_does_not_declare_passes_through_under_allow_any_and_is_blackholed_otherwise(
        echo_app: EchoApp, tcp_echo: dict[str, int], start_proxy: StartProxy, tmp_path: Path) -> None:
    """``nc tcp-echo 9002`` (the Service lists 9000 and 9001): no listener of the sidecar takes it, so
    Istio sends it to PassthroughCluster, the original destination (here: where the name resolves on the
    local mesh, one of its instances), under ALLOW_ANY, and to BlackHoleCluster under REGISTRY_ONLY."""
    instances = {f"127.0.0.1:{p}" for p in tcp_echo.values()}
    for policy, answers, cluster_name, flags in (
            ("ALLOW_ANY", {"one hello\n", "two hello\n"}, "PassthroughCluster", "-"),
            ("REGISTRY_ONLY", {""}, "BlackHoleCluster", "UH")):
        log = tmp_path / f"{policy}.log"
        doc = _snapshot(echo_app, tcp_echo, (100, 0))
        doc["mesh"] = {"outbound_traffic_policy": policy}
        doc["egress"] = {"hosts": {}, "real_dns": False}
        proxy = await start_proxy(doc, "--access-log", str(log))
        for name in ("tcp-echo", FQDN):
            assert await asyncio.to_thread(_nc, proxy.ports["outbound"], f"{name}:9002") in answers, policy
        entries = await _logged(log, 2)
        assert [(e["upstream_cluster"], e["response_flags"], e["status"]) for e in entries] == [
            (cluster_name, flags, 0)] * 2, policy
        hosts = {e["upstream_host"] for e in entries}
        assert hosts <= instances if policy == "ALLOW_ANY" else hosts == {None}, (policy, hosts)
        # Istio's stats filter: no service for the cluster (TCP has no Host header), "unknown"
        assert await _opened(proxy.ports["admin"]) == {("unknown", flags, "source"): 2}, policy
        # no peer behind Passthrough/BlackHole: every destination workload label unknown
        assert await _destination_labels(proxy.ports["admin"]) == [{
            "destination_workload": "unknown", "destination_workload_namespace": "unknown",
            "destination_principal": "unknown", "destination_app": "unknown",
            "destination_version": "unknown", "destination_canonical_service": "unknown",
            "destination_canonical_revision": "latest",
            "destination_cluster": "unknown"}], policy
