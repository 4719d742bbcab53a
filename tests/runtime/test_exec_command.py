"""`meshkit exec`'s reading of the commands Istio's tasks run in pods (curl, fortio), and curl's
output and exit codes for what came back. The end-to-end run is tests/e2e/test_circuit_breaking_task.py."""

from __future__ import annotations

import pytest

from meshkit.runtime.curl import CurlResult
from meshkit.runtime.exec_command import CurlCall, ExecError, parse_curl, parse_fortio_load, run_curl


def test_the_mtls_migration_loop_s_curl() -> None:
    call = parse_curl(["-s", "http://httpbin.foo:8000/ip", "-s", "-o", "/dev/null",
                       "-w", "curl.sleep.bar to httpbin.foo: %{http_code}\\n"])
    assert (call.url, call.silent, call.output) == ("http://httpbin.foo:8000/ip", True, "/dev/null")
    printed: list[str] = []
    code = run_curl(lambda _: CurlResult("sleep-0", "GET", call.url, 200, body=b"{}"), call, printed.append)
    assert (code, "".join(printed)) == (0, "curl.sleep.bar to httpbin.foo: 200\n")
    # no answer (a STRICT sidecar resets a plaintext caller): 000 and curl's exit 56, as on Istio's page
    printed.clear()
    reset = CurlResult("legacy-0", "GET", call.url, None,
                       error="connection reset by 127.0.0.1:1 before an answer")
    assert run_curl(lambda _: reset, call, printed.append) == 56
    assert "".join(printed) == "curl.sleep.bar to httpbin.foo: 000\n"


def test_combined_short_flags_headers_and_data() -> None:
    call = parse_curl(["-sSI", "-H", "end-user: jason", "httpbin:8000/headers"])
    assert (call.silent, call.show_error, call.head, call.method) == (True, True, True, "HEAD")
    assert call.url == "http://httpbin:8000/headers" and call.headers == ["end-user: jason"]
    posted = parse_curl(["-d", "x=1", "http://httpbin:8000/post"])
    assert (posted.method, posted.data) == ("POST", "x=1")


def test_curl_haproxy_protocol_flags() -> None:
    """The load balancer's part in the authz-ingress task: curl's --haproxy-protocol (and curl 8.2's
    --haproxy-clientip) are taken, and sent by meshkit.runtime.curl (tests/e2e/test_ingress_authz_task)."""
    call = parse_curl(["-s", "--haproxy-protocol", "--haproxy-clientip", "5.6.7.8", "127.0.0.1:21080/ip"])
    assert (call.haproxy_protocol, call.haproxy_clientip, call.url) == (True, "5.6.7.8", "http://127.0.0.1:21080/ip")
    assert parse_curl(["http://127.0.0.1/"]).haproxy_protocol is False


def test_include_prints_the_status_and_headers() -> None:
    printed: list[str] = []
    result = CurlResult("sleep-0", "GET", "u", 503, headers=[("server", "envoy")],
                        body=b"no healthy upstream")
    assert run_curl(lambda _: result, CurlCall(url="u", include=True), printed.append) == 0
    assert "".join(printed) == "HTTP/1.1 503\nserver: envoy\n\nno healthy upstream"
    assert run_curl(lambda _: result, CurlCall(url="u", fail=True), printed.append) == 22


@pytest.mark.parametrize(("argv", "message"), [
    (["--compressed", "http://x"], "option --compressed is not supported"),
    (["http://a", "http://b"], "one URL only"),
    ([], "no URL given"),
    (["-H"], "needs a value"),
])
def test_curl_refuses_what_it_cannot_do_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(ExecError, match=message):
        parse_curl(argv)


def test_fortio_load_flags_and_defaults() -> None:
    spec = parse_fortio_load(["-c", "2", "-qps", "0", "-n", "20", "-loglevel", "Warning",
                              "http://httpbin:8000/get"])
    assert (spec.connections, spec.qps, spec.calls, spec.url) == (2, 0.0, 20, "http://httpbin:8000/get")
    default = parse_fortio_load(["-t", "2s", "-H", "x-a: b", "httpbin:8000/get"])
    assert (default.connections, default.qps, default.calls, default.seconds) == (4, 8.0, None, 2.0)
    assert default.headers == (("x-a", "b"),)


@pytest.mark.parametrize(("argv", "message"), [
    (["-c", "1000", "http://x"], "-c: 1 to 64"),
    (["-n", "0", "http://x"], "-n: 1 to"),
    (["-t", "1h", "http://x"], "-t: up to 300s"),
    (["-t", "soon", "http://x"], "expected a duration"),
    (["-grpc", "http://x"], "flag -grpc is not supported"),
])
def test_fortio_load_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ExecError, match=message):
        parse_fortio_load(argv)
