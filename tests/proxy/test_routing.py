"""Route table compilation and matching (unit), and routing through the real sidecar (NR, NC, splits)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp
import pytest

from meshkit.proxy.http import Headers, Request
from meshkit.proxy.routing import RouteTable
from meshkit.proxy.snapshot import Snapshot, SnapshotError
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot, vhost


def _table(routes: list[dict[str, Any]], domains: list[str] | None = None) -> RouteTable:
    host = vhost("reviews", routes)
    if domains is not None:
        host["domains"] = domains
    return RouteTable.from_snapshot({"virtual_hosts": [host]})


def _req(path: str = "/", method: str = "GET", authority: str = "reviews", **headers: str) -> Request:
    items = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return Request(method, path, authority, Headers(items))


def _name(table: RouteTable, request: Request) -> str | None:
    _, route, _ = table.route(request)
    return route.name if route is not None else None


def _r(name: str, *matches: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "match": list(matches), "route": [{"cluster": f"reviews|{name}", "weight": 100}]}


def test_virtual_host_lookup_with_and_without_port() -> None:
    table = _table([_r("all")], domains=["reviews", "reviews.default.svc.cluster.local"])
    assert table.virtual_host("reviews") is not None
    assert table.virtual_host("reviews:9080") is not None  # port stripped when needed
    assert table.virtual_host("reviews.default.svc.cluster.local:9080") is not None
    assert table.virtual_host("ratings") is None
    wild_host = vhost("a", [_r("x")]) | {"domains": ["*.example.com"]}
    wild = RouteTable.from_snapshot({"virtual_hosts": [wild_host]})
    assert wild.virtual_host("api.example.com:80") is not None
    assert wild.virtual_host("example.org") is None


def test_a_port_match_is_the_hosts_port_or_80() -> None:
    """VirtualService ``match.port`` on a sidecar: the port the request is for (Istio matches the
    outbound listener's port); a Host without one is HTTP's 80."""
    table = _table([_r("p9080", {"port": 9080}), _r("p80", {"port": 80})],
                   domains=["reviews", "reviews:9080", "reviews:80"])
    assert _name(table, _req(authority="reviews:9080")) == "p9080"
    assert _name(table, _req(authority="reviews")) == "p80"
    assert _name(table, _req(authority="reviews:80")) == "p80"
    only = _table([_r("p9080", {"port": 9080})], domains=["reviews", "reviews:9080"])
    assert _name(only, _req(authority="reviews")) is None  # 404 NR: no route for port 80


def test_uri_matches_and_first_match_wins() -> None:
    table = _table([
        _r("exact", {"uri": {"exact": "/reviews/0"}}),
        _r("regex", {"uri": {"regex": "/reviews/[0-9]+"}}),
        _r("prefix", {"uri": {"prefix": "/reviews"}}),
        _r("nocase", {"uri": {"prefix": "/static"}, "ignore_uri_case": True}),
    ])
    assert _name(table, _req("/reviews/0")) == "exact"
    assert _name(table, _req("/reviews/0?debug=1")) == "exact"  # the query is not part of the path
    assert _name(table, _req("/reviews/12")) == "regex"
    assert _name(table, _req("/reviews/12x")) == "prefix"  # regex must match the whole path
    assert _name(table, _req("/STATIC/app.js")) == "nocase"
    assert _name(table, _req("/Reviews")) is None
    assert _name(table, _req("/other")) is None


def test_path_separated_prefix_matches_whole_segments_and_prefix_stays_a_string_prefix() -> None:
    """Gateway API's PathPrefix (Envoy's path_separated_prefix) against a VirtualService's prefix."""
    table = _table([
        _r("segments", {"uri": {"path_separated_prefix": "/api"}}),
        _r("string", {"uri": {"prefix": "/api"}}),
        _r("nocase", {"uri": {"path_separated_prefix": "/Static"}, "ignore_uri_case": True}),
    ])
    for path in ("/api", "/api/", "/api/x", "/api/x/y", "/api?q=1", "/api/?q=1"):
        assert _name(table, _req(path)) == "segments", path
    for path in ("/apix", "/api-v2", "/apix/y"):
        assert _name(table, _req(path)) == "string", path  # the string prefix still takes them
    assert _name(table, _req("/STATIC/app.js")) == "nocase"
    assert _name(table, _req("/static")) == "nocase"
    assert _name(table, _req("/staticx")) is None
    assert _name(table, _req("/ap")) is None
    root = _table([_r("root", {"uri": {"path_separated_prefix": "/"}})])
    assert _name(root, _req("/anything")) == "root"


