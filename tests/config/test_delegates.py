"""VirtualService delegation compiled as Istio merges it (`meshkit.config.delegates`): the root rule's
match combined with the delegate's, its settings inherited, destinations kept in the delegate's
namespace, contradicting matches dropped; a delegate alone routes nothing."""

from __future__ import annotations

from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.delegates import expand_delegates
from meshkit.config.loader import load_resources
from meshkit.config.registry import Node
from meshkit.config.resources import VirtualService
from tests.config.bookinfo import bookinfo_registry, node_for

ROOT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-root, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /reviews}, headers: {end-user: {exact: jason}}}]
    delegate: {name: reviews-delegate, namespace: team}
    timeout: 2s
  - route: [{destination: {host: reviews, subset: v1}}]
---
"""
DELEGATE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-delegate, namespace: team}
spec:
  http:
  - match: [{uri: {prefix: /reviews/v2}}]
    route: [{destination: {host: reviews.default, subset: v2}}]
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings.default}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v3}}]
    timeout: 5s
"""


def _reviews_routes(text: str) -> list[dict[str, Any]]:
    snapshot = compile_snapshot(load_resources(text), bookinfo_registry(), node_for("productpage"))
    (vhost,) = [v for v in snapshot["outbound"]["virtual_hosts"] if v["service"] == "reviews"]
    return list(vhost["routes"])


def test_a_delegate_takes_the_place_of_the_root_rule() -> None:
    routes = _reviews_routes(ROOT + DELEGATE)
    jason = {"end-user": {"exact": "jason"}}
    assert [([(m["uri"], m["headers"]) for m in r["match"]], [d["cluster"] for d in r["route"]],
             r["timeout_ms"]) for r in routes] == [
        # the root's match narrowed by the delegate's: prefix /reviews/v2 and the root's header
        ([({"prefix": "/reviews/v2"}, jason)], ["reviews.default|v2"], 2000),
        # the delegate rule without a match inherits the root's; its own timeout wins
        ([({"prefix": "/reviews"}, jason)], ["reviews.default|v3"], 5000),
        ([], ["reviews.default|v1"], None),
    ]
    # /ratings is outside the root's /reviews: dropped, as Istio drops a conflicting delegate match


def test_destinations_keep_the_delegates_namespace() -> None:
    delegate = DELEGATE.replace("host: reviews.default.svc.cluster.local", "host: reviews")
    (root,) = [r for r in expand_delegates(load_resources(ROOT + delegate)) if isinstance(r, VirtualService)]
    hosts = [d.destination.host for http in root.spec.http or [] for d in http.route or []]
    # "reviews" written in namespace team is reviews.team, not the root's reviews.default
    assert hosts == ["reviews.default.svc.cluster.local", "reviews.team.svc.cluster.local", "reviews"]


def test_a_delegate_alone_routes_nothing_and_a_missing_one_matches_nothing() -> None:
    plain = _reviews_routes("")
    assert _reviews_routes(DELEGATE) == plain  # no hosts: it applies nowhere by itself
    routes = _reviews_routes(ROOT)  # its delegate is not applied (yet): the rule matches nothing
    assert [r["route"][0]["cluster"] for r in routes] == ["reviews.default|v1"]


def test_a_root_without_delegates_is_left_as_it_is() -> None:
    resources = load_resources(DELEGATE.replace("http:", "hosts: [ratings]\n  http:", 1))
    assert expand_delegates(resources) == resources


def test_a_delegate_on_the_ingress_gateway() -> None:
    gateway = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
"""
    root = ROOT.replace("hosts: [reviews]", "hosts: [bookinfo.example.com]\n  gateways: [gw]")
    ingress = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
                   labels={"istio": "ingressgateway", "app": "istio-ingressgateway"})
    snapshot = compile_snapshot(load_resources(gateway + root + DELEGATE), bookinfo_registry(), ingress)
    (vhost,) = snapshot["outbound"]["virtual_hosts"]
    assert [[d["cluster"] for d in r["route"]] for r in vhost["routes"]] == [
        ["reviews.default|v2"], ["reviews.default|v3"], ["reviews.default|v1"]]
