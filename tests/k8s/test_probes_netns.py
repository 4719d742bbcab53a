"""App probes through the sidecar's status port, in network namespaces (kubelet plays from the peer).

The pod namespace has the capture rules and a real ``meshkit proxy --capture --health-port 15021``
(uid 1337) with the probes the injector would hand it (``MESHKIT_APP_PROBERS``); the app is a
plain HTTP server on 8080. The peer namespace stands where kubelet probes from. A TCP probe to a
captured port connects to the sidecar's inbound listener and "passes" with no app behind it:
`test_a_captured_tcp_probe_passes_with_the_app_down` shows that (the reason for the rewrite). The
rewritten probes on 15021 follow the app: 200 while it answers, 503 once it is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkit.k8s import names
from meshkit.k8s.inject import PROBERS_ENV
from tests.k8s.netns_pod import POD_IP, Namespaces
from tests.k8s.test_passthrough import _capture, _proxy, readable  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

PROBERS = {
    "/app-health/app/readyz": {"httpGet": {"path": "/", "port": 8080}, "timeoutSeconds": 1},
    "/app-health/app/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
    "/app-health/app/startupz": {"tcpSocket": {"port": 9090}, "timeoutSeconds": 1},  # nothing there
}


def _get(namespaces: Namespaces, path: str) -> str:
    code = ("import socket,sys\n"
            f"s=socket.create_connection(({POD_IP!r},{names.PORT_HEALTH}),timeout=5)\n"
            f"s.sendall(b'GET {path} HTTP/1.1\\r\\nHost: k\\r\\nConnection: close\\r\\n\\r\\n')\n"
            "print(s.recv(200).decode().split('\\r\\n')[0])")
    result = subprocess.run([*namespaces.prefix(namespaces.peer), sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=20, check=False)
    return (result.stdout + result.stderr).strip()


def _start_app(namespaces: Namespaces, directory: Path) -> subprocess.Popen[str]:
    app = namespaces.start(namespaces.pod, [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0",
                                            "--directory", str(directory)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _get(namespaces, "/app-health/app/readyz") == "HTTP/1.1 200 OK":
            return app
        time.sleep(0.1)
    pytest.fail("the app never became ready through the status port")


def test_rewritten_probes_follow_the_app(namespaces: Namespaces, readable: Path) -> None:  # noqa: F811
    _proxy(namespaces, readable, "--capture", "--health-port", str(names.PORT_HEALTH),
           env={PROBERS_ENV: json.dumps(PROBERS)})
    _capture(namespaces)
    app = _start_app(namespaces, readable)
    assert _get(namespaces, "/app-health/app/livez") == "HTTP/1.1 200 OK"
    assert _get(namespaces, "/app-health/app/startupz") == "HTTP/1.1 503 Service Unavailable"
    assert _get(namespaces, "/healthz/ready") == "HTTP/1.1 200 OK"  # the sidecar's own readiness
    app.kill()
    app.wait(timeout=10)
    assert _get(namespaces, "/app-health/app/readyz") == "HTTP/1.1 503 Service Unavailable"
    assert _get(namespaces, "/app-health/app/livez") == "HTTP/1.1 503 Service Unavailable"


def test_a_captured_tcp_probe_passes_with_the_app_down(namespaces: Namespaces,
                                                       readable: Path) -> None:  # noqa: F811
    """Why probes are rewritten: kubelet's TCP probe to a captured app port is accepted by the
    sidecar's inbound listener (15006) even though nothing listens on 9090."""
    _proxy(namespaces, readable, "--capture")
    _capture(namespaces)
    answer = namespaces.probe(namespaces.peer, "http", POD_IP, "9090", "app")
    assert answer.startswith("HTTP/1.1 "), answer  # a connection, and an answer from the sidecar
