"""Peer authentication (Istio's PeerAuthentication) for the inbound side of the sidecar.

mTLS is decided per CONNECTION, before any request exists, so most of this module is two
pure helpers for the inbound listener:

1. ``mtls_mode_for_port(snapshot.inbound["mtls"], port)`` -> ``"STRICT" | "PERMISSIVE" |
   "DISABLE"`` (``port`` is the workload port, ``inbound.service_port``; port-level settings
   win over the workload-wide mode; an absent setting means Istio's default, PERMISSIVE).
2. On accept: for PERMISSIVE peek at the first bytes (``meshkit.proxy.tls.sniff.sniff_tls``); for
   STRICT treat the connection as TLS; for DISABLE as plaintext. If TLS, complete the
   handshake with ``CertificateManager.server_context`` (it always requires a client
   certificate from the mesh CA) and take ``peer_identity(ssl_object)``.
3. ``decide_connection(mode, is_tls, has_valid_client_cert)``; when ``accept`` is False close
   the connection (Envoy finds no filter chain and closes: the client sees a reset, its
   sidecar answers 503 UF/UC). Otherwise set ``request.peer_identity`` on every request of the
   connection and label metrics with ``decision.security_policy``.

The ``authn`` request filter then applies Envoy's ``SANITIZE_SET`` handling of
``x-forwarded-client-cert``: a caller can never forge it, and over mTLS the app learns the
verified caller identity (``By=<own identity>;URI=<peer identity>``) as with Istio.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.proxy.http import Handler, Request, Response

MODES = ("STRICT", "PERMISSIVE", "DISABLE")
DEFAULT_MODE = "PERMISSIVE"  # Istio's mesh-wide default
XFCC = "x-forwarded-client-cert"


def _check_mode(mode: object, where: str) -> str:
    if mode is None or mode == "UNSET":
        return DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"{where}: unknown mTLS mode {mode!r} (expected one of {', '.join(MODES)})")
    return str(mode)


def mtls_mode_for_port(inbound_mtls: dict[str, object] | None, port: int) -> str:
    """The effective PeerAuthentication mode for one workload port (``inbound.mtls`` of the snapshot).

    Raises ``ValueError`` naming the key for a malformed section, so that snapshot validation
    can call it once per port and NACK.
    """
    if inbound_mtls is None:
        return DEFAULT_MODE
    if not isinstance(inbound_mtls, dict):
        raise ValueError(f"inbound.mtls: expected an object, got {type(inbound_mtls).__name__}")
    port_level = inbound_mtls.get("port_level") or {}
    if not isinstance(port_level, dict):
        raise ValueError("inbound.mtls.port_level: expected an object of port -> mode")
    key = str(port)
    if key in port_level and port_level[key] not in (None, "UNSET"):
        return _check_mode(port_level[key], f"inbound.mtls.port_level.{key}")
    return _check_mode(inbound_mtls.get("mode"), "inbound.mtls.mode")


@dataclass(frozen=True, slots=True)
class ConnectionDecision:
    accept: bool
    security_policy: str  # Istio's connection_security_policy label: "mutual_tls" | "none"
    reason: str  # why (for logs and the rejected connection's access-log line)


def decide_connection(mode: str, is_tls: bool, has_valid_client_cert: bool) -> ConnectionDecision:
    """Accept or reject one inbound connection under ``mode``.

    ``has_valid_client_cert`` means the handshake verified a client certificate against the
    mesh root AND it carries a SPIFFE id. TLS without one is never accepted: the sidecar does
    not terminate anybody else's TLS.
    """
    mode = _check_mode(mode, "mtls mode")
    if is_tls:
        if mode == "DISABLE":
            return ConnectionDecision(False, "none", "mTLS is DISABLEd on this port; TLS connection refused")
        if not has_valid_client_cert:
            return ConnectionDecision(False, "none", "TLS without a valid mesh client certificate")
        return ConnectionDecision(True, "mutual_tls", f"mutual TLS ({mode})")
    if mode == "STRICT":
        return ConnectionDecision(False, "none", "plaintext connection refused: mTLS is STRICT on this port")
    return ConnectionDecision(True, "none", f"plaintext ({mode})")


async def authn(request: Request, call_next: Handler) -> Response:
    """Sanitize, then set, ``x-forwarded-client-cert`` from the connection's verified peer identity."""
    request.headers.remove(XFCC)
    if request.peer_identity:
        node = getattr(request.config, "node", None)
        own = node.get("identity") if isinstance(node, dict) else None
        value = f"By={own};URI={request.peer_identity}" if own else f"URI={request.peer_identity}"
        request.headers.add(XFCC, value)
    return await call_next(request)