def test_rewrite_of_a_path_separated_prefix_follows_gateway_api() -> None:
    """ReplacePrefixMatch as Gateway API defines it: /foo -> /xyz, /xyz/ or / on /foo, /foo/ and /foo/bar."""
    cases = {("/xyz", "/foo/bar"): "/xyz/bar", ("/xyz/", "/foo/bar"): "/xyz/bar", ("/", "/foo/bar"): "/bar",
             ("/xyz", "/foo"): "/xyz", ("/xyz/", "/foo"): "/xyz/", ("/", "/foo"): "/",
             ("/xyz", "/foo/"): "/xyz/", ("/", "/foo/"): "/"}
    for (replacement, path), expected in cases.items():
        rewriting = _r("p", {"uri": {"path_separated_prefix": "/foo"}}) | {"rewrite": {"uri": replacement}}
        table = _table([rewriting])
        _, route, matched = table.route(_req(path))
        assert route is not None
        assert route.rewritten_path(matched, path, None) == expected, (replacement, path)


def test_method_authority_headers_query_and_or_semantics() -> None:
    table = _table([
        _r("jason", {"headers": {"end-user": {"exact": "jason"}}},
           {"query_params": {"user": {"exact": "jason"}}}),
        _r("post", {"method": {"exact": "POST"}, "uri": {"prefix": "/"}}),
        _r("canary", {"headers": {"cookie": {"regex": ".*canary=1.*"}}}),
        _r("not-mobile", {"without_headers": {"user-agent": {"prefix": "Mobile"}},
                          "authority": {"prefix": "rev"}}),
        _r("rest"),
    ])
    assert _name(table, _req(end_user="jason")) == "jason"
    assert _name(table, _req("/p?x=1&user=jason")) == "jason"  # second element of the OR
    assert _name(table, _req(end_user="mike", method="POST")) == "post"
    assert _name(table, _req(cookie="a=b; canary=1; c=d")) == "canary"
    assert _name(table, _req(user_agent="Desktop")) == "not-mobile"
    assert _name(table, _req()) == "not-mobile"  # without_headers matches when the header is absent
    assert _name(table, _req(user_agent="Mobile Safari")) == "rest"


def test_weighted_pick_follows_weights() -> None:
    table = _table([{
        "name": "split",
        "route": [{"cluster": "reviews|v1", "weight": 80}, {"cluster": "reviews|v2", "weight": 20}],
    }])
    _, route, _ = table.route(_req())
    assert route is not None
    counts = Counter(route.pick().cluster for _ in range(4000))
    assert 0.74 < counts["reviews|v1"] / 4000 < 0.86
    assert set(counts) == {"reviews|v1", "reviews|v2"}


def test_rewrite_replaces_prefix_or_whole_path() -> None:
    table = _table([
        _r("p", {"uri": {"prefix": "/old"}}) | {"rewrite": {"uri": "/new"}},
        _r("e", {"uri": {"exact": "/exact"}}) | {"rewrite": {"uri": "/replaced"}},
    ])
    _, route, matched = table.route(_req("/old/item"))
    assert route.rewritten_path(matched, "/old/item", "a=1") == "/new/item?a=1"
    _, route, matched = table.route(_req("/exact"))
    assert route.rewritten_path(matched, "/exact", None) == "/replaced"


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda r: r["match"].append({"uri": {"regex": "([a-"}}), "routes[0].match[0].uri.regex"),
        (lambda r: r["match"].append({"uri": {"glob": "/x"}}), "routes[0].match[0].uri"),
        (lambda r: r["match"].append({"source_labels": {}}), "routes[0].match[0].source_labels"),
        (lambda r: r["match"].append({"uri": {"path_separated_prefix": "/api/"}}),
         "routes[0].match[0].uri.path_separated_prefix"),
        (lambda r: r["match"].append({"uri": {"path_separated_prefix": "api"}}),
         "routes[0].match[0].uri.path_separated_prefix"),
        (lambda r: r["match"].append({"headers": {"x": {"path_separated_prefix": "/a"}}}),
         "routes[0].match[0].headers.x"),
        (lambda r: r["match"].append({"port": "80"}), "routes[0].match[0].port"),
        (lambda r: r["match"].append({"port": 0}), "routes[0].match[0].port"),
        (lambda r: r.update(route=[]), "routes[0].route"),
        (lambda r: r["route"][0].update(weight=-1), "routes[0].route[0].weight"),
        (lambda r: r.update(headers={"request": {"append": {}}}), "routes[0].headers.request.append"),
        (lambda r: r.update(fault={"abort": {"http_status": 99}}), "routes[0].fault.abort.http_status"),
        (lambda r: r.update(headers={"response": {"set": {"x-a": "b\r\nx-injected: 1"}}}),
         "routes[0].headers.response.set.x-a"),
        (lambda r: r.update(headers={"request": {"add": {"x-snow": "\u2603"}}}),
         "routes[0].headers.request.add.x-snow"),
    ],
)
def test_bad_routes_are_refused_with_the_key_path(mutate: Any, where: str) -> None:
    snap = make_snapshot(1000)
    route = {"name": "r", "match": [], "route": [{"cluster": "reviews|", "weight": 100}]}
    mutate(route)
    snap["outbound"]["virtual_hosts"][0]["routes"] = [route]
    with pytest.raises(SnapshotError) as info:
        Snapshot.from_json(snap)
    assert f"outbound.virtual_hosts[0].{where}" in str(info.value)


