"""Namespaces in the compiled snapshot and in what the local mesh runs (Istio's mTLS migration layout).

httpbin in ``foo`` and in ``bar`` are two services with two clusters (``httpbin.foo|``,
``httpbin.bar|``) whose endpoints and SPIFFE identities are their own namespace's; a short name
resolves in the caller's namespace only, ``svc.ns`` and the FQDN everywhere; a VirtualService's
destination resolves in the VirtualService's namespace. Which Deployments get a sidecar follows
Istio: ``default`` (labelled enabled, as in Istio's getting-started) and ``istio-injection=enabled``
namespaces do, other namespaces do not unless the pod is marked (``istioctl kube-inject``).
"""

from __future__ import annotations

from typing import Any

import yaml

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.workloads import inject_manifests, plan_workloads
from meshkit.proxy.snapshot import Snapshot
from tests.config.bookinfo import SAMPLES

REGISTRY = RegistryView(
    services=(Service("httpbin", "bar", 8000), Service("httpbin", "foo", 8000), Service("sleep", "foo", 80)),
    endpoints=(
        Endpoint("httpbin-0", "httpbin", "httpbin", "foo", "127.0.0.1", 1006,
                 {"app": "httpbin", "version": "v1"}, "httpbin"),
        Endpoint("httpbin-0", "httpbin", "httpbin", "bar", "127.0.0.1", 2006,
                 {"app": "httpbin", "version": "v1"}, "httpbin"),
    ),
)
SLEEP_FOO = Node("sleep-0", "foo", "sleep", "sleep", {"app": "sleep"}, "sleep", app_port=3080)


def snap(resources: list[Any] | None = None, node: Node = SLEEP_FOO) -> dict[str, Any]:
    return compile_snapshot(resources or [], REGISTRY, node)


def host(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in snapshot["outbound"]["virtual_hosts"] if h["name"] == name)


def test_same_named_services_of_two_namespaces_are_two_clusters() -> None:
    clusters = snap()["clusters"]
    assert sorted(clusters) == ["httpbin.bar|", "httpbin.foo|", "sleep.foo|"]
    foo, bar = clusters["httpbin.foo|"], clusters["httpbin.bar|"]
    assert (foo["namespace"], bar["namespace"]) == ("foo", "bar")
    assert [e["port"] for e in foo["endpoints"]] == [1006] and [e["port"] for e in bar["endpoints"]] == [2006]
    assert foo["tls"] == {"mode": "ISTIO_MUTUAL",
                          "server_identities": ["spiffe://cluster.local/ns/foo/sa/httpbin"]}
    assert bar["tls"]["server_identities"] == ["spiffe://cluster.local/ns/bar/sa/httpbin"]
    Snapshot.from_json(snap())  # the sidecar takes it
    assert Snapshot.from_json(snap()).clusters["httpbin.bar|"].namespace == "bar"


def test_short_names_resolve_in_the_callers_namespace_and_svc_ns_everywhere() -> None:
    from_foo = snap()
    foo = host(from_foo, "httpbin.foo.svc.cluster.local:8000")
    bar = host(from_foo, "httpbin.bar.svc.cluster.local:8000")
    assert "httpbin" in foo["domains"] and "httpbin:8000" in foo["domains"]
    assert "httpbin" not in bar["domains"] and "httpbin.bar:8000" in bar["domains"]
    assert foo["routes"][0]["route"][0]["cluster"] == "httpbin.foo|"
    assert bar["routes"][0]["route"][0]["cluster"] == "httpbin.bar|"
    from_default = snap(node=Node("sleep-0", "default", "sleep", "sleep", {"app": "sleep"}, "sleep"))
    assert not any("httpbin" in h["domains"] for h in from_default["outbound"]["virtual_hosts"])


