"""A route's rewrite: prefix and whole-path ``uri``, ``uri_regex`` (Envoy's regex_rewrite), ``authority``
(the Host header); bad input refused with the key path; the real sidecar sending the rewritten request."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from meshkit.proxy.http import Headers, Request
from meshkit.proxy.rewrite import Rewrite
from meshkit.proxy.snapshot import Snapshot, SnapshotError
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot


@pytest.mark.parametrize(("spec", "prefix", "path", "expected"), [
    ({"uri": "/new"}, "/old", "/old/a?q=1", "/new/a?q=1"),
    ({"uri": "/whole"}, None, "/old/a?q=1", "/whole?q=1"),  # not a prefix match: the whole path
    ({"uri_regex": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}}, None,
     "/service/foo/v1/api?x=1", "/v1/api/instance/foo?x=1"),  # Istio's own uriRegexRewrite example
    ({"uri_regex": {"match": "/.*", "rewrite": "/full"}}, "/old", "/old/a/b", "/full"),  # ReplaceFullPath
    ({"uri_regex": {"match": "a", "rewrite": "b"}}, None, "/aaa", "/bbb"),  # every match, as Envoy
    ({"authority": "Other.Example"}, None, "/p", "/p"),  # the path stays
])
def test_rewritten_path(spec: dict[str, Any], prefix: str | None, path: str, expected: str) -> None:
    request = Request("GET", path, "reviews", Headers([("host", "reviews")]))
    Rewrite(spec, "rewrite").apply(request, prefix, False)
    assert request.path == expected
    if "authority" in spec:
        assert (request.authority, request.headers.get("host")) == ("other.example", "other.example")


@pytest.mark.parametrize(("rewrite", "where"), [
    ({"uri": 1}, "rewrite.uri"),
    ({"authority": "a b"}, "rewrite.authority"),
    ({"authority": "a\r\nx-injected: 1"}, "rewrite.authority"),
    ({"uri_regex": {"match": "([a-", "rewrite": "x"}}, "rewrite.uri_regex"),
    ({"uri_regex": {"match": "a", "rewrite": "\\3"}}, "rewrite.uri_regex"),  # no group 3
    ({"uri_regex": {"match": "a"}}, "rewrite.uri_regex"),
    ({"uri": "/a", "uri_regex": {"match": "a", "rewrite": "b"}}, "rewrite"),
    ({"host": "x"}, "rewrite.host"),
])
def test_bad_rewrites_are_refused_with_the_key_path(rewrite: dict[str, Any], where: str) -> None:
    snap = make_snapshot(1000)
    snap["outbound"]["virtual_hosts"][0]["routes"] = [
        {"name": "r", "match": [], "route": [{"cluster": "reviews|v1", "weight": 100}], "rewrite": rewrite}]
    with pytest.raises(SnapshotError) as info:
        Snapshot.from_json(snap)
    assert f"outbound.virtual_hosts[0].routes[0].{where}" in str(info.value)


async def test_the_sidecar_sends_the_rewritten_path_and_host_upstream(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    routes = [
        {"name": "full", "match": [{"uri": {"path_separated_prefix": "/old"}}],
         "route": [{"cluster": "reviews|v1", "weight": 100}],
         "rewrite": {"uri": None, "authority": "backend.example",
                     "uri_regex": {"match": "/.*", "rewrite": "/replaced"}}},
    ]
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=routes))
    url = f"http://127.0.0.1:{proxy.ports['outbound']}/old/a?q=1"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Host": "reviews"}) as r:
        info = await r.json()
    assert r.status == 200
    assert info["path"] == "/replaced?q=1"
    assert dict(info["headers"])["host"] == "backend.example"
