"""PROXY protocol in front of a gateway (Istio's ``gatewayTopology.proxyProtocol``), as Envoy's
proxy_protocol listener filter: the header parser on bytes, then the real gateway proxy on 127.0.0.1.

The parser's cases follow Envoy's ``proxy_protocol.cc``: v1 TCP4/TCP6/UNKNOWN, v2 PROXY over
INET/INET6 and LOCAL (the real addresses stay), TLVs skipped but checked, and everything else
(garbage, another version or command, AF_UNIX/UNSPEC, non-unicast addresses, an over-long v1 line)
an error on which the connection is closed without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from typing import Any

import pytest

from meshkit.proxy.filters.authz import AuthzPolicies
from meshkit.proxy.proxied import ProxiedAuthzPolicies
from meshkit.proxy.proxy_protocol import V2_SIGNATURE, ProxyHeader, ProxyProtocolError, parse
from meshkit.runtime.curl import haproxy_v1_line as v1_header
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.proxy.test_gateway_tls import HOST, _pair, _server
from tests.proxy.test_gateway_tls import _snapshot as tls_snapshot

V1 = b"PROXY TCP4 5.6.7.8 10.0.0.1 40000 80\r\n"
REQUEST = b"GET /headers HTTP/1.1\r\nHost: httpbin.example.com\r\nConnection: close\r\n\r\n"


def v2(command: int = 1, family: int = 0x11, addresses: bytes | None = None, tlvs: bytes = b"",
       version: int = 2) -> bytes:
    if addresses is None:
        addresses = (socket.inet_pton(socket.AF_INET, "5.6.7.8")
                     + socket.inet_pton(socket.AF_INET, "10.0.0.1") + struct.pack("!HH", 40000, 80))
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp6() -> bytes:
    addresses = (socket.inet_pton(socket.AF_INET6, "2001:db8::7")
                 + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 40000, 443))
    return v2(family=0x21, addresses=addresses)


# ------------------------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(("data", "expected"), [
    (V1, ProxyHeader(1, len(V1), "5.6.7.8", 40000, "10.0.0.1", 80)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
     ProxyHeader(1, 46, "2001:db8::7", 40000, "2001:db8::1", 443)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15)),  # the real connection's addresses are used
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, 35)),
    (v2(), ProxyHeader(2, 28, "5.6.7.8", 40000, "10.0.0.1", 80)),
    (v2_tcp6(), ProxyHeader(2, 52, "2001:db8::7", 40000, "2001:db8::1", 443)),
    (v2(family=0x12), ProxyHeader(2, 28, "5.6.7.8", 40000, "10.0.0.1", 80)),  # DGRAM, as Envoy
    (v2(command=0, family=0x00, addresses=b""), ProxyHeader(2, 16)),  # LOCAL: a health check
    (v2(command=0, family=0x11), ProxyHeader(2, 28)),  # LOCAL with addresses: they are ignored
    (v2(tlvs=b"\x04\x00\x03abc\x05\x00\x00"), ProxyHeader(2, 37, "5.6.7.8", 40000, "10.0.0.1", 80)),
])
def test_headers_envoy_accepts(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == expected
    assert parse(data + REQUEST) == expected  # what follows the header is the connection's data


@pytest.mark.parametrize("data", [V1, v2(), v2_tcp6(), v2(command=0, family=0, addresses=b"")])
def test_a_header_split_anywhere_waits_for_the_rest(data: bytes) -> None:
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut
    header = parse(data)
    assert header is not None and header.length == len(data)


@pytest.mark.parametrize(("data", "reason"), [
    (REQUEST, "does not start with a PROXY protocol header"),  # no header: closed, as Envoy
    (b"\x16\x03\x01\x02\x00\x01", "does not start"),  # a TLS ClientHello
    (b"PROXY\r\n", "does not start"),
    (b"PROXY TCP4 5.6.7.8 10.0.0.1 40000\r\n", "malformed"),
    (b"PROXY TCP4  5.6.7.8 10.0.0.1 40000 80\r\n", "malformed"),  # two spaces
    (b"PROXY UDP4 5.6.7.8 10.0.0.1 40000 80\r\n", "malformed"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 80\r\n", "bad TCP4 address"),
    (b"PROXY TCP6 5.6.7.8 2001:db8::1 40000 80\r\n", "bad TCP6 address"),
    (b"PROXY TCP4 5.6.7.8 10.0.0.1 70000 80\r\n", "bad port"),
    (b"PROXY TCP4 5.6.7.8 10.0.0.1 -1 80\r\n", "bad port"),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 40000 80\r\n", "not a unicast"),
    (b"PROXY TCP4 224.0.0.1 10.0.0.1 40000 80\r\n", "not a unicast"),
    (b"PROXY TCP4 5.6.7.8 255.255.255.255 40000 80\r\n", "not a unicast"),
    (b"PROXY TCP4 " + b"1" * 120, "longer than 108"),
    (b"PROXY TCP4 \xff.6.7.8 10.0.0.1 1 2\r\n", "not ASCII"),
    (v2(version=1), "version 1"),
    (v2(command=2), "command 2"),
    (v2(family=0x31, addresses=b"\x00" * 216), "family"),  # AF_UNIX: Envoy refuses it
    (v2(family=0x01, addresses=b""), "family"),  # AF_UNSPEC with PROXY
    (v2(family=0x10), "family"),  # UNSPEC transport
    (v2(addresses=b"\x05\x06\x07\x08"), "address length 4 < 12"),
    (v2(tlvs=b"\x04\x00"), "TLV truncated"),
    (v2(tlvs=b"\x04\x00\x09abc"), "runs past"),
    (v2(addresses=b"\x00" * 8 + b"\x00" * 4), "not a unicast"),
])
def test_malformed_headers_are_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyProtocolError, match=reason):
        parse(data)


def test_curl_haproxy_protocol_line() -> None:
    """What `meshkit exec POD -- curl --haproxy-protocol` sends (meshkit.runtime.curl), as curl does."""
    line = v1_header("127.0.0.1", "127.0.0.1", 51234, 21080)
    assert line == b"PROXY TCP4 127.0.0.1 127.0.0.1 51234 21080\r\n"
    assert v1_header("::1", "::1", 1, 2).startswith(b"PROXY TCP6 ::1 ::1 1 2")
    assert parse(v1_header("5.6.7.8", "127.0.0.1", 1, 2)) == ProxyHeader(1, 34, "5.6.7.8", 1, "127.0.0.1", 2)


# ------------------------------------------------------------------------------------------- the gateway


def gateway_snapshot(echo_port: int, *, proxy_protocol: bool = True, hops: int = 0,
                     authz: dict[str, Any] | None = None) -> dict[str, Any]:
    snap = make_snapshot(echo_port)
    snap["node"].update({"id": "istio-ingressgateway-0.istio-system", "kind": "gateway",
                         "namespace": "istio-system", "workload": "istio-ingressgateway",
                         "labels": {"app": "istio-ingressgateway", "istio": "ingressgateway"}})
    snap["outbound"]["virtual_hosts"] = [{
        "name": "httpbin.example.com", "service": None, "domains": ["*"], "port": None,
        "routes": [{"name": "default", "match": [], "route": [{"cluster": "reviews|", "weight": 100}]}],
    }]
    snap["mesh"] = {"path_normalization": "BASE", "outbound_traffic_policy": "ALLOW_ANY",
                    "num_trusted_proxies": hops, "proxy_protocol": proxy_protocol}
    snap["inbound"]["authz"] = authz
    return snap


async def exchange(port: int, *parts: bytes, pause: float = 0.0, wait: float = 5.0) -> bytes:
    """Send ``parts`` (with a pause between them), read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_and_body(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), (json.loads(body) if body.startswith("{") else {"text": body})