def test_a_virtual_service_destination_resolves_in_its_own_namespace() -> None:
    rules = load_resources("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: bar}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin}
      weight: 90
    - destination: {host: httpbin.foo.svc.cluster.local}
      weight: 10
""", origin="test")
    bar = host(snap(rules), "httpbin.bar.svc.cluster.local:8000")
    assert [d["cluster"] for d in bar["routes"][0]["route"]] == ["httpbin.bar|", "httpbin.foo|"]


def _plans(text: str) -> dict[tuple[str, str], Any]:
    return {(p.namespace, p.name): p for p in plan_workloads(load_resources(text, origin="test"))}


def _in(namespace: str, path: str, *, inject: bool = False) -> str:
    docs = [d for d in yaml.safe_load_all((SAMPLES / path).read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(inject_manifests(docs) if inject else docs)


def test_which_namespaces_get_sidecars_as_in_istio() -> None:
    namespaces = ("apiVersion: v1\nkind: Namespace\n"
                  "metadata: {name: labelled, labels: {istio-injection: enabled}}\n"
                  "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---\n")
    plans = _plans(namespaces + "\n---\n".join([
        _in("default", "sleep.yaml"), _in("labelled", "sleep.yaml"), _in("legacy", "sleep.yaml"),
        _in("foo", "sleep.yaml", inject=True), _in("foo", "httpbin.yaml", inject=True),
    ]))
    sidecars = {key: (plan.sidecar, plan.app) for key, plan in plans.items()}
    assert sidecars == {
        ("default", "sleep"): (True, "sleep"),
        ("labelled", "sleep"): (True, "sleep"),
        ("legacy", "sleep"): (False, "legacy"),  # no label, no kube-inject: the out-of-mesh client
        ("foo", "sleep"): (True, "sleep"),
        ("foo", "httpbin"): (True, "httpbin"),
    }
    assert plans[("foo", "httpbin")].service == "httpbin" and plans[("foo", "httpbin")].service_port == 8000


def test_export_to_limits_which_namespaces_see_a_rule() -> None:
    """A VirtualService and a DestinationRule of bar exported to ``.`` route bar's callers only;
    ``exportTo: [foo]`` makes them foo's too, as in Istio."""
    text = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: bar}
spec:
  hosts: [httpbin]
  exportTo: ["%s"]
  http:
  - route:
    - destination: {host: httpbin, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: bar}
spec:
  host: httpbin
  exportTo: ["%s"]
  subsets:
  - {name: v1, labels: {version: v1}}
"""
    sleep_bar = Node("sleep-0", "bar", "sleep", "sleep", {"app": "sleep"}, "sleep")
    own = load_resources(text % (".", "."), origin="test")

    def seen(snapshot: dict[str, Any]) -> tuple[str, bool]:
        route = host(snapshot, "httpbin.bar.svc.cluster.local:8000")["routes"][0]["route"][0]["cluster"]
        return route, "httpbin.bar|v1" in snapshot["clusters"]

    assert seen(snap(own, sleep_bar)) == ("httpbin.bar|v1", True)
    assert seen(snap(own)) == ("httpbin.bar|", False)  # from foo: neither is visible
    to_foo = load_resources(text % ("foo", "foo"), origin="test")
    assert seen(snap(to_foo)) == ("httpbin.bar|v1", True)
    assert seen(snap(to_foo, sleep_bar)) == ("httpbin.bar|", False)  # not exported to bar itself


def test_a_gateway_and_virtual_service_of_foo_route_the_ingress_to_foos_service() -> None:
    """Istio's httpbin-gateway.yaml applied with ``-n foo``: the ingress routes to httpbin.foo."""
    docs = [d for d in yaml.safe_load_all((SAMPLES / "httpbin-gateway.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = "foo"
    ingress = Node("istio-ingressgateway-0", "istio-system", "istio-ingressgateway", None,
                   {"istio": "ingressgateway"}, "istio-ingressgateway-service-account", kind="gateway")
    snapshot = compile_snapshot(load_resources(docs, origin="test"), REGISTRY, ingress)
    (only,) = snapshot["outbound"]["virtual_hosts"]
    assert only["domains"] == ["*"] and only["routes"][0]["route"][0]["cluster"] == "httpbin.foo|"
    assert snapshot["clusters"]["httpbin.foo|"]["endpoints"][0]["port"] == 1006
