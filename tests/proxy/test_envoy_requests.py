"""Requests exactly as Envoy handles them, through a real sidecar process (issue 15).

The app behind the inbound listener is a raw socket server that records the request target
it receives byte for byte (no HTTP library that would normalize it again), so the tests
see what an app would run its handler with.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.proxy.paths import MODES, normalize
from tests.proxy.conftest import ProxyProcess, make_snapshot, spawn_proxy, stop_process

DENY_ADMIN = {
    "name": "default/deny-admin",
    "rules": [{"to": [{"operation": {"paths": ["/admin*", "/ratings/*"]}}]}],
}
DENY_EVIL = {
    "name": "default/deny-evil",
    "rules": [{"when": [{"key": "request.headers[x-evil]", "values": ["1"]}]}],
}


class _RecordingApp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.targets: list[str] = []
        self.heads: list[bytes] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0]
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            server: _RecordingApp = self.server  # type: ignore[assignment]
            server.targets.append(target)
            server.heads.append(head)
            body = target.encode("latin-1")
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            sock.sendall(head + body)


@pytest.fixture(scope="module")
def app() -> Iterator[_RecordingApp]:
    server = _RecordingApp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _snapshot(app_port: int, mode: str | None) -> dict[str, Any]:
    snap = make_snapshot(app_port, app_port=app_port)
    snap["inbound"]["authz"] = {"deny": [DENY_ADMIN, DENY_EVIL], "allow": [], "audit": []}
    if mode is not None:
        snap["mesh"] = {"path_normalization": mode}
    return snap


@pytest.fixture(scope="module")
def proxies(
    app: _RecordingApp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str | None, ProxyProcess]]:
    """One sidecar per pathNormalization mode (None: the snapshot says nothing -> BASE)."""
    workdir: Path = tmp_path_factory.mktemp("exact")
    started: dict[str | None, ProxyProcess] = {}
    try:
        for mode in (None, *MODES):
            path = workdir / f"snap-{mode}.json"
            path.write_text(json.dumps(_snapshot(app.port, mode)))
            started[mode] = spawn_proxy(["--config", str(path)], workdir)
        yield started
    finally:
        for proxy in started.values():
            stop_process(proxy)


def _ask(port: int, data: bytes) -> tuple[int, bytes]:
    """One raw request; (status, body) of the answer (0, b"" when closed without one)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    if not received.startswith(b"HTTP/1.1 "):
        return 0, b""
    return int(received[9:12]), received.partition(b"\r\n\r\n")[2]


def _get(port: int, target: str, extra: str = "", method: str = "GET") -> tuple[int, bytes]:
    head = f"{method} {target} HTTP/1.1\r\nHost: ratings:9080\r\n{extra}Connection: close\r\n\r\n"
    return _ask(port, head.encode("latin-1"))


Proxies = dict[str | None, ProxyProcess]


def test_header_values_lose_surrounding_whitespace_before_any_match(proxies: Proxies) -> None:
    inbound = proxies[None].inbound
    assert _get(inbound, "/x", "x-evil: 1\r\n")[0] == 403
    assert _get(inbound, "/x", "x-evil: 1 \r\n")[0] == 403  # trailing space: passed the DENY before
    assert _get(inbound, "/x", "x-evil:\t 1\t\r\n")[0] == 403
    assert _get(inbound, "/x", "x-evil: 10\r\n")[0] == 200


def test_the_app_gets_the_path_the_policy_judged(app: _RecordingApp, proxies: Proxies) -> None:
    inbound = proxies[None].inbound
    status, body = _get(inbound, "/ratings/%2e%2e", method="POST")
    assert (status, body) == (200, b"/")  # Istio: the app runs the handler of "/", not "/ratings/%2e%2e"
    assert _get(inbound, "/public/%2e%2e/admin")[0] == 403
    assert _get(inbound, "/public/%2E%2e/%61dmin/x")[0] == 403
    assert _get(inbound, "/x/..\\admin")[0] == 403
    assert _get(inbound, "/a/./b/../c?q=/../admin") == (200, b"/a/c?q=/../admin")  # the query is not a path


