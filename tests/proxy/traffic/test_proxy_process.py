"""End to end: every traffic policy through the real sidecar process (``python -m meshkit.proxy``).

One proxy process reads one static snapshot with a virtual host per behaviour; scripted backends
on 127.0.0.1 fail on demand. Each response flag the traffic filters own (UH, UO, UT, URX, DI, FI,
RL) is checked on the wire and in the Istio metrics the admin port exports.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import async_wait_until

from .conftest import Action, Backend, cluster_spec, free_port

ROUTE_DEFAULTS: dict[str, Any] = {
    "match": [],
    "headers": None,
    "rewrite": None,
    "fault": None,
    "mirror": None,
    "timeout_ms": None,
    "retries": None,
}


def _vhost(name: str, cluster: str, **route: Any) -> dict[str, Any]:
    return {
        "name": f"{name}.default.svc.cluster.local:80",
        "service": name,
        "domains": [name, f"{name}:80"],
        "port": 80,
        "routes": [
            {
                **ROUTE_DEFAULTS,
                "name": f"{name}-route",
                "source": f"VirtualService/default/{name}#http[0]",
                "route": [{"cluster": cluster, "weight": 100, "headers": None}],
                **route,
            }
        ],
    }


def _snapshot(b: dict[str, Backend], dead_port: int, version: str) -> dict[str, Any]:
    unhealthy = cluster_spec([b["ok"].port])
    unhealthy["endpoints"][0]["healthy"] = False
    retry_5xx = {"attempts": 2, "per_try_timeout_ms": None, "retry_on": ["5xx"]}
    clusters = {
        "ok|": cluster_spec([b["ok"].port]),
        "flaky|": cluster_spec([b["flaky"].port]),
        "slow|": cluster_spec([b["slow"].port]),
        "breaker|": cluster_spec(
            [b["breaker"].port], connection_pool={"max_connections": 1, "http1_max_pending_requests": 1}
        ),
        "dead|": cluster_spec([dead_port]),
        "unhealthy|": unhealthy,
        "shadow|": cluster_spec([b["shadow"].port]),
        "exhausted|": cluster_spec([b["exhausted"].port]),
        "ejecting|": cluster_spec(
            [b["good"].port, b["bad"].port],
            outlier_detection={
                "consecutive_5xx_errors": 2,
                "consecutive_gateway_errors": None,
                "interval_ms": 10_000,
                "base_ejection_time_ms": 60_000,
                "max_ejection_percent": 50,
            },
        ),
    }
    for name, spec in clusters.items():
        spec["service"] = name.rstrip("|")  # destination_service_name in the metrics
    hosts = [
        _vhost("faulty", "ok|", fault={"delay": None, "abort": {"http_status": 503, "percent": 100.0}}),
        _vhost("delayed", "ok|", fault={"delay": {"fixed_delay_ms": 150, "percent": 100.0}, "abort": None}),
        _vhost("flaky", "flaky|", retries=retry_5xx),
        _vhost("slow", "slow|", timeout_ms=200),
        _vhost("breaker", "breaker|"),
        _vhost("dead", "dead|", retries={"attempts": 1, "retry_on": ["connect-failure"]}),
        _vhost("unhealthy", "unhealthy|"),
        _vhost("mirrored", "ok|", mirror={"cluster": "shadow|", "percent": 100.0}),
        _vhost("exhausted", "exhausted|", retries=retry_5xx),
        _vhost("ejecting", "ejecting|"),
    ]
    return {
        "schema": 1,
        "version": version,
        "revision": 1,
        "node": {
            "id": "client-v1-0.default",
            "workload": "client-v1",
            "instance": "client-v1-0",
            "namespace": "default",
            "service": "client",
            "version": "v1",
            "labels": {"app": "client", "version": "v1"},
            "identity": None,
            "kind": "sidecar",
        },
        "outbound": {"virtual_hosts": hosts},
        "clusters": clusters,
        "inbound": {
            "app": {"address": "127.0.0.1", "port": b["app"].port},
            "service_port": 80,
            "mtls": {"mode": "PERMISSIVE", "port_level": {}},
            "authz": {"deny": [], "allow": [], "audit": []},
            "rate_limit": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval_ms": 60_000},
        },
        "trust": None,
    }


def _rewrite_snapshot(directory: Path, doc: dict[str, Any]) -> None:
    """Replace the file the proxy process was started with (``proxy_process`` names it)."""
    (path,) = directory.glob("snapshot-*.json")
    path.write_text(json.dumps(doc))


async def _get(session: aiohttp.ClientSession, port: int, host: str) -> tuple[int, bytes]:
    async with session.get(f"http://127.0.0.1:{port}/p", headers={"Host": host}) as resp:
        return resp.status, await resp.read()


async def _admin_json(session: aiohttp.ClientSession, port: int, path: str) -> Any:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 200
        return json.loads(await resp.read())


async def _flags_by_host(session: aiohttp.ClientSession, admin: int) -> dict[str, set[tuple[str, str]]]:
    async with session.get(f"http://127.0.0.1:{admin}/stats/prometheus") as resp:
        text = (await resp.read()).decode()
    seen: dict[str, set[tuple[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "istio_requests":
            continue
        for sample in family.samples:
            if sample.name != "istio_requests_total":
                continue
            labels = sample.labels
            key = f"{labels['reporter']}:{labels['destination_service_name']}"
            seen.setdefault(key, set()).add((labels["response_code"], labels["response_flags"]))
    return seen


async def test_traffic_policies_through_the_sidecar_process(
    backends: Any, proxy_process: Any, tmp_path: Path
) -> None:
    names = ["ok", "flaky", "slow", "breaker", "shadow", "exhausted", "good", "bad", "app"]
    b = dict(zip(names, await backends(*names), strict=True))
    b["flaky"].then(Action(503), Action(503))
    b["slow"].default = Action(delay=3.0)
    b["breaker"].default = Action(delay=0.3)
    b["exhausted"].default = Action(503)
    b["bad"].default = Action(503)
    snapshot = _snapshot(b, free_port(), "v1")
    proxy = proxy_process(snapshot)
    out = proxy.outbound
    async with aiohttp.ClientSession() as session:
        # FI: aborted before any upstream is contacted
        assert await _get(session, out, "faulty") == (503, b"fault filter abort")
        # DI: held, then forwarded
        started = time.monotonic()
        status, _ = await _get(session, out, "delayed:80")
        assert status == 200 and time.monotonic() - started >= 0.14
        # retries: two 503s then success, every attempt numbered
        status, body = await _get(session, out, "flaky")
        assert (status, body) == (200, b"ok from flaky")
        assert [s.headers["x-envoy-attempt-count"] for s in b["flaky"].seen] == ["1", "2", "3"]
        # URX: retries exhausted on a retriable status
        assert (await _get(session, out, "exhausted"))[0] == 503 and len(b["exhausted"].seen) == 3
        # UT: the route timeout
        assert await _get(session, out, "slow") == (504, b"upstream request timeout")
        # UO: one connection, one pending, the third concurrent request overflows
        results = await asyncio.gather(*(_get(session, out, "breaker") for _ in range(3)))
        assert sorted(status for status, _ in results) == [200, 200, 503]
        assert b["breaker"].max_active == 1
        # UF + URX: nothing listens; the connect failure is retried once
        status, body = await _get(session, out, "dead")
        assert status == 503 and b"connection failure" in body
        # UH: no healthy endpoint
        assert await _get(session, out, "unhealthy") == (503, b"no healthy upstream")
        # mirror: the primary answers; the shadow copy arrives with a -shadow authority
        assert (await _get(session, out, "mirrored:80"))[0] == 200
        await async_wait_until(lambda: b["shadow"].seen, 10, "the shadow copy")
        assert [s.headers["host"] for s in b["shadow"].seen] == ["mirrored-shadow:80"]
        # outlier detection: two 503s eject "bad"; the rest go to "good"
        statuses = [(await _get(session, out, "ejecting"))[0] for _ in range(12)]
        assert statuses.count(503) == 2 and len(b["bad"].seen) == 2
        view = await _admin_json(session, proxy.admin, "/clusters")
        rows = {row["hostport"]: row for row in view["ejecting|"]["endpoints"]}
        assert rows[f"127.0.0.1:{b['bad'].port}"]["ejected"] is True
        assert rows[f"127.0.0.1:{b['good'].port}"]["rq_success"] == 10
        assert view["breaker|"]["stats"]["upstream_rq_pending_overflow"] == 1
        # RL: the inbound side's local rate limit keeps the app out after two requests
        inbound = [await _get(session, proxy.inbound, "client:80") for _ in range(3)]
        assert [s for s, _ in inbound] == [200, 200, 429]
        assert inbound[2][1] == b"local_rate_limited" and len(b["app"].seen) == 2

        flags = await _flags_by_host(session, proxy.admin)
        assert {("503", "FI"), ("200", "DI")} <= flags["source:ok"]  # the faulty and delayed hosts
        assert ("503", "URX") in flags["source:exhausted"]
        assert ("504", "UT") in flags["source:slow"]
        assert ("503", "UO") in flags["source:breaker"]
        assert ("503", "UF,URX") in flags["source:dead"]
        assert ("503", "UH") in flags["source:unhealthy"]
        assert ("429", "RL") in flags["destination:client"]

        # a reloaded snapshot (SIGHUP) keeps the ejection: state is carried over by cluster name
        _rewrite_snapshot(tmp_path, _snapshot(b, free_port(), "v2"))
        proxy.signal(signal.SIGHUP)
        for _ in range(300):
            dump = await _admin_json(session, proxy.admin, "/config_dump")
            if json.dumps(dump).find('"v2"') >= 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the proxy did not apply snapshot v2")
        view = await _admin_json(session, proxy.admin, "/clusters")
        rows = {row["hostport"]: row for row in view["ejecting|"]["endpoints"]}
        assert rows[f"127.0.0.1:{b['bad'].port}"]["ejected"] is True
        assert [(await _get(session, out, "ejecting"))[0] for _ in range(4)] == [200] * 4
