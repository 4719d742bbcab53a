"""TLS the sidecar carries without opening it (proxy/tunnel.py), through the real proxy.

Two TLS servers on 127.0.0.1 stand for ``a.example.com`` and ``b.example.com`` (certificates from a CA
of the test's own); the client is Python's own HTTPS through the sidecar as its proxy (``CONNECT``,
what curl and the apps do) or, for a gateway, raw TLS on its listener. Each server names itself in its
answer, so where the SNI went is seen, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.proxy.snapshot import Snapshot, SnapshotError
from meshkit.proxy.sni import NEED_MORE, client_hello_sni
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot

HOSTS = ("a.example.com", "b.example.com")


def _client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (Python's ssl), as the proxy sees it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_sni_of_a_real_client_hello() -> None:
    hello = _client_hello("Edition.CNN.com")
    assert client_hello_sni(hello) == "edition.cnn.com"
    assert client_hello_sni(hello[:3]) is NEED_MORE
    assert client_hello_sni(hello[:-1]) is NEED_MORE  # the record is not complete yet
    assert client_hello_sni(_client_hello(None)) is None  # no server name sent
    assert client_hello_sni(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert client_hello_sni(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is None  # not a ClientHello
    garbage = hello[:5] + bytes(len(hello) - 5)  # a record of zeros: no crash, no name
    assert client_hello_sni(garbage) is None


@pytest.mark.parametrize(("section", "message"), [
    ({"routes": [{"sni_hosts": [], "destinations": []}]}, "tls.routes[0].sni_hosts"),
    ({"routes": [{"sni_hosts": ["a"], "port": 0, "destinations": [{}]}]}, "tls.routes[0].port"),
    ({"routes": [{"sni_hosts": ["a"], "destinations": [{"host": "a", "port": "x"}]}]},
     "tls.routes[0].destinations[0].port"),
    ({"hosts": ["a:notaport"]}, "tls.hosts[0]"),
])
def test_a_malformed_tls_section_is_refused_naming_the_key(section: dict[str, Any], message: str) -> None:
    doc = make_snapshot(1)
    doc["tls"] = section
    with pytest.raises(SnapshotError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Snapshot.from_json(doc)


class TlsServers:
    def __init__(self, ca_pem: str, ports: dict[str, int]) -> None:
        self.ca_pem = ca_pem
        self.ports = ports


@pytest.fixture
async def tls_servers(tmp_path: Path) -> AsyncIterator[TlsServers]:
    ca, ca_key = issue_ca("tunnel test CA")
    servers, ports = [], {}
    for host in HOSTS:
        cert, key = issue_server([host], ca, ca_key)
        (tmp_path / f"{host}.pem").write_text(pem(cert) + pem(ca))
        (tmp_path / f"{host}.key").write_text(key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp_path / f"{host}.pem", tmp_path / f"{host}.key")

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         name: str = host) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = name.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        ports[host] = server.sockets[0].getsockname()[1]
    yield TlsServers(pem(ca), ports)
    for server in servers:
        server.close()


def _snapshot(echo: EchoApp, servers: TlsServers, *, policy: str = "ALLOW_ANY", kind: str = "sidecar",
              routes: list[dict[str, Any]] | None = None, hosts: list[str] | None = None) -> dict[str, Any]:
    doc = make_snapshot(echo.port)
    doc["node"]["kind"] = kind
    doc["mesh"] = {"outbound_traffic_policy": policy}
    doc["egress"] = {"hosts": {f"{h}:443": f"127.0.0.1:{p}" for h, p in servers.ports.items()},
                     "real_dns": False}
    doc["tls"] = {"routes": routes or [], "hosts": hosts or []}
    return doc


def _https(proxy_port: int, ca_pem: str, connect_to: str, sni: str, *, tunnel: bool = True,
           header: bytes = b"") -> str:
    """GET / over TLS with ``sni``: through the sidecar's ``CONNECT connect_to:443``, or straight to a
    gateway's listener (``header``, PROXY protocol, sent first); the body (the server's name), or the
    exception's class name."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = False  # the SNI and the name the server proves differ on purpose below
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    try:
        sock.sendall(header)
        if tunnel:
            sock.sendall(f"CONNECT {connect_to}:443 HTTP/1.1\r\nHost: {connect_to}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1024)
                if not chunk:
                    return "no CONNECT answer"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        return answer.split(b"\r\n\r\n", 1)[1].decode()
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()


async def _prometheus(admin: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


async def test_connect_routes_by_sni_passes_through_and_counts(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy, tmp_path: Path) -> None:
    routes = [{"name": "r", "sni_hosts": ["b.example.com"], "port": 443,
               "destinations": [{"host": "a.example.com", "port": 443, "cluster": None, "weight": 100}]}]
    log = tmp_path / "access.log"
    proxy = await start_proxy(_snapshot(echo_app, tls_servers, routes=routes), "--access-log", str(log))
    port, ca = proxy.ports["outbound"], tls_servers.ca_pem
    # no route for a.example.com: ALLOW_ANY passes it through to where the name resolves
    assert await asyncio.to_thread(_https, port, ca, "a.example.com", "a.example.com") == "a.example.com"
    # the route takes b.example.com (by its SNI) to a.example.com's server
    assert await asyncio.to_thread(_https, port, ca, "b.example.com", "b.example.com") == "a.example.com"
    deadline = asyncio.get_running_loop().time() + 10  # each tunnel logs and counts when it closes
    while len(log.read_text().splitlines()) < 2 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polls a file: the proxy's sink writes it, no event to wait on
    text = await _prometheus(proxy.ports["admin"])
    assert 'istio_tcp_connections_opened_total{reporter="source"' in text
    # Istio's stats filter on a TCP connection (no Host header): destination_service "unknown", the
    # cluster's name in destination_service_name
    series = _tcp_series(text.split("\r\n\r\n", 1)[1])["opened"]
    assert sorted((s["destination_service"], s["destination_service_name"],
                   s["destination_service_namespace"]) for s in series) == [
        ("a.example.com", "a.example.com", "unknown"), ("unknown", "PassthroughCluster", "unknown")], series
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["requested_server_name"], e["upstream_cluster"], e["status"], e["method"])
            for e in entries] == [("a.example.com", "PassthroughCluster", 0, None),
                                  ("b.example.com", "outbound|443||a.example.com", 0, None)]
    assert all(e["bytes_received"] > 0 and e["bytes_sent"] > 0 for e in entries), entries


