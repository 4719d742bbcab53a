"""The parts of `meshkit.runtime.curl` that need no mesh: choosing the source, the route, the headers.

Sending through real sidecars (and from `legacy` under STRICT) is tested in tests/e2e/test_deploy.py,
HTTPS against a real TLS server in test_curl_https.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshkit.runtime.curl import CurlError, CurlResult, _headers, _route, find_source
from meshkit.runtime.state import StateDir


def _row(name: str, service: str, sidecar: bool = True, port: int = 1000) -> dict[str, Any]:
    return {"name": name, "service": service, "healthy": True, "inbound_port": port + 6 if sidecar else None,
            "outbound_proxy": f"http://127.0.0.1:{port + 1}" if sidecar else None}


ROWS = [_row("sleep-v1-0", "sleep"), _row("legacy-v1-0", "legacy", sidecar=False, port=2000),
        _row("httpbin-v1-0", "httpbin", port=3000), _row("httpbin-v1-1", "httpbin", port=4000)]


def test_source_by_instance_workload_or_service() -> None:
    assert find_source(ROWS, "httpbin-v1-1")["name"] == "httpbin-v1-1"
    assert find_source(ROWS, "httpbin-v1")["name"] == "httpbin-v1-0"
    assert find_source(ROWS, "legacy")["name"] == "legacy-v1-0"
    with pytest.raises(CurlError, match=r"no such workload 'nobody' \(known: sleep-v1-0, legacy") as info:
        find_source(ROWS, "nobody")
    assert info.value.field == "from"


def test_routes(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    via = _route(state, ROWS, ROWS[0], "http://httpbin:8000/headers?a=1")
    assert (via.port, via.target, via.direction) == (1001, "http://httpbin:8000/headers?a=1", "outbound")
    assert via.access_log == state.log("sleep-v1-0.access")
    direct = _route(state, ROWS, ROWS[1], "http://httpbin.default.svc.cluster.local:8000/ip")
    assert direct.port in (3006, 4006) and direct.target == "/ip" and direct.direction == "inbound"
    loop = _route(state, ROWS, ROWS[0], "http://127.0.0.1:9/x")
    assert (loop.port, loop.target, loop.access_log) == (9, "/x", None)
    with pytest.raises(CurlError, match="legacy-v1-0 has no sidecar, and 'ratings' names no running"):
        _route(state, ROWS, ROWS[1], "http://ratings:9080/")
    with pytest.raises(CurlError, match="expected an absolute http:// or https:// URL"):
        _route(state, ROWS, ROWS[0], "ftp://httpbin:8000/")


def test_headers_and_result() -> None:
    assert _headers({"end-user": " jason "}) == [("end-user", "jason")]
    assert _headers(["A: b", "C:d"]) == [("A", "b"), ("C", "d")]
    with pytest.raises(CurlError, match="expected 'Name: value'"):
        _headers(["no colon"])
    with pytest.raises(CurlError, match="invalid header"):
        _headers({"x": "a\r\nInjected: 1"})
    result = CurlResult("sleep-v1-0", "GET", "http://x/", 503, [("Content-Type", "text/plain")],
                        b"no healthy", 0.01, "UH")
    assert not result.ok and result.header("content-type") == "text/plain" and result.json() is None
    assert repr(result) == "GET http://x/ from sleep-v1-0: HTTP 503 in 0.010 s, flags UH"
    assert "no healthy" in str(result) and "#cf222e" in result._repr_html_()
    failed = CurlResult("legacy-v1-0", "GET", "http://x/", None, error="connection reset")
    assert "no answer (connection reset)" in repr(failed) and not failed.ok


def test_names_resolve_in_the_senders_namespace(tmp_path: Path) -> None:
    """Kubernetes DNS: a short name in the sender's namespace, ``svc.ns`` and the FQDN in ``ns``."""
    state = StateDir.open(tmp_path)
    rows = [{**_row("httpbin-0.foo", "httpbin", port=5000), "namespace": "foo"},
            {**_row("httpbin-0.bar", "httpbin", port=6000), "namespace": "bar"},
            {**_row("sleep-0.legacy", "sleep", sidecar=False, port=7000), "namespace": "legacy"},
            {**_row("sleep-0.foo", "sleep", port=8000), "namespace": "foo"}]
    legacy = find_source(rows, "sleep.legacy")
    assert legacy["name"] == "sleep-0.legacy" and find_source(rows, "sleep-0.foo")["name"] == "sleep-0.foo"
    assert _route(state, rows, legacy, "http://httpbin.foo:8000/ip").port == 5006
    assert _route(state, rows, legacy, "http://httpbin.bar.svc.cluster.local:8000/ip").port == 6006
    with pytest.raises(CurlError, match=r"'httpbin' names no running service.*httpbin\.bar, httpbin\.foo"):
        _route(state, rows, legacy, "http://httpbin:8000/ip")  # there is no httpbin in legacy
    from_foo = rows[3]
    assert _route(state, rows, from_foo, "http://httpbin:8000/ip").target == "http://httpbin:8000/ip"
