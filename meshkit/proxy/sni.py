"""The server name (SNI) a TLS ClientHello asks for, read without opening the TLS: Envoy's ``tls_inspector``.

``name_matches(pattern, name)`` is how a server name is matched against Istio's host patterns.
``client_hello_sni(data)`` looks at the first bytes a client sent: ``NEED_MORE`` while the first
handshake record is incomplete, ``None`` when they are not a TLS ClientHello or it carries no
server name, else the lower-cased name. Only the first record is read (a ClientHello larger than
one record, 16 KiB, is treated as having no name), as much as Envoy's inspector needs.

It must not do: consume bytes, handshake, or decide where a connection goes (``tunnel``).
Standard library only (the proxy is a leaf).
"""

from __future__ import annotations

from typing import Final

NEED_MORE: Final = "<need more>"
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00
MAX_RECORD = 16384 + 5


def name_matches(pattern: str, name: str) -> bool:
    """Does the server-name ``pattern`` (``*``, ``*.example.com``: any name under it, or an exact
    name; Istio's host and sniHosts forms) cover ``name``? Both lower-case."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return pattern == name


def looks_like_tls(data: bytes) -> bool:
    """A TLS handshake record's first bytes (0x16 0x03 0x00..0x04); an HTTP request never starts so."""
    return len(data) >= 3 and data[0] == _HANDSHAKE and data[1] == 0x03 and data[2] <= 0x04


def client_hello_sni(data: bytes) -> str | None:
    """The SNI of the ClientHello at the start of ``data`` (see the module docstring)."""
    if len(data) < 5:
        return NEED_MORE if not data or data[0] == _HANDSHAKE else None
    if not looks_like_tls(data):
        return None
    length = int.from_bytes(data[3:5], "big")
    if length + 5 > MAX_RECORD:
        return None
    if len(data) < 5 + length:
        return NEED_MORE
    body = memoryview(data)[5:5 + length]
    try:
        return _parse_hello(body)
    except IndexError:
        return None


def _parse_hello(body: memoryview) -> str | None:
    if body[0] != _CLIENT_HELLO:
        return None
    at = 4 + 2 + 32  # handshake header, client version, random
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at:at + 2], "big")  # cipher suites
    at += 1 + body[at]  # compression methods
    if at + 2 > len(body):
        return None  # no extensions
    end = min(len(body), at + 2 + int.from_bytes(body[at:at + 2], "big"))
    at += 2
    while at + 4 <= end:
        kind = int.from_bytes(body[at:at + 2], "big")
        size = int.from_bytes(body[at + 2:at + 4], "big")
        at += 4
        if kind == _SERVER_NAME:
            names_end = min(end, at + 2 + int.from_bytes(body[at:at + 2], "big"))
            cursor = at + 2
            while cursor + 3 <= names_end:
                name_type = body[cursor]
                name_len = int.from_bytes(body[cursor + 1:cursor + 3], "big")
                name = bytes(body[cursor + 3:cursor + 3 + name_len])
                if name_type == _HOST_NAME and len(name) == name_len:
                    return name.decode("ascii", errors="replace").lower().rstrip(".") or None
                cursor += 3 + name_len
            return None
        at += size
    return None
