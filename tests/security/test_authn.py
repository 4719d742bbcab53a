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

from .conftest import ALICE, BOB, InboundSidecar, Issue, ask


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
    async with InboundSidecar(bob, mode="PERMISSIVE") as server:
        assert await _plaintext(server.port) == "none None -"
        serial = alice.current.serial  # type: ignore[union-attr]
        assert await _mtls(server.port, alice.client_context) == f"mutual_tls {ALICE} {serial:x}"
    assert server.accepted == [("none", None), ("mutual_tls", ALICE)]


async def test_strict_port_refuses_plaintext(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob, mode="STRICT") as server:
        assert await _plaintext(server.port) == ""
        assert (await _mtls(server.port, alice.client_context)).startswith("mutual_tls")
    assert server.refused == ["plaintext connection refused: mTLS is STRICT on this port"]


async def test_disabled_port_refuses_tls(issue: Issue) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob, mode="DISABLE") as server:
        assert await _mtls(server.port, alice.client_context) == ""
        assert await _plaintext(server.port) == "none None -"
    assert server.refused == ["mTLS is DISABLEd on this port; TLS connection refused"]


@pytest.mark.parametrize(
    ("mode", "port_level", "plaintext_ok", "mtls_ok"),
    [
        ("STRICT", {"9080": "PERMISSIVE"}, True, True),  # the workload port is relaxed
        ("STRICT", {"9080": "DISABLE"}, True, False),
        ("DISABLE", {"9080": "STRICT"}, False, True),
        ("PERMISSIVE", {"9080": "STRICT"}, False, True),
        ("STRICT", {"8080": "DISABLE"}, False, True),  # another port's setting does not apply here
        ("DISABLE", {"9080": "UNSET"}, True, False),  # UNSET inherits the workload mode
    ],
)
async def test_port_level_mtls_on_the_real_listener(
    issue: Issue, mode: str, port_level: dict[str, str], plaintext_ok: bool, mtls_ok: bool
) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob, mode=mode, port_level=port_level) as server:
        assert (await _plaintext(server.port) == "none None -") is plaintext_ok
        assert (await _mtls(server.port, alice.client_context)).startswith("mutual_tls") is mtls_ok
    assert server.stats.plaintext_refused == (0 if plaintext_ok else 1)
    assert server.stats.tls_refused == (0 if mtls_ok else 1)


async def test_a_pushed_mode_applies_to_new_connections_and_closes_refused_ones(issue: Issue) -> None:
    """PERMISSIVE -> STRICT by a new snapshot: plaintext is refused from then on, and an open
    plaintext connection is closed once idle (Envoy drains listeners whose chains changed)."""
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob, mode="PERMISSIVE") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await ask(reader, writer) == "none None -"
        server.apply("STRICT")
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the idle plaintext connection was closed
        writer.close()
        assert await _plaintext(server.port) == ""
        assert (await _mtls(server.port, alice.client_context)).startswith(f"mutual_tls {ALICE}")
    assert server.stats.closed_on_mode_change == 1 and server.stats.plaintext_refused == 1


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