async def test_registry_only_closes_the_tunnel_unless_a_service_entry_lists_the_host(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app, tls_servers, policy="REGISTRY_ONLY",
                                        hosts=["b.example.com:443"]))
    port, ca = proxy.ports["outbound"], tls_servers.ca_pem
    blocked = await asyncio.to_thread(_https, port, ca, "a.example.com", "a.example.com")
    assert blocked in ("SSLEOFError", "SSLZeroReturnError", "ConnectionResetError", "SSLError"), blocked
    assert await asyncio.to_thread(_https, port, ca, "b.example.com", "b.example.com") == "b.example.com"
    text = await _prometheus(proxy.ports["admin"])
    series = _tcp_series(text.split("\r\n\r\n", 1)[1])["opened"]
    assert sorted((s["destination_service"], s["destination_service_name"]) for s in series) == [
        ("b.example.com", "b.example.com"), ("unknown", "BlackHoleCluster")], series


async def test_a_gateway_passes_tls_through_by_sni_and_still_serves_http(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy) -> None:
    routes = [{"name": "r", "sni_hosts": ["*.example.com"], "port": None,
               "destinations": [{"host": "b.example.com", "port": 443, "cluster": None, "weight": 100}]}]
    proxy = await start_proxy(_snapshot(echo_app, tls_servers, kind="gateway", routes=routes),
                              "--kind", "gateway")
    port, ca = proxy.ports["outbound"], tls_servers.ca_pem
    assert await asyncio.to_thread(_https, port, ca, "", "a.example.com", tunnel=False) == "b.example.com"
    # plain HTTP on the same listener still goes to the HTTP pipeline (404 NR: no bound host here)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 404")
    writer.close()


def _tcp_series(text: str) -> dict[str, list[dict[str, str]]]:
    """``istio_tcp_connections_{opened,closed}_total`` samples (labels with the value) by metric."""
    found: dict[str, list[dict[str, str]]] = {"opened": [], "closed": []}
    for family in text_string_to_metric_families(text):
        for what in found:
            if family.name == f"istio_tcp_connections_{what}":
                found[what] += [{**s.labels, "value": str(int(s.value))} for s in family.samples
                                if s.name.endswith("_total")]
    return found


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def _logged(log: Path, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10  # each tunnel logs when it closes
    while len(await asyncio.to_thread(_lines, log)) < count and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polls a file: the proxy's sink writes it, no event to wait on
    return [json.loads(line) for line in await asyncio.to_thread(_lines, log)]


async def test_a_refused_upstream_is_counted_and_logged_uf_and_a_blackholed_tunnel_uh(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy, tmp_path: Path) -> None:
    """Envoy's tcp_proxy flags a refused upstream UF and a BlackHoleCluster connection UH; Istio's stats
    filter reports a connection opened with the flags its outcome carries, so opened and closed share
    one series with that flag (never a "-" series for a connection that was never carried)."""
    with socket.socket() as probe:  # a port nobody listens on: the upstream refuses
        probe.bind(("127.0.0.1", 0))
        refused = probe.getsockname()[1]
    doc = _snapshot(echo_app, tls_servers, policy="REGISTRY_ONLY", hosts=["b.example.com:443"])
    doc["egress"]["hosts"]["b.example.com:443"] = f"127.0.0.1:{refused}"
    log = tmp_path / "access.log"
    proxy = await start_proxy(doc, "--access-log", str(log))
    port, ca = proxy.ports["outbound"], tls_servers.ca_pem
    failed = await asyncio.to_thread(_https, port, ca, "b.example.com", "b.example.com")
    assert failed in ("SSLEOFError", "SSLZeroReturnError", "ConnectionResetError", "SSLError"), failed
    blocked = await asyncio.to_thread(_https, port, ca, "a.example.com", "a.example.com")
    assert blocked in ("SSLEOFError", "SSLZeroReturnError", "ConnectionResetError", "SSLError"), blocked
    entries = await _logged(log, 2)
    assert [(e["requested_server_name"], e["response_flags"], e["upstream_cluster"], e["upstream_host"],
             e["bytes_sent"], e["status"]) for e in entries] == [
        ("b.example.com", "UF", "outbound|443||b.example.com", None, 0, 0),
        ("a.example.com", "UH", "BlackHoleCluster", None, 0, 0)]
    series = _tcp_series((await _prometheus(proxy.ports["admin"])).split("\r\n\r\n", 1)[1])
    for what in ("opened", "closed"):
        flags = sorted((s["destination_service_name"], s["destination_service"], s["response_flags"],
                        s["value"]) for s in series[what])
        assert flags == [("BlackHoleCluster", "unknown", "UH", "1"),
                         ("b.example.com", "b.example.com", "UF", "1")], (what, series)


def _https_proxied(port: int, ca_pem: str, sni: str, header: bytes) -> str:
    """Raw TLS to a gateway's listener behind a load balancer: ``header`` (PROXY protocol) first."""
    return _https(port, ca_pem, "", sni, tunnel=False, header=header)


V2_HEADER = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0, 12])
             + socket.inet_aton("198.51.100.9") + socket.inet_aton("127.0.0.1") + (40001).to_bytes(2, "big")
             + (443).to_bytes(2, "big"))


