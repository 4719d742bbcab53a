"""The HAProxy PROXY protocol header (v1 text, v2 binary), read as Envoy's proxy_protocol listener filter.

Istio's ``gatewayTopology.proxyProtocol: {}`` puts Envoy's ``envoy.filters.listener.proxy_protocol``
on a gateway's listeners: every connection must start with a PROXY header (either version,
detected per connection), whose source address becomes the connection's downstream remote
address (``remote.ip``, ``X-Forwarded-For``, the access log). `parse` is that reading, as Envoy's
``source/extensions/filters/listener/proxy_protocol/proxy_protocol.cc`` does it:

- a connection whose first bytes are not a PROXY header, or whose header is malformed, is an
  error: the listener closes it without an answer (Envoy: ``downstream_cx_proxy_proto_error``);
- v1 ``PROXY UNKNOWN ...`` and v2 ``LOCAL`` (a load balancer's own health check) are accepted and
  keep the connection's real addresses;
- v2 ``PROXY`` over ``AF_INET``/``AF_INET6`` with ``STREAM``/``DGRAM``; any other family
  (``UNSPEC``, ``AF_UNIX``), command or version is an error, as are addresses that are not unicast
  (``0.0.0.0``, broadcast, multicast) and malformed TLVs;
- a v1 line is at most 108 bytes with its CRLF, fields separated by single spaces.

Pure functions of bytes: no sockets, no asyncio. The listener (`meshkit.proxy.listener`) calls
`parse` on the first bytes of a connection only, and only when the snapshot asks for it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LEN = 16
V1_PREFIX = b"PROXY "
V1_MAX_LEN = 108  # Envoy's MAX_PROXY_PROTO_LEN_V1: the line with its CRLF
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_INET, _V2_INET6 = 0x1, 0x2
_V2_STREAM, _V2_DGRAM = 0x1, 0x2
_V2_ADDR_LEN = {_V2_INET: 12, _V2_INET6: 36}


class ProxyProtocolError(ValueError):
    """Not a PROXY header, or a malformed one: the connection is closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: ``length`` bytes of the connection are the header; ``source`` None keeps the
    connection's own addresses (v1 UNKNOWN, v2 LOCAL)."""

    version: int  # 1 | 2
    length: int
    source: str | None = None
    source_port: int | None = None
    destination: str | None = None
    destination_port: int | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``; None while more bytes are needed.

    ProxyProtocolError when the bytes cannot be one (the caller closes the connection).
    """
    size = len(data)
    if data[:12] != V2_SIGNATURE[:size] and data[:6] != V1_PREFIX[:size]:
        raise ProxyProtocolError("the connection does not start with a PROXY protocol header")
    if data[:12] == V2_SIGNATURE[:size] and size < 12:
        return None  # both signatures still possible ("\r\n..." vs "PROXY ..." differ at once)
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEADER_LEN:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"unsupported PROXY protocol v2 version {version}")
    length = int.from_bytes(data[14:16], "big")
    total = V2_HEADER_LEN + length
    if command == _V2_LOCAL:  # locally initiated (health check): the real addresses stay
        return ProxyHeader(2, total) if len(data) >= total else None
    if command != _V2_PROXY:
        raise ProxyProtocolError(f"unsupported PROXY protocol v2 command {command}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    needed = _V2_ADDR_LEN.get(family)
    if needed is None or transport not in (_V2_STREAM, _V2_DGRAM):
        raise ProxyProtocolError(f"unsupported PROXY protocol v2 address family/transport 0x{data[13]:02x}")
    if length < needed:
        raise ProxyProtocolError(f"PROXY protocol v2 address length {length} < {needed}")
    if len(data) < total:
        return None
    body = data[V2_HEADER_LEN:total]
    if family == _V2_INET:
        af, width = socket.AF_INET, 4
    else:
        af, width = socket.AF_INET6, 16
    source = socket.inet_ntop(af, body[:width])
    destination = socket.inet_ntop(af, body[width:2 * width])
    ports = body[2 * width:2 * width + 4]
    _check_unicast(source, destination)
    _check_tlvs(body[needed:])
    return ProxyHeader(2, total, source, int.from_bytes(ports[:2], "big"),
                       destination, int.from_bytes(ports[2:], "big"))


def _check_tlvs(tlvs: bytes) -> None:
    """Type, 2-byte length, value: each must fit (Envoy closes the connection otherwise)."""
    index = 0
    while index < len(tlvs):
        if index + 3 > len(tlvs):
            raise ProxyProtocolError("PROXY protocol v2 TLV truncated (no length)")
        index += 3 + int.from_bytes(tlvs[index + 1:index + 3], "big")
        if index > len(tlvs):
            raise ProxyProtocolError("PROXY protocol v2 TLV value runs past the header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LEN)
    if end < 0:
        if len(data) >= V1_MAX_LEN:
            raise ProxyProtocolError(f"PROXY protocol v1 line longer than {V1_MAX_LEN} bytes")
        return None
    try:
        line = data[:end].decode("ascii").rstrip()
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY protocol v1 line is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProxyProtocolError("malformed PROXY protocol v1 line")
    if parts[1] == "UNKNOWN":  # "the real connection's parameters" are used
        return ProxyHeader(1, length)
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyProtocolError(f"malformed PROXY protocol v1 line {line!r}")
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = str(kind(parts[2])), str(kind(parts[3]))
    except ValueError:
        raise ProxyProtocolError(f"PROXY protocol v1: bad {parts[1]} address in {line!r}") from None
    source_port, destination_port = _port(parts[4], line), _port(parts[5], line)
    _check_unicast(source, destination)
    return ProxyHeader(1, length, source, source_port, destination, destination_port)


def _port(text: str, line: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY protocol v1: bad port {text!r} in {line!r}")
    return int(text)


def _check_unicast(*addresses: str) -> None:
    """Envoy's ``isUnicastAddress``: not the any address, not broadcast, not multicast."""
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.is_unspecified or address.is_multicast or text == "255.255.255.255":
            raise ProxyProtocolError(f"PROXY protocol address {text} is not a unicast address")