async def test_routing_through_the_proxy(
    echo_app: EchoApp, echo_v2: EchoApp, start_proxy: StartProxy
) -> None:
    routes = [
        {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"cluster": "reviews|v2", "weight": 100}],
         "headers": {"request": {"set": {"x-route": "jason"}, "add": {"x-added": "1"}, "remove": ["x-drop"]},
                     "response": {"set": {"x-served-by": "jason-route"}, "add": {}, "remove": ["x-app"]}}},
        {"name": "rewrite", "match": [{"uri": {"prefix": "/api/v1/"}}],
         "route": [{"cluster": "reviews|v1", "weight": 100}], "rewrite": {"uri": "/internal/"}},
        {"name": "missing-subset", "match": [{"uri": {"prefix": "/v9"}}],
         "route": [{"cluster": "reviews|v9", "weight": 100}]},
        {"name": "split", "match": [{"uri": {"prefix": "/"}}],
         "route": [{"cluster": "reviews|v1", "weight": 50}, {"cluster": "reviews|v2", "weight": 50}]},
    ]
    proxy = await start_proxy(make_snapshot(echo_app.port, echo_v2.port, routes=routes))
    base = f"http://127.0.0.1:{proxy.ports['outbound']}"
    async with aiohttp.ClientSession() as session:
        jason = {"Host": "reviews", "end-user": "jason", "x-drop": "1"}
        async with session.get(f"{base}/p", headers=jason) as r:
            info = await r.json()
            assert info["app"] == "echo-v2"
            seen = dict(info["headers"])
            assert seen["x-route"] == "jason" and seen["x-added"] == "1" and "x-drop" not in seen
            assert r.headers["x-served-by"] == "jason-route" and "x-app" not in r.headers
        async with session.get(f"{base}/api/v1/items?q=2", headers={"Host": "reviews"}) as r:
            assert (await r.json())["path"] == "/internal/items?q=2"
        async with session.get(f"{base}/v9/x", headers={"Host": "reviews"}) as r:
            assert r.status == 503 and "reviews|v9" in await r.text()
        async with session.get(f"{base}/x", headers={"Host": "unknown-host:80"}) as r:
            assert r.status == 404
            text = await r.text()
            assert "unknown-host:80" in text and "/x" in text
        apps = Counter()
        for _ in range(200):
            async with session.get(f"{base}/split", headers={"Host": "reviews:9080"}) as r:
                apps[(await r.json())["app"]] += 1
    assert 60 <= apps["echo-v1"] <= 140 and apps["echo-v1"] + apps["echo-v2"] == 200
    metrics = proxy.metrics.render()
    assert 'response_code="404",response_flags="NR"' in metrics
    assert 'response_code="503",response_flags="NC"' in metrics


async def test_nr_body_for_a_known_host_without_matching_route(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    routes = [{"name": "only", "match": [{"uri": {"exact": "/only"}}], "route": [{"cluster": "reviews|v1"}]}]
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=routes))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.ports['outbound']}/elsewhere"
        async with session.get(url, headers={"Host": "reviews"}) as r:
            assert r.status == 404
            assert "no route in virtual host" in await r.text()
    assert json.loads(json.dumps(proxy.state.current.doc))["version"] == "v-1"


@pytest.mark.parametrize(
    ("inbound", "where"),
    [
        ({"authz": {"bogus": []}}, "inbound.authz.bogus"),
        ({"rate_limit": {"max_tokens": 0}}, "inbound.rate_limit.max_tokens"),
        ({"app": {"address": "127.0.0.1", "port": 0}}, "inbound.app.port"),
    ],
)
def test_bad_inbound_sections_are_refused_with_the_key_path(inbound: dict[str, Any], where: str) -> None:
    snap = make_snapshot(1000)
    snap["inbound"].update(inbound)
    with pytest.raises(SnapshotError) as info:
        Snapshot.from_json(snap)
    assert str(info.value).startswith(where)
