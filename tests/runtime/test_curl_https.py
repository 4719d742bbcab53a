"""`meshkit exec ... -- curl https://...` against a real TLS server: the external stand-ins' own process
(``python -m meshkit.apps external`` with its HTTPS port and the stand-ins' CA, as `meshkit up` starts
it), reached from ``legacy`` (no sidecar: straight to the stand-in, as DNS would resolve the name).

The CONNECT tunnel through a real sidecar is tested end to end with the sidecar's CONNECT support
(tests/e2e); here only the reading of a proxy's answer to CONNECT, on a socket pair.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.runtime import curl_tls
from meshkit.runtime.catalog import EXTERNAL_HOSTS, EXTERNAL_TLS_DELTA
from meshkit.runtime.curl import CurlError, _route, curl
from meshkit.runtime.exec_command import ExecError, execute
from meshkit.runtime.ports import PortPlan, busy_ports, free_bases
from meshkit.runtime.standin_tls import ensure, issue_ca, pem
from meshkit.runtime.state import StateDir
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _rows(app_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "legacy-v1-0", "service": "legacy", "namespace": "default", "healthy": True,
         "app_port": app_port - 100, "inbound_port": None, "outbound_proxy": None},
        {"name": "sleep-v1-0", "service": "sleep", "namespace": "default", "healthy": True,
         "app_port": app_port - 200, "inbound_port": app_port - 274, "outbound_proxy": "http://127.0.0.1:9"},
        {"name": "external-v1-0", "service": "external", "namespace": "default", "healthy": True,
         "app_port": app_port, "inbound_port": None, "outbound_proxy": None},
    ]


class StandIns:
    def __init__(self, state: StateDir, app_port: int) -> None:
        self.state, self.app_port, self.tls_port = state, app_port, app_port + EXTERNAL_TLS_DELTA
        self.rows = _rows(app_port)

    def run(self, *argv: str) -> tuple[int, str]:
        printed: list[str] = []
        code = execute(self.state, self.rows, "deploy/legacy", list(argv), out=printed.append)
        return code, "".join(printed)


def _free_app_port() -> int:
    for base in free_bases(1):
        app = PortPlan(base).instance(0).app
        if not busy_ports([app, app + EXTERNAL_TLS_DELTA]):
            return app
    raise AssertionError("no free port pair below the ephemeral range")


def _serving(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIns]:
    state = StateDir.open(tmp_path_factory.mktemp("curlhttps"))
    files = ensure(state.root, EXTERNAL_HOSTS)
    port = _free_app_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "meshkit.apps", "external", "--port", str(port), "--instance", "external-v1-0",
         "--tls-port", str(port + EXTERNAL_TLS_DELTA), "--tls-cert", str(files.cert_file),
         "--tls-key", str(files.key_file)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: process.poll() is not None or (_serving(port) and _serving(port + 1)), 20,
                   "the stand-ins to listen")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield StandIns(state, port)
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def test_https_from_legacy_goes_straight_to_the_stand_in_and_trusts_its_ca(standins: StandIns) -> None:
    result = curl(standins.state, standins.rows, "legacy", "https://edition.cnn.com/politics")
    assert (result.status, result.status_line) == (200, "HTTP/1.1 200 OK"), result
    assert result.header("x-standin-scheme") == "https" and "politics" in result.text
    assert result.request_id == ""  # no sidecar sees it: no x-request-id of meshkit's own
    headers = curl(standins.state, standins.rows, "legacy", "https://httpbin.org/headers").json()
    assert headers["headers"]["Host"] == "httpbin.org"
    assert not any(name.lower() == "x-request-id" for name in headers["headers"])


def test_the_egress_tasks_curl_follows_the_301_to_https_and_prints_each_hop(standins: StandIns) -> None:
    """``curl -sSL -o /dev/null -D - http://edition.cnn.com/politics``, as in "Egress Gateways"."""
    code, shown = standins.run("curl", "-sSL", "-o", "/dev/null", "-D", "-", "http://edition.cnn.com/politics")
    assert code == 0, shown
    first, second = shown.split("\n\n")[:2]
    assert first.startswith("HTTP/1.1 301 Moved Permanently\n"), shown
    assert "location: https://edition.cnn.com/politics" in first.lower()
    assert second.startswith("HTTP/1.1 200 OK\n") and "x-standin-scheme: https" in second.lower(), shown
    assert "<html>" not in shown  # -o /dev/null: no body, of either hop
    code, shown = standins.run("curl", "-sI", "https://www.google.com")  # "Accessing External Services"
    assert code == 0 and shown.startswith("HTTP/1.1 200 OK\n"), shown
    code, shown = standins.run("curl", "-s", "-L", "--max-redirs", "0", "-w", "%{http_code} %{num_redirects}",
                               "http://edition.cnn.com/politics")
    assert (code, shown) == (47, "301 0"), shown