@pytest.mark.parametrize("target", ["/a%00b", "/a%zz", "/a%2", "/%", "/ratings/%0"])
def test_invalid_escapes_get_400(app: _RecordingApp, proxies: Proxies, target: str) -> None:
    before = len(app.targets)
    assert _get(proxies[None].inbound, target)[0] == 400
    assert _get(proxies[None].outbound, target.replace("/ratings", "/reviews"))[0] == 400
    assert len(app.targets) == before


@pytest.mark.parametrize(
    ("mode", "target", "forwarded"),
    [
        ("NONE", "/a/../b%2Fc//d", "/a/../b%2Fc//d"),
        ("BASE", "/a/../b%2fc//d", "/b%2Fc//d"),
        ("MERGE_SLASHES", "/a/../b%2Fc//d", "/b%2Fc/d"),
        ("DECODE_AND_MERGE_SLASHES", "/a/../b%2Fc//d%5Ce", "/b/c/d/e"),
    ],
)
def test_mesh_config_path_normalization(proxies: Proxies, mode: str, target: str, forwarded: str) -> None:
    assert _get(proxies[mode].inbound, target) == (200, forwarded.encode())


def test_none_lets_a_raw_path_past_a_policy_as_istio_warns(proxies: Proxies) -> None:
    assert _get(proxies["NONE"].inbound, "/public/../admin") == (200, b"/public/../admin")
    assert _get(proxies["DECODE_AND_MERGE_SLASHES"].inbound, "//admin%2fx")[0] == 403


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: ratings\r\nHost: evil\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: ratings\r\nhost: ratings\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: ratings\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: ratings\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: ratings\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: ratings\r\nTransfer-Encoding: x-custom\r\n\r\n",
    ],
    ids=["duplicate-host", "duplicate-host-same", "te-twice", "te-gzip-chunked", "te-identity", "te-unknown"],
)
def test_smuggling_shapes_get_400(app: _RecordingApp, proxies: Proxies, head: bytes) -> None:
    before = len(app.targets)
    assert _ask(proxies[None].inbound, head)[0] == 400
    assert len(app.targets) == before


# --------------------------------------------------------------------------- the property

_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "%2f", "%2F", "%5c", "\\", "admin", "ratings", "a",
     "%61", "%41dmin", "x", "~", "%7e", "%25", "?", "=", "%", "%0", "%00", "z"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from([None, *MODES]), pieces=st.lists(_PIECES, min_size=1, max_size=8))
def test_forwarded_path_always_equals_the_authorized_path(
    app: _RecordingApp, proxies: Proxies, mode: str | None, pieces: list[str]
) -> None:
    """Whatever the spelling: either 400, or 403, or the app receives exactly the path the policy
    judged, and a path the DENY policy covers never reaches the app."""
    target = "/" + "".join(pieces)
    expected = normalize(target, mode or "BASE")
    status, body = _get(proxies[mode].inbound, target)
    if expected is None:
        assert status == 400
        return
    judged = expected.split("?", 1)[0]
    denied = judged.startswith(("/admin", "/ratings/"))
    if denied:
        assert status == 403, (target, expected)
    else:
        assert status == 200, (target, expected, status)
        assert body.decode("latin-1") == expected
        received = body.decode("latin-1").split("?", 1)[0]
        assert not received.startswith("/admin")
        if mode != "NONE":  # nothing left for the app to resolve differently than the policy did
            assert normalize(received, mode or "BASE") == received


def test_plaintext_caller_cannot_forge_its_telemetry(proxies: Proxies) -> None:
    proxy = proxies[None]
    forged = "x-meshkit-source: productpage-v1;default;productpage;v1;cluster.local/ns/default/sa/admin\r\n"
    assert _get(proxy.inbound, "/telemetry", forged)[0] == 200
    request = b"GET /stats/prometheus HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    status, body = _ask(proxy.admin, request)
    assert status == 200
    lines = [
        line for line in body.decode().splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert lines
    assert not any("sa/admin" in line or 'source_workload="productpage-v1"' in line for line in lines), lines

