"""The control plane's TLS port (istiod's 15012), what a cluster's sidecars use.

* it serves the same API with a certificate for the control plane's Service names, issued by the
  mesh's own root: a client that trusts the root and asks for one of those names gets through; a
  wrong name, another root or plaintext does not;
* a real sidecar process pointed at ``https://...`` with ``--control-ca`` (the injector's
  ``MESHKIT_CONTROL_CA``, the mounted ``meshkit-ca-root-cert``) gets its snapshot (SYNCED) and its
  workload certificate over it; one that trusts another root gets neither and says why;
* the certificate is re-issued at half its lifetime and new handshakes get the new one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.ca import CertificateAuthority
from meshkit.control.server import DEFAULT_TLS_HOSTS, run_control_plane
from meshkit.control.serving_tls import ServingTls
from meshkit.k8s import names
from tests.proxy.conftest import spawn_proxy, stop_process

SERVICE_NAME = f"{names.CONTROL_SERVICE}.{names.SYSTEM_NAMESPACE}.svc"
IDENTITY = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"


def _client_context(root_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=root_pem)


async def _get(port: int, context: ssl.SSLContext | None, server_hostname: str | None, token: str) -> bytes:
    """One raw ``GET /api/v1/proxy-status`` over the given TLS settings; the status line."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname), 10)
    try:
        writer.write(f"GET /api/v1/proxy-status HTTP/1.1\r\nHost: {server_hostname or '127.0.0.1'}\r\n"
                     f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def _peer_certificate(port: int, context: ssl.SSLContext, server_hostname: str) -> dict[str, Any]:
    import socket  # noqa: PLC0415

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        certificate = tls.getpeercert()
    assert certificate is not None
    return certificate


def test_the_default_names_are_the_kubernetes_service_s() -> None:
    assert SERVICE_NAME in DEFAULT_TLS_HOSTS and f"{SERVICE_NAME}.cluster.local" in DEFAULT_TLS_HOSTS


async def test_the_tls_port_serves_the_api_with_a_certificate_from_the_mesh_root(tmp_path: Path) -> None:
    running = await run_control_plane(port=0, tls_port=0, state_dir=tmp_path / "control",
                                      record_address=False)
    try:
        assert running.tls is not None and running.tls.port != running.port
        root = running.control_plane.authority.root_pem
        token = running.admin_token
        trusting = _client_context(root)
        for name in (SERVICE_NAME, f"{SERVICE_NAME}.cluster.local", "localhost"):
            assert (await _get(running.tls.port, trusting, name, token)).startswith(b"HTTP/1.1 200"), name
        certificate = await asyncio.to_thread(_peer_certificate, running.tls.port, trusting, SERVICE_NAME)
        assert ("DNS", SERVICE_NAME) in certificate["subjectAltName"]
        # a name the certificate is not for, another root, and plaintext: no API
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
            await _get(running.tls.port, trusting, "evil.example", token)
        other_root = CertificateAuthority.open(tmp_path / "other").root_pem
        with pytest.raises(ssl.SSLCertVerificationError, match="verify failed"):
            await _get(running.tls.port, _client_context(other_root), SERVICE_NAME, token)
        try:
            plain = await _get(running.tls.port, None, None, token)
        except (ConnectionError, asyncio.IncompleteReadError):
            plain = b""
        assert not plain.startswith(b"HTTP/1.1 200")
        # the key stays private in the control plane's state directory
        key_file = running.control_plane.directory / "serving" / "serving-key.pem"
        assert key_file.stat().st_mode & 0o777 == 0o600
    finally:
        await running.close()


async def test_a_tls_port_without_the_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the CA"):
        await run_control_plane(port=0, tls_port=0, state_dir=tmp_path / "control", record_address=False,
                                with_ca=False)


async def _register_productpage(session: aiohttp.ClientSession, url: str) -> None:
    endpoint = {"instance": "productpage-v1-0", "workload": "productpage-v1", "service": "productpage",
                "namespace": "default", "address": "127.0.0.1", "port": 1,
                "labels": {"app": "productpage", "version": "v1"},
                "service_account": "bookinfo-productpage", "has_sidecar": True}
    async with session.post(f"{url}/api/v1/registry/services",
                            json={"name": "productpage", "namespace": "default", "port": 9080}) as answer:
        assert answer.status == 200, await answer.text()
    async with session.post(f"{url}/api/v1/registry/endpoints", json=endpoint) as answer:
        assert answer.status == 200, await answer.text()


async def _until(what: str, check: Any, deadline_s: float = 30.0) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_sidecar_gets_its_snapshot_and_certificate_over_tls(tmp_path: Path) -> None:
    running = await run_control_plane(port=0, tls_port=0, state_dir=tmp_path / "control",
                                      record_address=False)
    proxies = []
    try:
        assert running.tls is not None
        root_file = tmp_path / "root-cert.pem"
        root_file.write_text(running.control_plane.authority.root_pem)
        other_file = tmp_path / "other-root.pem"
        other_file.write_text(CertificateAuthority.open(tmp_path / "other").root_pem)
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout, headers=running.admin_headers) as session:
            await _register_productpage(session, running.url)
            token_file = tmp_path / "token"
            token_file.write_text(running.control_plane.tokens.issue_token(IDENTITY))
            https = f"https://localhost:{running.tls.port}"

            def sidecar(instance: str, root: Path) -> Any:
                proxy = spawn_proxy(["--control", https, "--id", f"{instance}.default",
                                     "--ca-token-file", str(token_file), "--control-ca", str(root)], tmp_path)
                proxies.append(proxy)
                return proxy

            trusted = sidecar("productpage-v1-0", root_file)

            async def certs(proxy: Any) -> dict[str, Any]:
                async with session.get(f"http://127.0.0.1:{proxy.admin}/certs") as answer:
                    return dict(await answer.json(content_type=None))

            async def synced() -> bool:
                async with session.get(f"{running.url}/api/v1/proxy-status") as answer:
                    doc = await answer.json()
                return any(p["id"] == "productpage-v1-0.default" and p["status"] == "SYNCED"
                           for p in doc["proxies"])

            await _until("the sidecar's certificate", lambda: _ready(certs(trusted)))
            assert (await certs(trusted))["identity"] == IDENTITY
            await _until("the sidecar SYNCED over TLS", synced)

            # the same sidecar trusting another root: no snapshot, no certificate, and it says why
            distrusting = sidecar("productpage-v1-1", other_file)

            async def stream_error() -> str | None:
                async with session.get(f"http://127.0.0.1:{distrusting.admin}/config_dump") as answer:
                    return (await answer.json(content_type=None)).get("source_error")

            answer = await _until("the refused stream", stream_error)
            assert "certificate verify failed" in answer
            assert "not trusted" in distrusting.stderr.read_text()  # a warning, at the default level
            async with session.get(f"{running.url}/api/v1/proxy-status") as response:
                ids = [p["id"] for p in (await response.json())["proxies"]]
            assert "productpage-v1-1.default" not in ids
            assert not (await certs(distrusting))["ready"]
    finally:
        for proxy in proxies:
            stop_process(proxy)
        await running.close()


async def _ready(doc: Any) -> bool:
    return bool((await doc).get("ready"))


def test_a_sidecar_refuses_an_https_control_plane_it_cannot_verify_with(tmp_path: Path) -> None:
    proxy = spawn_proxy(["--control", "https://localhost:1", "--id", "x.default",
                         "--control-ca", str(tmp_path / "missing.pem")], tmp_path, wait_ports=False)
    assert proxy.proc.wait(20) == 2
    assert "--control-ca" in proxy.stderr.read_text()


async def test_the_certificate_is_reissued_at_half_its_lifetime(tmp_path: Path) -> None:
    authority = CertificateAuthority.open(tmp_path / "ca")
    serving = ServingTls(authority, [SERVICE_NAME], tmp_path / "serving", ttl=timedelta(seconds=2))
    first = (tmp_path / "serving" / "serving-cert.pem").read_text()
    renewal = asyncio.ensure_future(serving.run())
    try:
        await _until("a re-issued certificate", _issued_twice(serving), deadline_s=20)
    finally:
        renewal.cancel()
    assert (tmp_path / "serving" / "serving-cert.pem").read_text() != first


def _issued_twice(serving: ServingTls) -> Any:
    async def check() -> bool:
        return serving.issued >= 2
    return check