def test_certificate_checks_map_to_curl_s_exit_60(standins: StandIns, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_text(pem(issue_ca("another CA")[0]))
    code, shown = standins.run("curl", "-sS", "--cacert", str(other), "https://httpbin.org/get")
    assert code == 60 and shown.startswith("curl: (60) SSL certificate problem: "), shown
    code, shown = standins.run("curl", "-sS", "-k", "--cacert", str(other), "https://httpbin.org/status/418")
    assert code == 0 and '"status": 418' in shown, shown
    code, shown = standins.run("curl", "-sS", "--cacert", str(curl_tls.standin_ca(standins.state.root)),
                               "https://httpbin.org/get", "-o", "/dev/null", "-w", "%{http_code}")
    assert (code, shown) == (0, "200")
    # loopback bypasses the proxy; the certificate names the hosts, not 127.0.0.1
    loopback = f"https://127.0.0.1:{standins.tls_port}/"
    code, shown = standins.run("curl", "-sS", loopback, "-w", "%{http_code}\\n")
    assert code == 60, shown
    assert shown == ("000\ncurl: (60) SSL: no alternative certificate subject name matches target host "
                     "name '127.0.0.1'\n")
    assert standins.run("curl", "-sk", loopback, "-o", "/dev/null", "-w", "%{http_code}") == (0, "404")
    with pytest.raises(ExecError, match="CAfile: /nonexistent"):
        standins.run("curl", "--cacert", "/nonexistent", "https://httpbin.org/get")


def test_handshake_failures_map_to_curl_s_exit_35(standins: StandIns) -> None:
    # plaintext HTTP where TLS was expected: OpenSSL's "wrong version number"
    plaintext = f"https://127.0.0.1:{standins.app_port}/"
    code, shown = standins.run("curl", "-sS", plaintext, "-w", "%{http_code}\\n")
    assert code == 35, shown
    assert shown.startswith("000\ncurl: (35) SSL connect error in connection to 127.0.0.1:"), shown
    # a peer that closes the connection when the ClientHello arrives (as a sidecar blocking the host does)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def close_on_hello() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)

        closer = threading.Thread(target=close_on_hello, daemon=True)
        closer.start()
        code, shown = standins.run("curl", "-sS", f"https://127.0.0.1:{port}/")
        closer.join(10)
    assert (code, shown) == (35, f"curl: (35) OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to "
                                 f"127.0.0.1:{port}\n")
    assert standins.run("curl", "-s", f"https://127.0.0.1:{port}/") == (7, "")  # nobody listens now: refused


def test_https_routes(standins: StandIns) -> None:
    state, rows = standins.state, standins.rows
    tunnel = _route(state, rows, rows[1], "https://edition.cnn.com/politics?x=1")
    assert (tunnel.port, tunnel.tunnel, tunnel.tls_host, tunnel.target) == (
        9, "edition.cnn.com:443", "edition.cnn.com", "/politics?x=1")
    assert tunnel.access_log is None  # the sidecar logs a TCP connection: no request id to wait for
    direct = _route(state, rows, rows[0], "https://httpbin.org:443/get")
    assert (direct.port, direct.tunnel, direct.tls_host) == (standins.tls_port, None, "httpbin.org")
    plain = _route(state, rows, rows[0], "http://httpbin.org/get")
    assert (plain.port, plain.tls_host) == (standins.app_port, None)
    with pytest.raises(CurlError, match=r"legacy-v1-0 has no sidecar: https from it to 'example\.com' is "
                                        r"not supported here"):
        _route(state, rows, rows[0], "https://example.com/")


@pytest.mark.parametrize(("answer", "failure"), [
    (b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01", None),
    (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n", "CONNECT tunnel failed, response 403"),
    (b"HTTP/1.1 200 OK\r\n", "Proxy CONNECT aborted"),  # closed before the blank line
])
def test_reading_the_proxy_s_answer_to_connect(answer: bytes, failure: str | None) -> None:
    ours, proxy = socket.socketpair()
    with ours, proxy:
        proxy.sendall(answer)
        proxy.shutdown(socket.SHUT_WR)
        if failure is None:
            curl_tls.open_tunnel(ours, "edition.cnn.com:443")
            assert ours.recv(16) == b"\x16\x03\x01"  # what follows the answer is the server's: left unread
        else:
            with pytest.raises(curl_tls.TlsFailure, match=failure):
                curl_tls.open_tunnel(ours, "edition.cnn.com:443")
        sent = proxy.recv(1024)
    assert sent == b"CONNECT edition.cnn.com:443 HTTP/1.1\r\nHost: edition.cnn.com:443\r\n\r\n"
