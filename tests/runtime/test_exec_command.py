"""`meshkit exec`'s reading of the commands Istio's tasks run in pods (curl, fortio), and curl's
output and exit codes for what came back. The end-to-end run is tests/e2e/test_circuit_breaking_task.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshkit.runtime.curl import CurlResult
from meshkit.runtime.exec_command import (
    CurlCall,
    ExecError,
    curl_exit,
    next_hop,
    parse_curl,
    parse_fortio_load,
    run_curl,
)


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


def test_the_egress_tasks_flags() -> None:
    """``curl -sSL -o /dev/null -D - URL`` ("Egress Gateways"), ``-k``, ``--cacert``, ``--max-redirs``."""
    call = parse_curl(["-sSL", "-o", "/dev/null", "-D", "-", "http://edition.cnn.com/politics"])
    assert (call.silent, call.show_error, call.location, call.output, call.dump_header) == (
        True, True, True, "/dev/null", "-")
    assert (call.max_redirs, call.insecure, call.cacert) == (50, False, None)
    attached = parse_curl(["-sLD-", "-so/dev/null", "-k", "--cacert", "/tmp/ca.pem", "--max-redirs", "3",
                           "https://www.google.com"])
    assert (attached.dump_header, attached.output, attached.insecure) == ("-", "/dev/null", True)
    assert (attached.cacert, attached.max_redirs) == ("/tmp/ca.pem", 3)
    assert attached.url == "https://www.google.com" and attached.location
    assert parse_curl(["-X", "POST", "http://x"]).custom_method
    assert not parse_curl(["-d", "a", "http://x"]).custom_method
    with pytest.raises(ExecError, match="--max-redirs expects a number"):
        parse_curl(["--max-redirs", "many", "http://x"])


def _redirect(status: int, location: str, url: str = "http://a/p") -> CurlResult:
    return CurlResult("sleep-0", "GET", url, status, headers=[("location", location)], reason="Moved")


@pytest.mark.parametrize(("method", "status", "after"), [
    ("GET", 301, "GET"), ("POST", 301, "GET"), ("POST", 302, "GET"), ("POST", 303, "GET"),
    ("PUT", 303, "GET"), ("HEAD", 303, "HEAD"), ("POST", 307, "POST"), ("POST", 308, "POST"),
    ("PUT", 302, "PUT"),
])
def test_redirects_change_the_method_as_curl_does(method: str, status: int, after: str) -> None:
    call = CurlCall(url="http://a/p", method=method, data="x=1" if method in ("POST", "PUT") else None)
    following = next_hop(call, _redirect(status, "/q"))
    assert following is not None and (following.url, following.method) == ("http://a/q", after)
    assert following.data == (None if after == "GET" else call.data)


def test_redirect_targets_and_what_is_not_a_redirect() -> None:
    call = CurlCall(url="http://edition.cnn.com/politics/x?y=1", headers=["Host: other", "Authorization: b",
                                                                            "x-a: 1"])
    secure = next_hop(call, _redirect(301, "https://edition.cnn.com/politics"))
    assert secure is not None and secure.url == "https://edition.cnn.com/politics"
    assert secure.headers == call.headers  # the same host: every header kept
    relative = next_hop(call, _redirect(302, "../sport"))
    assert relative is not None and relative.url == "http://edition.cnn.com/sport"
    away = next_hop(call, _redirect(302, "http://elsewhere.org/"))
    assert away is not None and away.headers == ["x-a: 1"]  # no Host, Authorization to another host
    posted = CurlCall(url="http://a/", method="POST", data="d", custom_method=True)
    kept = next_hop(posted, _redirect(301, "/b"))
    assert kept is not None and (kept.method, kept.data) == ("POST", "d")  # -X POST stays POST
    assert next_hop(call, _redirect(200, "/elsewhere")) is None
    assert next_hop(call, CurlResult("sleep-0", "GET", "u", 301)) is None  # no Location
    assert next_hop(call, CurlResult("sleep-0", "GET", "u", None, error="reset")) is None


def _chain(*results: CurlResult) -> tuple[list[CurlCall], Callable[[CurlCall], CurlResult]]:
    asked: list[CurlCall] = []

    def result_of(call: CurlCall) -> CurlResult:
        asked.append(call)
        return results[len(asked) - 1]

    return asked, result_of


def test_location_prints_every_hop_s_headers_and_the_last_body() -> None:
    moved = CurlResult("sleep-0", "GET", "http://edition.cnn.com/politics", 301,
                       headers=[("location", "https://edition.cnn.com/politics")], body=b"moved",
                       reason="Moved Permanently")
    page = CurlResult("sleep-0", "GET", "https://edition.cnn.com/politics", 200, headers=[("server", "cnn")],
                      body=b"<html/>", reason="OK")
    asked, result_of = _chain(moved, page)
    printed: list[str] = []
    call = parse_curl(["-sSL", "-D", "-", "-w", "%{http_code} %{num_redirects} %{url_effective}",
                       "http://edition.cnn.com/politics"])
    assert run_curl(result_of, call, printed.append) == 0
    assert "".join(printed) == ("HTTP/1.1 301 Moved Permanently\nlocation: https://edition.cnn.com/politics\n\n"
                                "HTTP/1.1 200 OK\nserver: cnn\n\n<html/>"
                                "200 1 https://edition.cnn.com/politics")
    assert [c.url for c in asked] == ["http://edition.cnn.com/politics", "https://edition.cnn.com/politics"]
    # without -L: the 301 and its body, as curl shows them
    printed.clear()
    asked, result_of = _chain(moved)
    assert run_curl(result_of, parse_curl(["-i", "http://edition.cnn.com/politics"]), printed.append) == 0
    shown = "".join(printed)
    assert shown.startswith("HTTP/1.1 301 Moved Permanently\n") and shown.endswith("moved")
    assert len(asked) == 1


def test_too_many_redirects_is_exit_47() -> None:
    loop = _redirect(302, "/p", url="http://a/p")
    asked, result_of = _chain(*[loop] * 4)
    printed: list[str] = []
    call = parse_curl(["-L", "--max-redirs", "2", "-S", "-s", "http://a/p"])
    assert run_curl(result_of, call, printed.append) == 47
    assert len(asked) == 3 and "".join(printed) == "curl: (47) Maximum (2) redirects followed\n"


@pytest.mark.parametrize(("error", "code"), [
    ("OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to edition.cnn.com:443", 35),
    ("SSL connect error in connection to 127.0.0.1:1: WRONG_VERSION_NUMBER", 35),
    ("SSL certificate problem: unable to get local issuer certificate", 60),
    ("SSL: no alternative certificate subject name matches target host name 'x'", 60),
    ("CONNECT tunnel failed, response 403", 56),
    ("Proxy CONNECT aborted", 56),
    ("connection refused by 127.0.0.1:21001", 7),
    ("timed out after 3 s", 28),
    ("connection reset by 127.0.0.1:1 before an HTTP answer", 56),
])
def test_exit_codes_for_no_answer(error: str, code: int) -> None:
    assert curl_exit(error) == code
    printed: list[str] = []
    failed = CurlResult("sleep-0", "GET", "https://edition.cnn.com", None, error=error)
    call = parse_curl(["-sS", "-w", "%{http_code}\\n", "https://edition.cnn.com"])
    assert run_curl(lambda _: failed, call, printed.append) == code
    assert "".join(printed) == f"000\ncurl: ({code}) {error}\n"


def test_fail_hides_the_body_of_an_http_error() -> None:
    printed: list[str] = []
    missing = CurlResult("sleep-0", "GET", "u", 404, body=b"not here", reason="Not Found")
    assert run_curl(lambda _: missing, parse_curl(["-f", "http://u"]), printed.append) == 22
    assert "".join(printed) == "curl: (22) The requested URL returned error: 404\n"
