"""NetworkPolicy egress for a pod without a sidecar (`meshkit.runtime.egress_gate`): `meshkit exec`'s curl
from it connects itself, so the gate decides; a dropped connection prints curl's (28) after
``--connect-timeout``. The destination is a real HTTP server on 127.0.0.1 that counts connections."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.config.loader import load_resources
from meshkit.runtime.curl import curl
from meshkit.runtime.egress_gate import gate_from
from meshkit.runtime.exec_command import execute, parse_curl
from meshkit.runtime.state import StateDir

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-httpbin, namespace: legacy}
spec:
  podSelector: {matchLabels: {app: sleep}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {app: httpbin}}}]
    ports: [{port: 8000}]
---
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {team: web}}
"""


class _Counting(http.server.BaseHTTPRequestHandler):
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Counting.served = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _rows(port: int, namespace: str) -> list[dict[str, Any]]:
    return [{"name": "sleep-0.legacy", "namespace": "legacy", "service": "sleep", "healthy": True,
             "inbound_port": None, "outbound_proxy": None, "admin_port": None},
            {"name": f"httpbin-0.{namespace}", "namespace": namespace, "service": "httpbin",
             "healthy": True, "inbound_port": port, "outbound_proxy": None}]


def _gate(namespace: str) -> Any:
    items = [{"resource": r.to_dict()} for r in load_resources(POLICY)]
    labels = {"sleep-0.legacy": {"app": "sleep"}, f"httpbin-0.{namespace}": {"app": "httpbin"}}
    return gate_from(items, labels)


def test_an_allowed_destination_is_reached(tmp_path: Path, server: int) -> None:
    rows = _rows(server, "foo")
    result = curl(StateDir.open(tmp_path), rows, "sleep-0.legacy", "http://httpbin.foo:8000/",
                  egress=_gate("foo"))
    assert result.status == 200 and _Counting.served == 1


def test_a_destination_no_rule_allows_is_dropped(tmp_path: Path, server: int) -> None:
    rows = _rows(server, "bar")  # namespace bar has no team=web label
    result = curl(StateDir.open(tmp_path), rows, "sleep-0.legacy", "http://httpbin.bar:8000/",
                  egress=_gate("bar"), connect_timeout=0.05)
    assert result.status is None and _Counting.served == 0
    assert result.error == "Failed to connect to httpbin.bar port 8000 after 50 ms: Connection timed out"
    # without the policy the same request goes through
    assert curl(StateDir.open(tmp_path), rows, "sleep-0.legacy", "http://httpbin.bar:8000/").status == 200


def test_exec_prints_curls_28(tmp_path: Path, server: int) -> None:
    printed: list[str] = []
    code = execute(StateDir.open(tmp_path), _rows(server, "bar"), "sleep-0.legacy",
                   ["curl", "-sS", "--connect-timeout", "0.05", "http://httpbin.bar:8000/"],
                   out=printed.append, egress=_gate("bar"))
    assert code == 28 and _Counting.served == 0
    assert printed == [
        "curl: (28) Failed to connect to httpbin.bar port 8000 after 50 ms: Connection timed out\n"]


def test_connect_timeout_is_parsed() -> None:
    call = parse_curl(["--connect-timeout", "3", "-m", "9", "http://x/"])
    assert (call.connect_timeout, call.timeout) == (3.0, 9.0)
