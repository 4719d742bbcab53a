"""A gateway's ``ISTIO_MUTUAL`` servers through the real proxy: the mesh's mutual TLS on its plain listener.

The gateway runs with mesh certificates from files (``--tls-dir``, a real test CA); its snapshot's
``gateway_tls.istio_mutual`` names ``edition.cnn.com``. A client with a workload certificate of the same
CA (as sleep's sidecar) and SNI ``edition.cnn.com`` gets routed; a plaintext caller, a TLS caller without
a client certificate, or one whose certificate another CA signed are refused, and the admin ``/stats``
counts each (``gateway_mtls``). With a plain HTTP server beside it (``plaintext: true``) plain HTTP is
served again.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.tls import CHAIN_FILE, KEY_FILE
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot
from tests.security.test_e2e_static_tls import write_tls_dir

HOST = "edition.cnn.com"
GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def _snapshot(echo_port: int, *, plaintext: bool) -> dict[str, Any]:
    snap = make_snapshot(echo_port)
    snap["node"].update({"id": "istio-egressgateway-0.istio-system", "kind": "gateway",
                         "namespace": "istio-system", "identity": GATEWAY})
    snap["outbound"]["virtual_hosts"] = [{
        "name": HOST, "service": None, "domains": [HOST], "port": None,
        "routes": [{"name": "default", "match": [], "route": [{"cluster": "reviews|", "weight": 100}]}],
    }]
    snap["gateway_tls"] = {"servers": [], "istio_mutual": {
        "servers": [{"gateway": "default/istio-egressgateway", "server": 0, "port": 80, "hosts": [HOST]}],
        "plaintext": plaintext}}
    return snap


def _client_context(tls_dir: Path | None, root_pem: str) -> ssl.SSLContext:
    """A sidecar's client side: its workload certificate (or none), the mesh root, no hostname check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=root_pem)
    if tls_dir is not None:
        context.load_cert_chain(tls_dir / CHAIN_FILE, tls_dir / KEY_FILE)
    return context


async def _get(port: int, context: ssl.SSLContext | None, sni: str = HOST) -> str:
    """The status line of ``GET /`` for ``edition.cnn.com``, or what ended the connection."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname=sni if context is not None else None)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {type(exc).__name__}"
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused: {type(exc).__name__}"
    finally:
        writer.close()
    return raw.decode(errors="replace").partition("\r\n")[0] or "refused: closed"


async def _stats(admin: int) -> dict[str, int]:
    """The admin ``/stats``' ``gateway_mtls`` (the proxy runs in this event loop: asked without blocking)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.get(f"http://127.0.0.1:{admin}/stats") as answer:
        found: dict[str, int] = (await answer.json())["gateway_mtls"]
    return found


async def test_only_the_mesh_s_mutual_tls_reaches_an_istio_mutual_server(
        echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    gateway_dir = write_tls_dir(ca, GATEWAY, tmp_path / "gateway")
    sleep_dir = write_tls_dir(ca, SLEEP, tmp_path / "sleep")
    other_ca = CertificateAuthority.open(tmp_path / "other-ca")
    stranger_dir = write_tls_dir(other_ca, SLEEP, tmp_path / "stranger")
    proxy = await start_proxy(_snapshot(echo_app.port, plaintext=False), "--kind", "gateway",
                              "--tls-dir", str(gateway_dir))
    port, admin = proxy.ports["outbound"], proxy.ports["admin"]

    mesh = _client_context(sleep_dir, ca.root_pem)
    assert await _get(port, mesh) == "HTTP/1.1 200 OK"
    assert (await _stats(admin))["mtls_accepted"] == 1
    assert (await _get(port, None)).startswith("refused")  # plaintext: closed unread
    assert (await _get(port, _client_context(None, ca.root_pem))).startswith("refused")  # no certificate
    assert (await _get(port, _client_context(stranger_dir, ca.root_pem))).startswith("refused")  # another CA
    stats = await _stats(admin)
    assert (stats["plaintext_refused"], stats["handshake_failed"], stats["mtls_accepted"]) == (1, 2, 1), stats


async def test_plain_http_is_served_beside_a_plain_http_server(
        echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    gateway_dir = write_tls_dir(ca, GATEWAY, tmp_path / "gateway")
    proxy = await start_proxy(_snapshot(echo_app.port, plaintext=True), "--kind", "gateway",
                              "--tls-dir", str(gateway_dir))
    assert await _get(proxy.ports["outbound"], None) == "HTTP/1.1 200 OK"
    sleep_dir = write_tls_dir(ca, SLEEP, tmp_path / "sleep")
    assert await _get(proxy.ports["outbound"], _client_context(sleep_dir, ca.root_pem)) == "HTTP/1.1 200 OK"