async def test_a_passthrough_gateway_behind_proxy_protocol_reads_the_header_then_the_sni(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy, tmp_path: Path) -> None:
    """gatewayTopology.proxyProtocol on a gateway with a PASSTHROUGH server: Envoy's proxy_protocol
    listener filter runs before tls_inspector, so the header is taken off, the SNI read after it, and
    the header's source is the log line's downstream address (Envoy's ``ip:port``)."""
    routes = [{"name": "r", "sni_hosts": ["*.example.com"], "port": None,
               "destinations": [{"host": "b.example.com", "port": 443, "cluster": None, "weight": 100}]}]
    doc = _snapshot(echo_app, tls_servers, kind="gateway", routes=routes)
    doc["mesh"]["proxy_protocol"] = True
    log = tmp_path / "access.log"
    proxy = await start_proxy(doc, "--kind", "gateway", "--access-log", str(log))
    port, ca = proxy.ports["outbound"], tls_servers.ca_pem
    v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 443\r\n"
    assert await asyncio.to_thread(_https_proxied, port, ca, "a.example.com", v1) == "b.example.com"
    assert await asyncio.to_thread(_https_proxied, port, ca, "a.example.com", V2_HEADER) == "b.example.com"
    # no header: closed before any TLS, as Envoy's listener filter does
    assert await asyncio.to_thread(_https, port, ca, "", "a.example.com", tunnel=False) != "b.example.com"
    entries = await _logged(log, 2)
    assert [(e["downstream_remote_address"], e["requested_server_name"], e["upstream_cluster"])
            for e in entries[:2]] == [("203.0.113.7:51234", "a.example.com", "outbound|443||b.example.com"),
                                      ("198.51.100.9:40001", "a.example.com", "outbound|443||b.example.com")]
    # plain HTTP behind the same header still reaches the HTTP pipeline (404 NR: no bound host here)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(v1 + b"GET / HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 404")
    writer.close()


async def test_the_gateways_https_port_passes_through_the_names_a_tls_route_takes(
        echo_app: EchoApp, tls_servers: TlsServers, start_proxy: StartProxy) -> None:
    """A PASSTHROUGH server on Istio's ingress 443 ("Ingress Gateway without TLS Termination"): the HTTPS
    listener peeks at the SNI; a name a ``tls`` route takes is carried unopened, others are terminated
    (here no SIMPLE server covers them: the handshake is refused, as Envoy with no filter chain)."""
    routes = [{"name": "r", "sni_hosts": ["a.example.com"], "port": 443,
               "destinations": [{"host": "b.example.com", "port": 443, "cluster": None, "weight": 100}]}]
    proxy = await start_proxy(_snapshot(echo_app, tls_servers, kind="gateway", routes=routes),
                              "--kind", "gateway", "--https-port", "0")
    port, ca = proxy.ports["https"], tls_servers.ca_pem
    # the server behind the route answers with its own certificate (b.example.com's, from the test CA)
    assert await asyncio.to_thread(_https, port, ca, "", "a.example.com", tunnel=False) == "b.example.com"
    refused = await asyncio.to_thread(_https, port, ca, "", "c.example.com", tunnel=False)
    assert refused.startswith("SSL") and refused.endswith("Error"), refused
