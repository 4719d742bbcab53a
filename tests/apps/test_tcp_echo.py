"""Istio's tcp-echo server as a real process over real sockets: ``<prefix> <line>`` per line, as the sample's
Go server (samples/tcp-echo/src/main.go) writes, and the connection closed once the client half-closes."""

from __future__ import annotations

import socket
import time

from tests.apps.processes import AppProcesses

READ_TIMEOUT_S = 5.0


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, read until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the server did not close within {READ_TIMEOUT_S}s; got {received!r}")


def test_each_line_comes_back_with_the_prefix_and_the_server_closes(processes: AppProcesses) -> None:
    one, two = processes.launch_many([("tcp-echo", ("--prefix", "one", "--version", "v1"), None),
                                      ("tcp-echo", ("--prefix", "two", "--version", "v2"), None)])
    assert _exchange(one.port, b"Mon Nov 12 23:24:57 UTC 2022\n") == b"one Mon Nov 12 23:24:57 UTC 2022\n"
    assert _exchange(two.port, b"hello\nworld\n") == b"two hello\ntwo world\n"
    # as the Go server: a last piece without a newline gets no answer, the connection just ends
    assert _exchange(one.port, b"a\nno newline") == b"one a\n"
    assert _exchange(one.port, b"") == b""


def test_a_line_is_answered_while_the_connection_stays_open(processes: AppProcesses) -> None:
    echo = processes.launch("tcp-echo", "--prefix", "one")
    with socket.create_connection(("127.0.0.1", echo.port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(b"first\n")
        assert sock.recv(100) == b"one first\n"  # not waiting for the client to close
        sock.sendall(b"second\n")
        assert sock.recv(100) == b"one second\n"


def test_it_speaks_no_http_and_runs_without_aiohttp(processes: AppProcesses) -> None:
    echo = processes.launch("tcp-echo")  # default prefix: "one", as tcp-echo-v1
    assert _exchange(echo.port, b"GET /healthz HTTP/1.1\r\n\r\n") == b"one GET /healthz HTTP/1.1\r\none \r\n"
    with open(f"/proc/{echo.process.pid}/maps", encoding="utf-8") as maps:
        assert "aiohttp" not in maps.read()  # its C parser would be mapped had it been imported


def test_the_launcher_lists_it_and_its_prefix_option(processes: AppProcesses) -> None:
    process, log = processes.spawn("tcp-echo", "--help")
    assert process.stdout is not None
    out = process.stdout.read().decode()
    process.wait(10)
    process.stdout.close()
    assert "--prefix" in out and process.returncode == 0, log.read_text()
