"""Opaque TCP through the mesh with mutual TLS: a gateway's TCP listener (``--tcp-port``, routes by weight)
to a sidecar whose Service port is TCP (``inbound.protocol: "tcp"``), which relays the bytes to its app.

Real proxies in this process with certificates from a real CA (``--tls-dir``), two real TCP echo apps
(``one`` and ``two``), real sockets: what Istio's "TCP Traffic Shifting" task needs, checked at the
layer where PeerAuthentication applies (STRICT refuses plaintext TCP too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.main import Proxy, parse_args
from tests.security.test_e2e_static_tls import snapshot, write_tls_dir

GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
ECHO = "spiffe://cluster.local/ns/default/sa/default"


@pytest.fixture
async def echo_apps() -> AsyncIterator[dict[str, int]]:
    servers, ports = [], {}
    for prefix in ("one", "two"):
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        name: str = prefix) -> None:
            while line := await reader.readline():
                writer.write(f"{name} ".encode() + line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        ports[prefix] = server.sockets[0].getsockname()[1]
    yield ports
    for server in servers:
        server.close()


async def _proxy(tmp_path: Path, doc: dict[str, Any], tls_dir: Path, *extra: str) -> Proxy:
    path = tmp_path / f"{doc['node']['instance']}.json"
    path.write_text(json.dumps(doc))
    proxy = Proxy(parse_args(["--config", str(path), "--outbound-port", "0", "--inbound-port", "0",
                              "--admin-port", "0", "--drain-seconds", "0.2", "--tls-dir", str(tls_dir),
                              *extra]))
    await proxy.start()
    return proxy


def _echo_sidecar(name: str, app_port: int) -> dict[str, Any]:
    doc = snapshot("tcp-echo", ECHO, app_port)
    doc["node"].update(instance=f"tcp-echo-{name}-0", workload=f"tcp-echo-{name}", version=name,
                       id=f"tcp-echo-{name}-0.default")
    doc["inbound"]["protocol"] = "tcp"
    doc["version"] = f"echo-{name}"
    return doc


def _gateway(echo_ports: dict[str, int], weights: dict[str, int]) -> dict[str, Any]:
    doc = snapshot("gateway", GATEWAY, 1)
    doc["node"].update(kind="gateway", namespace="istio-system", labels={"istio": "ingressgateway"})
    doc["inbound"]["app"] = None
    for subset, port in echo_ports.items():
        doc["clusters"][f"tcp-echo.default|{subset}"] = {
            "service": "tcp-echo", "namespace": "default", "subset": subset, "port": 9000,
            "lb": "ROUND_ROBIN",
            "endpoints": [{"address": "127.0.0.1", "port": port, "instance": f"tcp-echo-{subset}-0",
                           "workload": f"tcp-echo-{subset}", "version": subset, "labels": {"app": "tcp-echo"},
                           "identity": ECHO, "has_sidecar": True, "healthy": True}],
            "connection_pool": None, "outlier_detection": None,
            "tls": {"mode": "ISTIO_MUTUAL", "server_identities": []},
        }
    doc["tcp"] = {"routes": [{"name": "default/tcp-echo#tcp0", "port": 31400, "destinations": [
        {"host": "tcp-echo.default.svc.cluster.local", "port": 9000, "cluster": f"tcp-echo.default|{s}",
         "weight": w} for s, w in weights.items()]}]}
    return doc


async def _say(port: int, line: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line.encode() + b"\n")
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            answer = await reader.readline()
    finally:
        writer.close()
    return answer.decode().strip()


async def test_a_gateway_shifts_tcp_by_weight_over_mutual_tls(tmp_path: Path,
                                                              echo_apps: dict[str, int]) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    sidecars = [await _proxy(tmp_path, _echo_sidecar(name, port), write_tls_dir(ca, ECHO, tmp_path / name))
                for name, port in echo_apps.items()]
    inbound = {name: proxy.ports["inbound"] for name, proxy in zip(echo_apps, sidecars, strict=True)}
    gateway = await _proxy(tmp_path, _gateway(inbound, {"one": 80, "two": 20}),
                           write_tls_dir(ca, GATEWAY, tmp_path / "gw"), "--kind", "gateway",
                           "--tcp-port", "0")
    try:
        answers = [await _say(gateway.ports["tcp"], f"hello {i}") for i in range(40)]
        assert all(a.endswith(f"hello {i}") for i, a in enumerate(answers)), answers
        ones = sum(a.startswith("one ") for a in answers)
        assert 20 <= ones <= 39 and ones + sum(a.startswith("two ") for a in answers) == 40, answers
        # the sidecar saw mutual TLS from the gateway's identity (its TCP metrics, reporter destination)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecars[0].ports["admin"])
        writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = (await reader.read()).decode()
        writer.close()
        assert 'istio_tcp_connections_opened_total{reporter="destination"' in text
        assert f'source_principal="{GATEWAY}"' in text and 'connection_security_policy="mutual_tls"' in text
        # STRICT refuses plaintext TCP at the sidecar, as it refuses plaintext HTTP
        reader, writer = await asyncio.open_connection("127.0.0.1", inbound["one"])
        writer.write(b"plaintext\n")
        try:
            refused = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            refused = b""
        assert refused == b""  # closed (or reset) without an echo
        writer.close()
    finally:
        for proxy in (gateway, *sidecars):
            await proxy.stop()


async def test_a_client_that_half_closes_at_once_still_gets_its_answer_over_mutual_tls(
        tmp_path: Path, echo_apps: dict[str, int]) -> None:
    """``echo x | nc HOST PORT``: the client sends and half-closes before the answer; TLS between the
    proxies cannot pass the half-close on, so the gateway keeps the connection until the upstream has
    answered (and gone quiet), then closes: the answer arrives, then the end of the stream."""
    ca = CertificateAuthority.open(tmp_path / "ca")
    sidecar = await _proxy(tmp_path, _echo_sidecar("one", echo_apps["one"]),
                           write_tls_dir(ca, ECHO, tmp_path / "one"))
    gateway = await _proxy(tmp_path, _gateway({"one": sidecar.ports["inbound"]}, {"one": 100}),
                           write_tls_dir(ca, GATEWAY, tmp_path / "gw"), "--kind", "gateway",
                           "--tcp-port", "0")
    try:
        for i in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["tcp"])
            writer.write(f"hello {i}\n".encode())
            writer.write_eof()
            async with asyncio.timeout(10):
                answer = await reader.read()  # everything until the gateway closes
            writer.close()
            assert answer == f"one hello {i}\n".encode(), answer
    finally:
        for proxy in (gateway, sidecar):
            await proxy.stop()


async def test_a_tcp_gateway_behind_proxy_protocol_reads_the_header_first(
        tmp_path: Path, echo_apps: dict[str, int]) -> None:
    """gatewayTopology.proxyProtocol: the gateway's TCP listener takes the PROXY header off each
    connection before routing it (its source is the log's downstream address); no header: closed."""
    ca = CertificateAuthority.open(tmp_path / "ca")
    sidecar = await _proxy(tmp_path, _echo_sidecar("one", echo_apps["one"]),
                           write_tls_dir(ca, ECHO, tmp_path / "one"))
    doc = _gateway({"one": sidecar.ports["inbound"]}, {"one": 100})
    doc.setdefault("mesh", {})["proxy_protocol"] = True
    log = tmp_path / "gateway-access.log"
    gateway = await _proxy(tmp_path, doc, write_tls_dir(ca, GATEWAY, tmp_path / "gw"), "--kind", "gateway",
                           "--tcp-port", "0", "--access-log", str(log))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["tcp"])
        writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 31400\r\nhello\n")
        writer.write_eof()
        async with asyncio.timeout(10):
            assert await reader.read() == b"one hello\n"
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["tcp"])
        writer.write(b"hello\n")  # no header
        async with asyncio.timeout(10):
            try:
                refused = await reader.read()
            except ConnectionResetError:
                refused = b""
        assert refused == b""
        writer.close()
        async with asyncio.timeout(10):
            while not (await asyncio.to_thread(_read_text, log)).strip():  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # polls a file: the proxy's sink writes it, no event to wait on
        entry = json.loads((await asyncio.to_thread(_read_text, log)).splitlines()[0])
        assert entry["downstream_remote_address"] == "203.0.113.7:51234", entry
    finally:
        for proxy in (gateway, sidecar):
            await proxy.stop()


