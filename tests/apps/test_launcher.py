"""``python -m meshkit.apps``: bad options fail fast with a clear message; SIGTERM stops cleanly."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.processes import STOP_TIMEOUT_S, AppProcesses

EXIT_TIMEOUT_S = 20.0


def _fails(processes: AppProcesses, app: str, *args: str, env: dict[str, str] | None = None) -> str:
    process, log = processes.spawn(app, *args, env=env)
    try:
        code = process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        assert process.stdout is not None
        process.stdout.close()
    assert code == 2, f"{app} {args} exited {code}"
    return log.read_text()


@pytest.fixture
def processes() -> Iterator[AppProcesses]:
    running = AppProcesses()
    try:
        yield running
    finally:
        running.stop_all()


def test_unknown_reviews_version_needs_a_star_colour(processes: AppProcesses) -> None:
    stderr = _fails(processes, "reviews", "--port", "0", "--version", "v4")
    assert "reviews --version 'v4'" in stderr and "--star-color" in stderr


def test_malformed_http_proxy_is_named(processes: AppProcesses) -> None:
    stderr = _fails(processes, "productpage", "--port", "0", env={"HTTP_PROXY": "127.0.0.1:15001"})
    assert "error: productpage: HTTP_PROXY" in stderr


def test_bad_port_and_unknown_app_are_usage_errors(processes: AppProcesses) -> None:
    assert "--port" in _fails(processes, "details", "--port", "http")
    assert "invalid choice: 'bookstore'" in _fails(processes, "bookstore", "--port", "0")


def test_a_taken_port_is_reported(processes: AppProcesses) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = _fails(processes, "ratings", "--port", str(port))
    assert f"ratings-v1-0: cannot listen on 127.0.0.1:{port}" in stderr


def test_reviews_v4_with_a_colour_runs_and_sigterm_stops_it(processes: AppProcesses) -> None:
    running = processes.launch("reviews", "--version", "v4", "--star-color", "none", "--instance", "rv4")
    with urllib.request.urlopen(f"{running.url}/reviews/0", timeout=10) as answer:
        assert b'"podname": "rv4"' in answer.read()
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(EXIT_TIMEOUT_S) == 0


def test_app_processes_run_without_openssl(processes: AppProcesses) -> None:
    """Issue 4's memory budget: an app process maps neither libssl nor libcrypto (about 7 MiB of
    RSS each), and an https:// fetch is refused with a clear 400 instead of failing inside aiohttp."""
    running = processes.launch("legacy")
    maps = Path(f"/proc/{running.process.pid}/maps").read_text()
    assert "libpython" in maps or "python" in maps  # the detector reads a real Python's maps
    loaded = [line.split()[-1] for line in maps.splitlines() if "libssl" in line or "libcrypto" in line]
    assert loaded == [], f"the app process loaded OpenSSL: {sorted(set(loaded))}"
    try:
        urllib.request.urlopen(f"{running.url}/fetch?url=https://127.0.0.1:9/x", timeout=10)
    except urllib.error.HTTPError as refused:
        assert refused.code == 400
        assert "must be http://" in refused.read().decode()
    else:
        raise AssertionError("an https:// fetch was not refused")
