"""Hypothesis fuzzing of the request parser against a running sidecar process.

Random bytes and mutated requests must never kill the process: each connection gets a
well-formed HTTP answer (400 and friends) or is closed, and a good request on a new
connection still works afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.conftest import ProxyProcess, make_snapshot, spawn_proxy, stop_process

VALID = (
    b"POST http://reviews:9080/reviews/1?x=1 HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 5\r\n"
    b"User-Agent: fuzz\r\nConnection: keep-alive\r\n\r\nhello"
    b"GET /x HTTP/1.1\r\nHost: nowhere\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
)


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    path = workdir / "snap.json"
    path.write_text(json.dumps(make_snapshot(1)))  # upstream port 1: nothing listens (503 UF)
    proxy = spawn_proxy(["--config", str(path)], workdir)
    yield proxy
    assert stop_process(proxy) == 0


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, read until the proxy closes (bounded by a deadline)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def _check_answer(received: bytes) -> None:
    if not received:
        return  # closing without an answer is allowed
    assert received.startswith(b"HTTP/1.1 "), received[:80]
    status = int(received[9:12])
    assert 100 <= status <= 599


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for position, delete, insert in edits:
        at = position % (len(buf) + 1)
        buf[at:at + delete] = insert
    return bytes(buf)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=3000))
def test_random_bytes(fuzz_proxy: ProxyProcess, data: bytes) -> None:
    _check_answer(_exchange(fuzz_proxy.outbound, data))
    assert fuzz_proxy.proc.poll() is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 8), st.binary(max_size=12)
                  | st.sampled_from([b"\r\n", b"\n", b":", b" ", b"\x00", b"chunked", b"999999999999"])),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_requests(fuzz_proxy: ProxyProcess, edits: list[tuple[int, int, bytes]]) -> None:
    _check_answer(_exchange(fuzz_proxy.outbound, _mutate(VALID, edits)))
    assert fuzz_proxy.proc.poll() is None


def _ask(port: int, data: bytes) -> bytes:
    """One request on a connection kept open (no FIN: a half-closed client is a gone client)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def test_still_healthy_after_fuzzing(fuzz_proxy: ProxyProcess) -> None:
    answer = _ask(fuzz_proxy.outbound, b"GET /after HTTP/1.1\r\nHost: nowhere\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 ")
    answer = _ask(fuzz_proxy.outbound, b"GET /after HTTP/1.1\r\nHost: reviews\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")  # upstream refused: the pool survives too
    with socket.create_connection(("127.0.0.1", fuzz_proxy.admin), timeout=5) as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    # No request blew up inside the proxy (those are logged with a traceback).
    assert "Traceback" not in fuzz_proxy.stderr.read_text()
