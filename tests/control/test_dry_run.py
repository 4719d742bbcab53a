"""The routing dry run ("why is my rule not applied?") on Bookinfo, with Istio's own sample rules."""

from __future__ import annotations

from typing import Any

import aiohttp

from meshkit.cli.trace_verbs import dry_run_lines
from meshkit.config.loader import load_resources
from meshkit.config.resources import Resource
from meshkit.control.dry_run import route_dry_run
from meshkit.control.server import RunningControlPlane
from tests.config.bookinfo import bookinfo_registry, node_for, sample, vs

PRODUCTPAGE = node_for("productpage")
JASON = {"end-user": "jason"}


def run(resources: list[Resource], headers: dict[str, str] | None = None, host: str = "reviews",
        caller: Any = PRODUCTPAGE) -> dict[str, Any]:
    (answer,) = route_dry_run(resources, bookinfo_registry(), [caller], host, headers=headers)["callers"]
    return answer  # type: ignore[no-any-return]


def test_the_header_rule_matches_for_jason_and_the_default_rule_otherwise() -> None:
    rules = sample("destination-rule-all", "virtual-service-reviews-test-v2")
    jason = run(rules, JASON)
    assert jason["matched"]["source"] == "VirtualService/default/reviews#http[0]"
    assert [d["cluster"] for d in jason["matched"]["destinations"]] == ["reviews.default|v2"]
    assert jason["causes"] == []
    anyone = run(rules, {"end-user": "mary"})
    assert anyone["matched"]["source"] == "VirtualService/default/reviews#http[1]"
    assert [r["matches"] for r in anyone["rules"]] == [False, True]


def test_a_missing_destination_rule_subset_is_named_as_nc() -> None:
    jason = run(sample("virtual-service-reviews-test-v2"), JASON)  # no DestinationRule applied
    assert jason["matched"]["destinations"][0] == {"cluster": "reviews.default|v2", "weight": 100.0,
                                                   "exists": False}
    assert any(c.startswith("NC: VirtualService/default/reviews#http[0] routes to subset 'v2'")
               for c in jason["causes"]), jason["causes"]


def test_an_earlier_catch_all_rule_shadows_the_header_rule() -> None:
    http = """  - route:
    - destination: {host: reviews, subset: v1}
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
"""
    answer = run([*sample("destination-rule-all"), *load_resources(vs(http))], JASON)
    assert answer["matched"]["source"] == "VirtualService/default/reviews#http[0]"
    assert answer["causes"] == ["rule VirtualService/default/reviews#http[1] also matches, but "
                                "VirtualService/default/reviews#http[0] comes first and wins (first match "
                                "wins): it is shadowed for this request"]


def test_gateway_only_wrong_namespace_and_source_labels_are_named() -> None:
    http = """  - route:
    - destination: {host: reviews, subset: v2}
"""
    bound = vs(http).replace("  hosts: [reviews]", "  hosts: [reviews]\n  gateways: [bookinfo-gateway]")
    answer = run([*sample("destination-rule-all"), *load_resources(bound)])
    assert answer["matched"]["source"] == "default"
    assert answer["causes"] == ["VirtualService/default/reviews is bound to gateways ['bookinfo-gateway'] "
                                "only: sidecars ignore it (add 'mesh' to spec.gateways)"]
    elsewhere = run([*sample("destination-rule-all"), *load_resources(vs(http, namespace="other"))])
    assert elsewhere["matched"]["source"] == "default"
    assert "wrong namespace" in elsewhere["causes"][0]
    only_ratings = """  - match:
    - sourceLabels: {app: ratings}
    route:
    - destination: {host: reviews, subset: v2}
"""
    excluded = run([*sample("destination-rule-all"), *load_resources(vs(only_ratings))])
    assert excluded["matched"] is None and excluded["causes"][0].startswith("NR: no rule of")


def test_an_unknown_host_is_the_outbound_traffic_policys() -> None:
    answer = run(sample("destination-rule-all"), host="reveiws")
    assert answer["matched"] is None
    assert answer["causes"][0].startswith("ALLOW_ANY: from productpage-v1 no service")
    assert "PassthroughCluster" in answer["causes"][0]


def test_a_port_no_service_declares_for_http_has_no_rule_and_goes_as_tcp() -> None:
    answer = run(sample("destination-rule-all"), host="reviews:9999")
    assert answer["matched"] is None and answer["rules"] == [], answer
    [cause] = answer["causes"]
    assert cause.startswith("ALLOW_ANY: from productpage-v1 no Service, ServiceEntry or VirtualService "
                            "declares port 9999 for HTTP") and "PassthroughCluster" in cause, cause
    assert run(sample("destination-rule-all"), host="reviews:9080")["matched"] is not None  # declared: HTTP


async def test_api_and_cli_lines(control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    plane = control_plane.control_plane
    for name, version in (("reviews", "v1"), ("reviews", "v2"), ("productpage", "v1")):
        async with session.post(f"{control_plane.url}/api/v1/registry/services",
                                json={"name": name, "port": 9080}) as r:
            assert r.status < 300, await r.text()
        async with session.post(f"{control_plane.url}/api/v1/registry/endpoints", json={
            "instance": f"{name}-{version}-0", "workload": f"{name}-{version}", "service": name,
            "address": "127.0.0.1", "port": 1, "labels": {"app": name, "version": version},
        }) as r:
            assert r.status < 300, await r.text()
    plane.store.apply(sample("destination-rule-all", "virtual-service-reviews-test-v2"))
    url = f"{control_plane.url}/api/v1/explain/route"
    async with session.get(url, params=[("host", "reviews"), ("header", "end-user:jason"),
                                        ("from", "productpage")]) as r:
        answer = await r.json()
    assert [c["caller"] for c in answer["callers"]] == ["productpage-v1"]
    lines = dry_run_lines(answer)
    assert lines[0] == "GET reviews/ end-user=jason"
    assert lines[2] == ("from productpage-v1.default: VirtualService/default/reviews#http[0] → "
                        "reviews.default|v2 (100)")
    async with session.get(url, params={"host": "reviews", "from": "nobody"}) as r:
        assert r.status == 400 and "from" in await r.text()
    async with session.get(url) as r:
        assert r.status == 400 and "host is required" in await r.text()


def test_a_redirect_rule_names_the_code_and_location_the_proxy_answers() -> None:
    http = """  - match:
    - uri: {prefix: /old}
    redirect: {uri: /new, authority: example.com, scheme: https}
  - route:
    - destination: {host: reviews}
"""
    (answer,) = route_dry_run(load_resources(vs(http)), bookinfo_registry(), [PRODUCTPAGE], "reviews",
                              path="/old/x?q=1")["callers"]
    assert answer["matched"]["destinations"] == []
    assert answer["matched"]["redirect"] == {"code": 301, "location": "https://example.com/new?q=1"}
    assert answer["causes"] == [
        "redirect: VirtualService/default/reviews#http[0] is answered by the proxy itself with 301 "
        "Location https://example.com/new?q=1 (nothing goes upstream)"]
    other = run(load_resources(vs(http)))
    assert other["matched"]["redirect"] is None and other["causes"] == []
