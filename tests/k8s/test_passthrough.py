"""A captured pod's outbound traffic that is not mesh HTTP passes through its sidecar unchanged.

A pod network namespace with the committed capture rules (``operator/meshkit-init.sh``) and a
real ``meshkit proxy --capture`` running as uid 1337, as the injector runs it; a peer namespace
plays the outside world: a server-first TCP service (the probe answers first, like a database
greeting) and a TLS server with its own certificate (external HTTPS). An unmodified client in
the pod reaches both *through* the sidecar: the proxy reads ``SO_ORIGINAL_DST`` and proxies the
bytes to it (``PassthroughCluster``). Before, every outbound connection went to the HTTP
listener, which waited for a request line: the server-first call got nothing and the TLS
handshake failed (404 NR for anything that parsed). HTTP still goes to the HTTP pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.k8s import names
from meshkit.k8s.webhook import write_certificate
from tests.k8s.netns_pod import PEER_IP, SCRIPT, Namespaces
from tests.proxy.conftest import make_snapshot

pytestmark = pytest.mark.timeout(120)


def _proxy(namespaces: Namespaces, readable: Path, *extra: str, env: dict[str, str] | None = None,
           config: dict[str, object] | None = None) -> None:
    snapshot = readable / "snapshot.json"
    snapshot.write_text(json.dumps(config or {"schema": 1, "version": "empty"}))
    snapshot.chmod(0o644)
    argv = [sys.executable, "-m", "meshkit.proxy", "--config", str(snapshot), "--address", "0.0.0.0",
            "--outbound-port", str(names.PORT_OUTBOUND), "--inbound-port", str(names.PORT_INBOUND),
            "--admin-port", str(names.PORT_ADMIN), *extra]
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                   **(env or {})}
    process = namespaces.start(namespaces.pod, argv, uid=names.PROXY_UID, env=environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ready once the admin port answers inside the pod
        assert process.poll() is None, f"the proxy exited: {process.stderr.read() if process.stderr else ''}"
        if _admin(namespaces, "/ready").startswith("LIVE"):
            return
        time.sleep(0.1)
    pytest.fail("the proxy did not become ready")


def _admin(namespaces: Namespaces, path: str) -> str:
    url = f"http://127.0.0.1:{names.PORT_ADMIN}{path}"
    code = (f"import urllib.request\ntry:\n print(urllib.request.urlopen({url!r}, timeout=5)"
            f".read().decode())\nexcept Exception as e:\n print('error', e)")
    result = subprocess.run([*namespaces.prefix(namespaces.pod), sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=20, check=False)
    return result.stdout.strip()


def _capture(namespaces: Namespaces) -> None:
    result = subprocess.run([*namespaces.prefix(namespaces.pod), "sh", str(SCRIPT)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture()
def readable() -> Iterator[Path]:
    """A directory uid 1337 can read (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="mk18-") as directory:
        Path(directory).chmod(0o755)
        yield Path(directory)


@pytest.fixture()
def certificate(tmp_path: Path) -> tuple[str, str]:
    cert, key = write_certificate(tmp_path / "tls", ["api.example.test"])
    return str(cert), str(key)


def test_non_http_and_tls_pass_through_the_sidecar(namespaces: Namespaces, readable: Path,
                                                   certificate: tuple[str, str]) -> None:
    pod, peer = namespaces.pod, namespaces.peer
    namespaces.listen(peer, 5432)  # answers first: "<peer> 5432 none"
    namespaces.listen_tls(peer, 8443, *certificate)
    namespaces.listen(peer, 9080)  # not HTTP: it answers its line, so a passed-through call shows it
    # the mesh knows "reviews": its endpoint is an HTTP app in the pod (127.0.0.1:9081)
    namespaces.start(pod, [sys.executable, "-m", "http.server", "9081", "--bind", "127.0.0.1",
                           "--directory", str(readable)])
    _proxy(namespaces, readable, "--capture", config=make_snapshot(9081))
    _capture(namespaces)

    assert namespaces.connect(pod, PEER_IP, 5432) == f"{peer} 5432 none"
    tls = namespaces.probe(pod, "tls-connect", PEER_IP, "8443", certificate[0], "api.example.test")
    assert tls == f"{peer} tls api.example.test"
    # HTTP for a mesh host goes to the HTTP pipeline (routed to reviews' endpoint) ...
    deadline = time.monotonic() + 20
    while (routed := namespaces.probe(pod, "http", PEER_IP, "9080", "reviews")) != "HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, routed  # (until the app in the pod listens)
        time.sleep(0.1)
    # ... HTTP for a host the mesh does not know passes through to where it was going (ALLOW_ANY)
    assert namespaces.probe(pod, "http", PEER_IP, "9080", "example.com") == f"{peer} 9080 none"

    stats = json.loads(_admin(namespaces, "/stats"))["passthrough"]
    assert stats["cx_total"] == 3 and stats["http_unknown_host"] == 1 and stats["cx_connect_fail"] == 0
    assert stats["http"] >= 1
    assert stats["bytes_received"] > 0 and stats["bytes_sent"] > 0
    metrics = _admin(namespaces, "/stats/prometheus")
    opened = next(line for line in metrics.splitlines()
                  if line.startswith("istio_tcp_connections_opened_total{"))
    # Istio's stats filter on TCP: no service for PassthroughCluster, the cluster's name in _name
    assert 'destination_service="unknown"' in opened and opened.endswith(" 3")
    assert 'destination_service_name="PassthroughCluster"' in opened


def test_without_passthrough_the_captured_calls_fail(namespaces: Namespaces, readable: Path,
                                                     certificate: tuple[str, str]) -> None:
    """What injected pods had before ``--capture``: the same calls fail at the HTTP listener."""
    pod, peer = namespaces.pod, namespaces.peer
    namespaces.listen(peer, 5432)
    namespaces.listen_tls(peer, 8443, *certificate)
    _proxy(namespaces, readable)
    _capture(namespaces)
    assert not namespaces.connect(pod, PEER_IP, 5432).startswith(peer)
    assert namespaces.probe(pod, "tls-connect", PEER_IP, "8443", certificate[0],
                            "api.example.test").startswith("error")