def forwarded_for(raw: bytes) -> str:
    return dict(status_and_body(raw)[1]["headers"])["x-forwarded-for"]


async def test_the_header_address_becomes_the_downstream_address(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(gateway_snapshot(echo_app.port), "--kind", "gateway")
    port = proxy.ports["outbound"]
    raw = await exchange(port, V1 + REQUEST)
    assert status_and_body(raw)[0] == 200 and forwarded_for(raw) == "5.6.7.8"
    assert forwarded_for(await exchange(port, v2_tcp6() + REQUEST)) == "2001:db8::7"
    # the header split over several reads, and the request in a later one
    raw = await exchange(port, V1[:3], V1[3:20], V1[20:], REQUEST, pause=0.05)
    assert forwarded_for(raw) == "5.6.7.8"
    # a load balancer's health check (v2 LOCAL) and v1 UNKNOWN: the connection's own address
    local = v2(command=0, family=0, addresses=b"")
    assert forwarded_for(await exchange(port, local + REQUEST)) == "127.0.0.1"
    assert forwarded_for(await exchange(port, b"PROXY UNKNOWN\r\n" + REQUEST)) == "127.0.0.1"
    # a client's own X-Forwarded-For is kept in front, as Envoy appends the remote address
    raw = await exchange(port, V1 + REQUEST.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n"))
    assert forwarded_for(raw) == "9.9.9.9, 5.6.7.8"
    # keep-alive: one header, then two requests on the connection
    keep = REQUEST.replace(b"Connection: close\r\n", b"")
    raw = await exchange(port, V1 + keep + REQUEST)
    assert raw.count(b"HTTP/1.1 200") == 2 and raw.count(b'"x-forwarded-for", "5.6.7.8"') == 2


async def test_a_connection_without_a_valid_header_is_closed_unanswered(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(gateway_snapshot(echo_app.port), "--kind", "gateway")
    port, stats = proxy.ports["outbound"], proxy.listeners["outbound"].stats
    assert await exchange(port, REQUEST) == b""  # plain HTTP: no answer, as Envoy
    assert await exchange(port, b"PROXY TCP4 5.6.7.8 10.0.0.1 40000\r\n" + REQUEST) == b""
    assert await exchange(port, v2(family=0x31, addresses=b"\x00" * 216) + REQUEST) == b""
    assert stats.downstream_cx_proxy_proto_error == 3
    assert status_and_body(await exchange(port, V1 + REQUEST))[0] == 200


async def test_without_proxy_protocol_a_header_is_a_bad_request(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    """Off (Istio's default): the listener is plain HTTP; a PROXY line is not a request line."""
    proxy = await start_proxy(gateway_snapshot(echo_app.port, proxy_protocol=False), "--kind", "gateway")
    port = proxy.ports["outbound"]
    assert status_and_body(await exchange(port, REQUEST))[0] == 200
    assert status_and_body(await exchange(port, V1 + REQUEST))[0] == 400
    assert type(proxy.listeners["outbound"].protocol_factory()()) .__name__ == "DownstreamConnection"


async def test_a_sidecar_never_reads_a_header(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    """gatewayTopology is for gateways: a sidecar's snapshot with proxy_protocol still serves HTTP."""
    snap = make_snapshot(echo_app.port)
    snap["mesh"] = {"path_normalization": "BASE", "proxy_protocol": True}
    proxy = await start_proxy(snap)
    assert proxy.state.current is not None and proxy.state.current.proxy_protocol is False
    request = b"GET http://reviews:9080/x HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n"
    raw = await exchange(proxy.ports["outbound"], request)
    assert status_and_body(raw)[0] == 200


def _policy(action: str, **source: list[str]) -> dict[str, Any]:
    return {action: [{"name": "istio-system/ingress-policy", "rules": [{"from": [source]}]}]}


@pytest.mark.parametrize(("authz", "hops", "extra", "expected"), [
    # remoteIpBlocks judge the header's address ...
    (_policy("allow", remote_ip_blocks=["5.6.7.0/24"]), 0, b"", 200),
    (_policy("allow", remote_ip_blocks=["127.0.0.1"]), 0, b"", 403),
    (_policy("deny", remote_ip_blocks=["5.6.7.8"]), 0, b"", 403),
    # ... and ipBlocks the socket's peer (Envoy's direct_remote_ip: "always the physical peer")
    (_policy("allow", ip_blocks=["5.6.7.0/24"]), 0, b"", 403),
    (_policy("allow", ip_blocks=["127.0.0.1"]), 0, b"", 200),
    # with numTrustedProxies, X-Forwarded-For wins over the PROXY header (Istio's topology doc)
    (_policy("allow", remote_ip_blocks=["9.9.9.9"]), 1, b"X-Forwarded-For: 9.9.9.9\r\n", 200),
    (_policy("allow", remote_ip_blocks=["5.6.7.8"]), 1, b"X-Forwarded-For: 9.9.9.9\r\n", 403),
    (_policy("allow", remote_ip_blocks=["5.6.7.8"]), 1, b"", 200),  # fewer hops than trusted
])
async def test_authorization_sees_the_header_address_as_remote_ip(  # noqa: PLR0917 (parametrized)
        echo_app: EchoApp, start_proxy: StartProxy, authz: dict[str, Any], hops: int, extra: bytes,
        expected: int) -> None:
    proxy = await start_proxy(gateway_snapshot(echo_app.port, hops=hops, authz=authz), "--kind", "gateway")
    assert isinstance(proxy.state.current.gateway_authz, ProxiedAuthzPolicies)
    request = REQUEST.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")
    raw = await exchange(proxy.ports["outbound"], V1 + request)
    assert status_and_body(raw)[0] == expected, raw


async def test_policies_of_a_gateway_without_proxy_protocol_are_the_plain_kind(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    authz = _policy("allow", remote_ip_blocks=["127.0.0.1"])
    proxy = await start_proxy(gateway_snapshot(echo_app.port, proxy_protocol=False, authz=authz),
                              "--kind", "gateway")
    assert type(proxy.state.current.gateway_authz) is AuthzPolicies
    assert status_and_body(await exchange(proxy.ports["outbound"], REQUEST))[0] == 200


def _tls_exchange(port: int, ca_pem: str, header: bytes) -> bytes:
    """A TLS client behind a PROXY protocol load balancer: header, then the handshake (blocking)."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(REQUEST.replace(b"httpbin.example.com", HOST.encode()))
            answer = b""
            for _ in range(1000):  # bounded: until the gateway closes
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
            return answer


async def test_the_https_listener_reads_the_header_before_the_handshake(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    ca, cert, key = _pair([HOST])
    snap = tls_snapshot(echo_app.port, [_server(cert, key, [HOST])])
    snap["mesh"] = {"path_normalization": "BASE", "proxy_protocol": True}
    proxy = await start_proxy(snap, "--kind", "gateway", "--https-port", "0")
    port = proxy.ports["https"]
    raw = await asyncio.to_thread(_tls_exchange, port, ca, V1)
    assert status_and_body(raw)[0] == 200 and forwarded_for(raw) == "5.6.7.8"
    raw = await asyncio.to_thread(_tls_exchange, port, ca, v2_tcp6())
    assert forwarded_for(raw) == "2001:db8::7"
    with pytest.raises((ssl.SSLError, ConnectionError)):  # a ClientHello first: closed, as Envoy
        await asyncio.to_thread(_tls_exchange, port, ca, b"")
    assert proxy.listeners["https"].stats.downstream_cx_proxy_proto_error == 1
