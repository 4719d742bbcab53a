"""Helpers for the security end-to-end tests: a real local mesh with mTLS, and ways to talk to it.

Everything goes to 127.0.0.1: through a workload's sidecar used as an HTTP proxy (the caller
then has that workload's identity, as an app in the mesh would), straight to a sidecar's
inbound port with a test client certificate, or through the out-of-mesh ``legacy`` client.
Every call is bounded in time.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, CertificateAuthority
from meshkit.proxy.tls.x509 import LocalCertificateManager
from tests.e2e.mesh import RunningMesh, start_mesh

TIMEOUT = 15.0
NS = "default"


def spiffe(service_account: str, namespace: str = NS) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}"


@contextmanager
def secure_mesh(home: Path, apps: list[str], *, cert_ttl: str = "24h",
                attempts: int = 4) -> Iterator[RunningMesh]:
    """A mesh of ``apps`` on a free port base with certificates of ``cert_ttl``; always stopped."""
    with start_mesh(home, apps, attempts=attempts, cert_ttl=cert_ttl) as running:
        yield running


def through(mesh: RunningMesh, instance: str, url: str, *, method: str = "GET",
            body: bytes | None = None) -> tuple[int, str]:
    """Send one request through ``instance``'s sidecar (as that workload would); (status, body)."""
    proxy = mesh.workload(instance)["outbound_proxy"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    try:
        with opener.open(request, timeout=TIMEOUT) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def get(url: str) -> tuple[int, str]:
    """A direct GET (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def admin(mesh: RunningMesh, instance: str, page: str) -> Any:
    status, text = get(f"http://127.0.0.1:{mesh.workload(instance)['admin_port']}{page}")
    assert status == 200, f"{instance} admin {page}: {status} {text[:200]}"
    return json.loads(text) if page != "/stats/prometheus" else text


def legacy_fetch(mesh: RunningMesh, url: str) -> dict[str, Any]:
    """Ask the out-of-mesh ``legacy`` client (no sidecar) to GET ``url``; its /fetch report."""
    app_port = mesh.workload("legacy-v1-0")["app_port"]
    status, text = get(f"http://127.0.0.1:{app_port}/fetch?url={quote(url, safe='')}&timeout=5")
    assert status == 200, f"legacy /fetch: {status} {text[:200]}"
    report: dict[str, Any] = json.loads(text)
    return report


def requests_total(mesh: RunningMesh, instance: str, **labels: str) -> float:
    """Sum of ``istio_requests_total`` on ``instance``'s sidecar over the series matching ``labels``."""
    text = admin(mesh, instance, "/stats/prometheus")
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "istio_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- certificates a test client holds ------------------------------------------------------------


def mesh_ca(mesh: RunningMesh) -> CertificateAuthority:
    """The mesh's own CA, opened from its state dir (as a thief with the root key could)."""
    return CertificateAuthority.open(mesh.home / "control" / "ca")


def client_manager(authority: CertificateAuthority, identity: str, *, ttl: timedelta = timedelta(hours=1),
                   now: datetime | None = None) -> LocalCertificateManager:
    """A CertificateManager holding a certificate ``authority`` signed for ``identity``.

    With ``now`` in the past the certificate may already be expired; it is installed as of
    ``now`` (``rotate`` itself refuses an expired certificate).
    """
    manager = LocalCertificateManager(identity)
    cert = authority.sign_csr(manager.new_csr(), identity, ttl, now=now)
    manager.rotate(cert, authority.root_pem, now=now.timestamp() if now is not None else None)
    return manager


def issue_token(mesh: RunningMesh, identity: str) -> str:
    """A CA bootstrap token for ``identity``, written where the runtime writes them."""
    return BootstrapTokens.open(mesh.home / "control" / "ca" / TOKENS_FILE).issue_token(identity)


def tls_get(port: int, context: ssl.SSLContext, path: str, host: str) -> bytes:
    """One HTTP/1.1 GET over TLS straight to a sidecar's inbound port; the raw answer or b"".

    A refused client certificate shows as a handshake error, a reset or an empty read: all
    are returned as b"" (nothing was served), so callers assert on the status line.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=None) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            for _ in range(1000):
                data = tls.recv(65536)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)
    except (ssl.SSLError, ConnectionError, OSError):
        return b""
