"""`meshkit exec ... -- sh -c SCRIPT`: the shell shapes Istio's tasks use, read and run without a shell.

The nc tests talk to a real tcp-echo app process (``python -m meshkit.apps tcp-echo``) over real sockets;
the TCP traffic-shifting task's ``(date; sleep 1) | nc HOST PORT`` prints ``one <date>``.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime.exec_command import ExecError, execute
from meshkit.runtime.mini_shell import Shell, ShellError, busybox_date, parse, tokens
from meshkit.runtime.state import StateDir
from tests.apps.processes import AppProcesses, RunningApp

DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d UTC \d{4}$")


@pytest.fixture(scope="module")
def echo_one() -> Iterator[RunningApp]:
    processes = AppProcesses()
    try:
        yield processes.launch("tcp-echo", "--prefix", "one", "--version", "v1")
    finally:
        processes.stop_all()


def _shell(printed: list[str], curls: list[list[str]] | None = None, **kwargs: object) -> Shell:
    def curl(argv: list[str], out: object) -> int:
        (curls if curls is not None else []).append(argv)
        assert callable(out)
        out("200\n")
        return 0

    return Shell(out=printed.append, curl=curl, **kwargs)  # type: ignore[arg-type]


def test_date_has_the_sleep_image_s_default_format_in_utc() -> None:
    assert busybox_date(1668295497) == "Sat Nov 12 23:24:57 UTC 2022"
    assert busybox_date(1667430000) == "Wed Nov  2 23:00:00 UTC 2022"  # %e: the day padded with a space
    assert DATE.match(busybox_date())


def test_the_task_s_script_prints_one_and_the_date(echo_one: RunningApp) -> None:
    printed: list[str] = []
    started = time.monotonic()
    status = _shell(printed).run(f"(date; sleep 1) | nc 127.0.0.1 {echo_one.port}")
    took = time.monotonic() - started
    text = "".join(printed)
    assert status == 0 and text.startswith("one ") and text.endswith("\n"), text
    assert DATE.match(text[len("one "):-1]), text
    assert 1.0 <= took < 1.0 + 2.5  # the connection stays open while `sleep 1` runs, then the server closes


def test_nc_sends_as_the_left_side_writes_and_reads_until_the_server_closes(echo_one: RunningApp) -> None:
    printed: list[str] = []
    assert _shell(printed).run(f"(echo a; sleep 0.2; echo b) | nc localhost {echo_one.port}") == 0
    assert "".join(printed) == "one a\none b\n"
    printed.clear()
    assert _shell(printed).run(f"echo -n partial | nc 127.0.0.1 {echo_one.port}") == 0
    assert printed == []  # no newline, no answer: as the Go server


def test_nc_lingers_at_most_about_two_seconds_for_a_server_that_never_closes() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []

        def answer_and_hold() -> None:
            conn, _ = server.accept()
            accepted.append(conn)
            conn.recv(100)
            conn.sendall(b"held\n")

        thread = threading.Thread(target=answer_and_hold, daemon=True)
        thread.start()
        printed: list[str] = []
        started = time.monotonic()
        assert _shell(printed).run(f"echo x | nc 127.0.0.1 {server.getsockname()[1]}") == 0
        assert 1.5 < time.monotonic() - started < 4.0
        assert printed == ["held\n"]
        thread.join(5)
        for conn in accepted:
            conn.close()


def test_nc_to_a_closed_port_says_so_as_busybox_and_exits_1() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, not listening: refused
        printed: list[str] = []
        assert _shell(printed).run(f"nc 127.0.0.1 {port}") == 1
    assert printed == ["nc: can't connect to remote host (127.0.0.1): Connection refused\n"]


def test_sequences_groups_and_curl() -> None:
    printed: list[str] = []
    curls: list[list[str]] = []
    slept: list[float] = []
    shell = _shell(printed, curls, sleep=slept.append)
    script = "echo a; sleep 2 && echo b || echo c; (echo d; curl -s -w '%{http_code}\\n' http://httpbin:8000/get)"
    assert shell.run(script) == 0
    assert "".join(printed) == "a\nb\nd\n200\n" and slept == [2.0]
    assert curls == [["-s", "-w", "%{http_code}\\n", "http://httpbin:8000/get"]]


def test_a_name_of_the_mesh_resolves_through_the_caller(echo_one: RunningApp) -> None:
    printed: list[str] = []
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, int] | None:
        asked.append((host, port))
        return ("127.0.0.1", echo_one.port) if host == "tcp-echo" else None

    assert _shell(printed, resolve=resolve).run("echo hi | nc tcp-echo 9000") == 0
    assert printed == ["one hi\n"] and asked == [("tcp-echo", 9000)]
    with pytest.raises(ShellError, match=r"'istio\.io' is neither a loopback address"):
        _shell(printed, resolve=resolve).run("nc istio.io 80")


def test_operators_quotes_and_newlines() -> None:
    assert tokens("(date; sleep 1)|nc 127.0.0.1 31400") == [
        "(", "date", ";", "sleep", "1", ")", "|", "nc", "127.0.0.1", "31400"]
    assert tokens("curl -w \"%{http_code}\\n\" -H'a: b' x\ndate\n") == [
        "curl", "-w", "%{http_code}\\n", "-Ha: b", "x", ";", "date", ";"]
    assert len(parse("date\n\ndate;").steps) == 2


@pytest.mark.parametrize(("script", "message"), [
    ("ls -l", "'ls' does not run here; supported in sh -c: date, sleep N"),
    ("date | grep x", "a pipe into 'grep x' is not supported: only LEFT | nc HOST PORT"),
    ("date | nc 127.0.0.1 1 | nc 127.0.0.1 2", "one pipe only"),
    ("echo $HOME", "variables and command substitution are not supported"),
    ("echo `id`", "variables and command substitution are not supported"),
    ("date > /tmp/x", r"redirections \(>\) are not supported"),
    ("sleep 5 &", r"background jobs \(&\) are not supported"),
    ("(date; sleep 1", r"'\(' without its '\)'"),
    ("date)", "unexpected '\\)'"),
    ("date;;", "unexpected ';'"),
    ("date &&", "'&&' needs a command after it"),
    ("", "empty script"),
    ("echo 'open", "cannot read the script: No closing quotation"),
    ("date +%s", "only plain `date`"),
    ("sleep forever", "expected seconds"),
    ("sleep 100", "0 to 30 seconds"),
    ("nc -q 1 127.0.0.1 9000", "only `nc HOST PORT` is supported"),
    ("nc 127.0.0.1 http", "the port must be a number"),
    ("; ".join(["date"] * 40), "at most 32 run here"),
])
def test_anything_else_is_a_clear_error(script: str, message: str) -> None:
    with pytest.raises(ShellError, match=message):
        parse(script)


def test_exec_runs_sh_c_from_a_workload_and_refuses_others(echo_one: RunningApp, tmp_path: Path) -> None:
    rows = [{"name": "sleep-0", "namespace": "default", "service": "sleep", "version": "v1", "app_port": 1,
             "inbound_port": None, "outbound_proxy": None, "admin_port": None, "healthy": True},
            {"name": "tcp-echo-v1-0.plain", "namespace": "plain", "service": "tcp-echo", "version": "v1",
             "app_port": echo_one.port, "inbound_port": None, "outbound_proxy": None, "admin_port": None,
             "healthy": True}]
    printed: list[str] = []
    state = StateDir.open(tmp_path / "home")
    code = execute(state, rows, "deploy/sleep", ["sh", "-c", "(date; sleep 0.1) | nc tcp-echo.plain 9000"],
                   out=printed.append, container="sleep")
    assert code == 0 and "".join(printed).startswith("one ")
    with pytest.raises(ExecError, match="only `sh -c SCRIPT`"):
        execute(state, rows, "sleep", ["sh", "script.sh"], out=printed.append)
    with pytest.raises(ExecError, match="'ls' does not run here"):
        execute(state, rows, "sleep", ["sh", "-c", "ls"], out=printed.append)
