"""PeerAuthentication: mode resolution, the connection decision table, the sniffing listener, XFCC."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.authn import XFCC, authn, decide_connection, mtls_mode_for_port
from meshkit.proxy.http import Headers, Request, Response

from .conftest import ALICE, BOB, Issue, MeshListener, ask


@pytest.mark.parametrize(
    ("mtls", "port", "expected"),
    [
        (None, 9080, "PERMISSIVE"),  # Istio's default
        ({"mode": "STRICT"}, 9080, "STRICT"),
        ({"mode": "STRICT", "port_level": {"9080": "PERMISSIVE"}}, 9080, "PERMISSIVE"),
        ({"mode": "STRICT", "port_level": {"9080": "PERMISSIVE"}}, 8000, "STRICT"),
        ({"mode": "PERMISSIVE", "port_level": {"9080": "STRICT"}}, 9080, "STRICT"),
        ({"mode": "DISABLE"}, 9080, "DISABLE"),
        ({"mode": "UNSET"}, 9080, "PERMISSIVE"),
        ({"mode": "STRICT", "port_level": {"9080": "UNSET"}}, 9080, "STRICT"),  # UNSET inherits
        ({"mode": None, "port_level": None}, 9080, "PERMISSIVE"),
    ],
)
def test_mtls_mode_for_port(mtls: dict[str, Any] | None, port: int, expected: str) -> None:
    assert mtls_mode_for_port(mtls, port) == expected


@pytest.mark.parametrize(
    ("mtls", "message"),
    [
        ({"mode": "STRICTLY"}, "inbound.mtls.mode: unknown mTLS mode 'STRICTLY'"),
        ({"mode": "STRICT", "port_level": {"9080": "strict"}}, "port_level.9080: unknown mTLS mode 'strict'"),
        ({"port_level": ["9080"]}, "inbound.mtls.port_level: expected an object"),
        ("STRICT", "inbound.mtls: expected an object"),
    ],
)
def test_bad_mtls_sections_name_the_key(mtls: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mtls_mode_for_port(mtls, 9080)


@pytest.mark.parametrize(
    ("mode", "is_tls", "valid_cert", "accept", "policy"),
    [
        ("STRICT", True, True, True, "mutual_tls"),
        ("STRICT", True, False, False, "none"),
        ("STRICT", False, False, False, "none"),
        ("PERMISSIVE", True, True, True, "mutual_tls"),
        ("PERMISSIVE", True, False, False, "none"),
        ("PERMISSIVE", False, False, True, "none"),
        ("DISABLE", True, True, False, "none"),
        ("DISABLE", False, False, True, "none"),
    ],
)
def test_connection_decision_table(
    mode: str, is_tls: bool, valid_cert: bool, accept: bool, policy: str
) -> None:
    decision = decide_connection(mode, is_tls, valid_cert)
    assert (decision.accept, decision.security_policy) == (accept, policy)
    assert decision.reason


def test_decision_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown mTLS mode 'OFF'"):
        decide_connection("OFF", False, False)


# --------------------------------------------------------------------------- one port, both kinds of client


async def _plaintext(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await ask(reader, writer)
    except ConnectionError:
        return ""
    finally:
        writer.close()


async def _mtls(port: int, context: ssl.SSLContext) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return ""
    try:
        return await ask(reader, writer)
    except (ssl.SSLError, ConnectionError):
        return ""
    finally:
        writer.close()


async def test_permissive_port_serves_plaintext_and_mtls(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with MeshListener(bob, mode="PERMISSIVE") as server:
        assert await _plaintext(server.port) == "none None -"
        serial = alice.current.serial  # type: ignore[union-attr]
        assert await _mtls(server.port, alice.client_context) == f"mutual_tls {ALICE} {serial:x}"
    assert server.accepted == [("none", None), ("mutual_tls", ALICE)]


async def test_strict_port_refuses_plaintext(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with MeshListener(bob, mode="STRICT") as server:
        assert await _plaintext(server.port) == ""
        assert (await _mtls(server.port, alice.client_context)).startswith("mutual_tls")
    assert server.refused == ["plaintext connection refused: mTLS is STRICT on this port"]


async def test_disabled_port_refuses_tls(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with MeshListener(bob, mode="DISABLE") as server:
        assert await _mtls(server.port, alice.client_context) == ""
        assert await _plaintext(server.port) == "none None -"
    assert server.refused == ["mTLS is DISABLEd on this port; TLS connection refused"]


# --------------------------------------------------------------------------- x-forwarded-client-cert


@dataclass
class _Config:
    node: dict[str, Any] = field(default_factory=lambda: {"identity": BOB})


async def _echo_xfcc(request: Request) -> Response:
    return Response.local(200, "|".join(request.headers.get_all(XFCC)))


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (ALICE, f"By={BOB};URI={ALICE}"),
        (None, ""),  # plaintext: a forged header is removed, nothing added
    ],
)
async def test_xfcc_is_sanitized_then_set(peer: str | None, expected: str) -> None:
    handler = build_chain([authn], _echo_xfcc)
    forged = Headers([(XFCC, f"URI={ALICE}"), (XFCC, "By=x")])
    request = Request("GET", "/", "bob", forged, direction="inbound", peer_identity=peer, config=_Config())
    response = await handler(request)
    assert response.body == expected.encode()