def _read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_an_opaque_tcp_app_that_refuses_is_uf_in_the_sidecars_destination_metrics(
        tmp_path: Path) -> None:
    """The tcp-echo sidecar cannot reach its app (killed): Envoy's inbound tcp_proxy flags UF, and
    Istio's destination-side TCP series carry it (opened and closed), not "-"."""
    with socket.socket() as probe:  # a port nobody listens on: the app is gone
        probe.bind(("127.0.0.1", 0))
        gone = probe.getsockname()[1]
    ca = CertificateAuthority.open(tmp_path / "ca")
    sidecar = await _proxy(tmp_path, _echo_sidecar("one", gone), write_tls_dir(ca, ECHO, tmp_path / "one"))
    gateway = await _proxy(tmp_path, _gateway({"one": sidecar.ports["inbound"]}, {"one": 100}),
                           write_tls_dir(ca, GATEWAY, tmp_path / "gw"), "--kind", "gateway",
                           "--tcp-port", "0")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["tcp"])
        writer.write(b"hello\n")
        writer.write_eof()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""  # closed without an answer
        writer.close()
        text = ""
        async with asyncio.timeout(10):
            while "istio_tcp_connections_closed_total" not in text:
                reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["admin"])
                writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                text = (await reader.read()).decode()
                writer.close()
        names = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total")
        series = [line for line in text.splitlines() if line.startswith(names)]
        assert len(series) == 2 and all('reporter="destination"' in s and 'response_flags="UF"' in s
                                        and s.endswith(" 1") for s in series), series
    finally:
        for proxy in (gateway, sidecar):
            await proxy.stop()


