"""A route's redirect (Envoy's RedirectAction): the Location rules, bad input refused, and the real sidecar
answering a redirect itself (status, Location, empty body, the route's response headers, no upstream call)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from meshkit.proxy.http import Headers, Request
from meshkit.proxy.redirect import Redirect
from meshkit.proxy.snapshot import Snapshot, SnapshotError
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot


def _location(spec: dict[str, Any], *, path: str = "/a/b?q=1", authority: str = "web:8080",
              proto: str = "http", prefix: str | None = None, separated: bool = False) -> str:
    request = Request("GET", path, authority, Headers([("x-forwarded-proto", proto)]))
    return Redirect(spec, "redirect").location(request, prefix, separated)


@pytest.mark.parametrize(("spec", "kwargs", "expected"), [
    ({"path": "/new"}, {}, "http://web:8080/new?q=1"),  # the request's query is kept
    ({"path": "/new?x=2"}, {}, "http://web:8080/new?x=2"),  # a query in the new path replaces it
    ({"host": "example.com"}, {}, "http://example.com/a/b?q=1"),  # host_redirect replaces host and port
    ({"host": "example.com", "derive_port": "FROM_REQUEST_PORT"}, {}, "http://example.com:8080/a/b?q=1"),
    ({"scheme": "https"}, {"authority": "web:80"}, "https://web/a/b?q=1"),  # :80 dropped going to https
    ({"scheme": "https"}, {}, "https://web:8080/a/b?q=1"),  # another port is kept
    ({"scheme": "https", "derive_port": "FROM_PROTOCOL_DEFAULT"}, {}, "https://web/a/b?q=1"),
    ({"port": 443, "scheme": "https"}, {}, "https://web/a/b?q=1"),  # the scheme's default port: not written
    ({"port": 9443}, {"authority": "web"}, "http://web:9443/a/b?q=1"),
    ({"scheme": "http"}, {"proto": "https", "authority": "web:443"}, "http://web/a/b?q=1"),
    ({"host": "[::1]", "port": 8080}, {}, "http://[::1]:8080/a/b?q=1"),
    ({"prefix_rewrite": "/v2"}, {"prefix": "/a"}, "http://web:8080/v2/b?q=1"),
    ({"prefix_rewrite": "/"}, {"prefix": "/a", "separated": True}, "http://web:8080/b?q=1"),
    ({"prefix_rewrite": "/v2/"}, {"prefix": "/a", "separated": True}, "http://web:8080/v2/b?q=1"),
    ({"prefix_rewrite": "/v2"}, {}, "http://web:8080/a/b?q=1"),  # not a prefix match: the path stays
    ({"path": "/x"}, {"authority": "[::1]:8080"}, "http://[::1]:8080/x?q=1"),
])
def test_location_follows_envoy(spec: dict[str, Any], kwargs: dict[str, Any], expected: str) -> None:
    assert _location(spec, **kwargs) == expected


@pytest.mark.parametrize(("redirect", "where"), [
    ({"response_code": 200}, "redirect.response_code"),
    ({"scheme": "ftp"}, "redirect.scheme"),
    ({"port": 0}, "redirect.port"),
    ({"path": "relative"}, "redirect.path"),
    ({"path": "/a", "prefix_rewrite": "/b"}, "redirect"),
    ({"derive_port": "SOMETIMES"}, "redirect.derive_port"),
    ({"host": "a\r\nx-injected: 1"}, "redirect.host"),
    ({"bogus": 1}, "redirect.bogus"),
])
def test_bad_redirects_are_refused_with_the_key_path(redirect: dict[str, Any], where: str) -> None:
    snap = make_snapshot(1000)
    snap["outbound"]["virtual_hosts"][0]["routes"] = [{"name": "r", "match": [], "route": [],
                                                        "redirect": redirect}]
    with pytest.raises(SnapshotError) as info:
        Snapshot.from_json(snap)
    assert f"outbound.virtual_hosts[0].routes[0].{where}" in str(info.value)


def test_a_redirect_route_has_no_destinations_and_a_plain_one_needs_them() -> None:
    snap = make_snapshot(1000)
    snap["outbound"]["virtual_hosts"][0]["routes"] = [{
        "name": "r", "match": [], "route": [{"cluster": "reviews|v1", "weight": 100}],
        "redirect": {"path": "/x"}}]
    with pytest.raises(SnapshotError, match=r"routes\[0\]\.route: a route with a redirect has no destinat"):
        Snapshot.from_json(snap)


async def test_the_sidecar_answers_the_redirect_itself(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    routes = [
        {"name": "moved", "match": [{"uri": {"path_separated_prefix": "/old"}}], "route": [],
         "headers": {"request": {"set": {}, "add": {}, "remove": []},
                     "response": {"set": {"x-moved": "yes"}, "add": {}, "remove": []}},
         "redirect": {"scheme": None, "host": None, "port": None, "derive_port": None, "path": None,
                      "prefix_rewrite": "/new", "response_code": 302}},
        {"name": "rest", "match": [], "route": [{"cluster": "reviews|v1", "weight": 100}]},
    ]
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=routes))
    base = f"http://127.0.0.1:{proxy.ports['outbound']}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/old/page?a=1", headers={"Host": "reviews:9080"},
                               allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "http://reviews:9080/new/page?a=1"
            assert r.headers["x-moved"] == "yes"  # the route's response headers apply, as in Envoy
            assert r.headers["Content-Length"] == "0" and await r.read() == b""
        async with session.get(f"{base}/oldish", headers={"Host": "reviews:9080"},
                               allow_redirects=False) as r:
            assert r.status == 200 and (await r.json())["app"] == "echo-v1"  # not the /old segment
    metrics = proxy.metrics.render()
    assert 'response_code="302"' in metrics
