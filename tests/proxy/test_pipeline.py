"""The pipeline's specialised chains: a route (or snapshot) only runs the filters it needs.

Unit: which filters ``ScopedChains`` selects per outbound route and per inbound snapshot, in
the pipeline's order. Through the real in-process sidecar: routes with and without a fault
behave as before, each route builds its chain once, and a pushed snapshot that adds a fault
to a route gets it on the next request.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from meshkit.proxy.chain import ScopedChains, always, build_chain, per_snapshot
from meshkit.proxy.http import Handler, Headers, Request, Response
from meshkit.proxy.pipeline import inbound_policy_chains, outbound_route_chains
from meshkit.proxy.snapshot import Snapshot
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot

BASE = ["retry", "circuit_breaker", "loadbalance"]


async def _terminal(request: Request) -> Response:
    return Response(200)


def _route(**extra: Any) -> dict[str, Any]:
    return {"name": "r", "match": [], "route": [{"cluster": "reviews|", "weight": 100}],
            "fault": None, "mirror": None, "timeout_ms": None, "retries": None, **extra}


def test_a_plain_route_skips_fault_mirror_and_timeout() -> None:
    chains = outbound_route_chains(_terminal)
    assert chains.names(_route()) == BASE
    assert chains.names(_route(timeout_ms=0)) == BASE  # 0 = no timeout (Istio's default)
    retries = {"attempts": 3, "per_try_timeout_ms": 100, "retry_on": ["5xx"]}
    assert chains.names(_route(retries=retries)) == BASE


def test_a_route_gets_each_filter_it_needs_in_pipeline_order() -> None:
    chains = outbound_route_chains(_terminal)
    fault = {"abort": {"http_status": 503, "percent": 100}, "delay": None}
    mirror = {"cluster": "reviews|v2", "percent": 100}
    assert chains.names(_route(fault=fault)) == ["fault", *BASE]
    assert chains.names(_route(mirror=mirror)) == ["mirror", *BASE]
    assert chains.names(_route(timeout_ms=500)) == ["timeout", *BASE]
    every = _route(fault=fault, mirror=mirror, timeout_ms=500)
    assert chains.names(every) == ["fault", "mirror", "timeout", *BASE]


def _snapshot(**inbound: Any) -> Snapshot:
    doc = make_snapshot(1)
    doc["inbound"].update(inbound)
    return Snapshot.from_json(doc)


def test_inbound_skips_authz_and_ratelimit_without_policies() -> None:
    chains = inbound_policy_chains(_terminal)
    assert chains.names(_snapshot()) == ["authn", "to_local_app"]
    limited = _snapshot(rate_limit={"max_tokens": 5, "tokens_per_fill": 1, "fill_interval_ms": 1000})
    assert chains.names(limited) == ["authn", "ratelimit", "to_local_app"]
    allow = {"deny": [], "allow": [{"name": "default/only-get", "rules": []}], "audit": []}
    assert chains.names(_snapshot(authz=allow)) == ["authn", "authz", "to_local_app"]


async def test_per_snapshot_builds_once_per_snapshot_and_follows_a_swap() -> None:
    seen: list[str] = []

    def tag(name: str) -> Any:
        async def filt(request: Request, call_next: Handler) -> Response:
            seen.append(name)
            return await call_next(request)

        return filt

    built: list[Any] = []

    class CountingChains(ScopedChains):
        def build(self, scope: Any) -> Handler:
            built.append(scope)
            return super().build(scope)

    chains = CountingChains([(tag("a"), always), (tag("b"), lambda snap: snap.rate_limiter is not None)],
                            _terminal)
    handler = build_chain([], per_snapshot(chains))
    plain = _snapshot()
    limited = _snapshot(rate_limit={"max_tokens": 5, "tokens_per_fill": 1, "fill_interval_ms": 1000})
    for config in (plain, plain, plain, limited, limited):
        await handler(Request("GET", "/", "x", Headers(), config=config))
    assert seen == ["a", "a", "a", "a", "b", "a", "b"]
    assert built == [plain, limited]


async def test_routes_with_and_without_fault_through_the_sidecar(
    echo_app: EchoApp, start_proxy: StartProxy
) -> None:
    routes = [
        _route(name="teapot", match=[{"uri": {"prefix": "/teapot"}}],
               fault={"abort": {"http_status": 418, "percent": 100}, "delay": None}),
        _route(name="plain", match=[{"uri": {"prefix": "/"}}]),
    ]
    proxy = await start_proxy(make_snapshot(echo_app.port, routes=routes))
    base = f"http://127.0.0.1:{proxy.ports['outbound']}"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{base}/teapot", headers={"Host": "reviews"}) as r:
                assert (r.status, await r.text()) == (418, "fault filter abort")
            async with session.get(f"{base}/hello", headers={"Host": "reviews"}) as r:
                assert r.status == 200
                echoed = await r.json()
                assert echoed["path"] == "/hello"
                assert ["x-envoy-attempt-count", "1"] in echoed["headers"]
        compiled = proxy.state.current.routes.virtual_hosts[0].routes
        assert [len(route.handlers) for route in compiled] == [1, 1]  # built once, then reused
        # A new snapshot puts a fault on the plain route: the next request gets the new chain.
        routes[1]["fault"] = {"abort": {"http_status": 503, "percent": 100}, "delay": None}
        assert proxy.state.apply(make_snapshot(echo_app.port, routes=routes, version="v-2")) is None
        async with session.get(f"{base}/hello", headers={"Host": "reviews"}) as r:
            assert (r.status, await r.text()) == (503, "fault filter abort")