async def test_the_callers_tcp_metrics_carry_the_mutual_tls_peers_workload_labels(
        tmp_path: Path, echo_apps: dict[str, int]) -> None:
    """Istio's metadata exchange gives the client side of an mTLS TCP connection its peer's workload,
    app, version, principal and canonical names; the caller's series (reporter source) carry them."""
    ca = CertificateAuthority.open(tmp_path / "ca")
    sidecar = await _proxy(tmp_path, _echo_sidecar("one", echo_apps["one"]),
                           write_tls_dir(ca, ECHO, tmp_path / "one"))
    gateway = await _proxy(tmp_path, _gateway({"one": sidecar.ports["inbound"]}, {"one": 100}),
                           write_tls_dir(ca, GATEWAY, tmp_path / "gw"), "--kind", "gateway",
                           "--tcp-port", "0")
    try:
        assert await _say(gateway.ports["tcp"], "hello") == "one hello"
        wanted = {"destination_workload": "tcp-echo-one", "destination_workload_namespace": "default",
                  "destination_principal": ECHO, "destination_app": "tcp-echo", "destination_version": "one",
                  "destination_service": "tcp-echo.default.svc.cluster.local",
                  "destination_canonical_service": "tcp-echo", "destination_canonical_revision": "one",
                  "destination_service_name": "tcp-echo", "destination_service_namespace": "default",
                  "destination_cluster": "Kubernetes"}
        found: list[dict[str, str]] = []
        async with asyncio.timeout(10):
            while not found:  # the series is written once the connection's outcome is known
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["admin"])
                writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                text = (await reader.read()).decode().split("\r\n\r\n", 1)[1]
                writer.close()
                found = [dict(s.labels) for f in text_string_to_metric_families(text)
                         if f.name == "istio_tcp_connections_opened" for s in f.samples
                         if s.name.endswith("_total") and s.labels.get("reporter") == "source"]
        [labels] = found
        assert {k: labels.get(k) for k in wanted} == wanted, labels
        # in Istio's order: the destination_* labels between the source_* ones and request_protocol
        names = list(labels)
        assert names.index("source_cluster") < names.index("destination_workload") \
            < names.index("destination_cluster") < names.index("request_protocol"), names
    finally:
        for proxy in (gateway, sidecar):
            await proxy.stop()
