"""compile_snapshot: the docs/snapshot.md JSON for representative Istio configurations."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from meshkit.config.compile import compile_snapshot, default_retry_policy
from meshkit.config.loader import load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.resources import Resource
from tests.config.bookinfo import BOOKINFO_GATEWAY_VS, bookinfo_registry, node_for, sample, vs

PRODUCTPAGE = node_for("productpage")
DEFAULT_RETRIES = {
    "attempts": 2,
    "per_try_timeout_ms": None,
    "retry_on": ["connect-failure", "refused-stream", "unavailable", "cancelled"],
    "retriable_status_codes": [],  # Istio 1.24+: the default no longer retries 503
}


def snap(
    resources: list[Resource], node: Node = PRODUCTPAGE, registry: RegistryView | None = None, **kwargs: Any
) -> dict[str, Any]:
    return compile_snapshot(resources, registry or bookinfo_registry(), node, **kwargs)


def virtual_service(host: str, http: str) -> list[Resource]:
    """One VirtualService named after ``host`` and routing it; ``http`` is its ``spec.http`` in YAML."""
    return load_resources(vs(http, name=host, hosts=f"[{host}]"))


def vhost(snapshot: dict[str, Any], service: str) -> dict[str, Any]:
    (found,) = [v for v in snapshot["outbound"]["virtual_hosts"] if v["service"] == service]
    return found


def routes(snapshot: dict[str, Any], service: str) -> list[dict[str, Any]]:
    return vhost(snapshot, service)["routes"]


def test_top_level_shape_node_and_trust() -> None:
    snapshot = snap([], node_for("reviews", "v2"), revision=7)
    assert list(snapshot) == [
        "schema",
        "version",
        "revision",
        "node",
        "outbound",
        "clusters",
        "inbound",
        "trust",
        "mesh",
        "tracing",
        "egress",
        "tls",
        "tcp",
    ]
    # Istio's meshConfig defaults
    assert snapshot["mesh"] == {"path_normalization": "BASE", "outbound_traffic_policy": "ALLOW_ANY",
                                "num_trusted_proxies": 0, "proxy_protocol": False}
    assert snapshot["egress"] == {"hosts": {}, "real_dns": False}
    assert snapshot["tls"] == {"routes": [], "hosts": []}
    # a sidecar's opaque TCP: one default route per Service port, to its own cluster (no VirtualService)
    assert snapshot["tcp"]["routes"][0] == {
        "name": "details.default.svc.cluster.local:9080", "port": 9080,
        "hosts": ["details", "details.default", "details.default.svc", "details.default.svc.cluster.local"],
        "destinations": [{"host": "details.default.svc.cluster.local", "port": 9080,
                          "cluster": "details.default|", "weight": 100}]}
    assert snapshot["schema"] == 1 and snapshot["revision"] == 7
    assert snapshot["tracing"] == {"sampling": 1.0, "report": True}  # Istio's default: 1%
    assert snapshot["node"] == {
        "id": "reviews-v2-0.default",
        "workload": "reviews-v2",
        "instance": "reviews-v2-0",
        "namespace": "default",
        "service": "reviews",
        "version": "v2",
        "labels": {"app": "reviews", "version": "v2"},
        "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "kind": "sidecar",
    }
    assert snapshot["trust"] == {"root_pem": "ROOT-PEM"}
    assert snap([], registry=bookinfo_registry(root_pem=None))["trust"] is None
    json.dumps(snapshot)  # plain JSON all the way down


def test_every_service_gets_a_virtual_host_with_documented_domains_and_default_route() -> None:
    snapshot = snap([])
    assert [v["service"] for v in snapshot["outbound"]["virtual_hosts"]] == [
        "details",
        "productpage",
        "ratings",
        "reviews",
    ]
    reviews = vhost(snapshot, "reviews")
    assert reviews["name"] == "reviews.default.svc.cluster.local:9080"
    assert reviews["port"] == 9080
    assert reviews["domains"] == [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
    ]
    assert reviews["routes"] == [
        {
            "name": "default",
            "source": "default",
            "match": [],
            "route": [{"cluster": "reviews.default|", "weight": 100, "headers": None}],
            "headers": None,
            "rewrite": None,
            "redirect": None,
            "fault": None,
            "mirror": None,
            "timeout_ms": None,
            "retries": DEFAULT_RETRIES,
        }
    ]
    assert default_retry_policy() == DEFAULT_RETRIES


def test_short_names_only_for_services_in_the_node_namespace() -> None:
    registry = RegistryView(services=(Service("httpbin", "foo", 8000),))
    (host,) = snap([], registry=registry)["outbound"]["virtual_hosts"]
    assert host["domains"] == [
        "httpbin.foo",
        "httpbin.foo:8000",
        "httpbin.foo.svc",
        "httpbin.foo.svc.cluster.local",
        "httpbin.foo.svc.cluster.local:8000",
    ]


def test_header_match_route_compiled_in_order() -> None:
    snapshot = snap(sample("virtual-service-reviews-test-v2", "destination-rule-all"))
    jason, everyone = routes(snapshot, "reviews")
    assert jason["name"] == "reviews.0"
    assert jason["source"] == "VirtualService/default/reviews#http[0]"
    assert jason["match"] == [{"headers": {"end-user": {"exact": "jason"}}, "ignore_uri_case": False}]
    assert jason["route"] == [{"cluster": "reviews.default|v2", "weight": 100, "headers": None}]
    assert jason["retries"] == DEFAULT_RETRIES and jason["timeout_ms"] is None
    assert everyone["match"] == [] and everyone["route"][0]["cluster"] == "reviews.default|v1"
    assert routes(snapshot, "ratings")[0]["name"] == "default"  # no VirtualService for ratings here


def test_weights() -> None:
    snapshot = snap(sample("virtual-service-reviews-80-20", "destination-rule-all"))
    assert [(r["cluster"], r["weight"]) for r in routes(snapshot, "reviews")[0]["route"]] == [
        ("reviews.default|v1", 80),
        ("reviews.default|v2", 20),
    ]
    snapshot = snap(sample("virtual-service-reviews-50-v3", "destination-rule-all"))
    assert [(r["cluster"], r["weight"]) for r in routes(snapshot, "reviews")[0]["route"]] == [
        ("reviews.default|v1", 50),
        ("reviews.default|v3", 50),
    ]


def test_subset_clusters_and_endpoints() -> None:
    clusters = snap(sample("destination-rule-all"))["clusters"]
    assert list(clusters) == sorted(clusters)
    assert set(clusters) == {
        "details.default|",
        "details.default|v1",
        "details.default|v2",
        "productpage.default|",
        "productpage.default|v1",
        "ratings.default|",
        "ratings.default|v1",
        "ratings.default|v2",
        "ratings.default|v2-mysql",
        "ratings.default|v2-mysql-vm",
        "reviews.default|",
        "reviews.default|v1",
        "reviews.default|v2",
        "reviews.default|v3",
    }
    assert [e["instance"] for e in clusters["reviews.default|"]["endpoints"]] == [
        "reviews-v1-0",
        "reviews-v2-0",
        "reviews-v3-0",
    ]
    v2 = clusters["reviews.default|v2"]
    assert (v2["service"], v2["subset"], v2["port"], v2["lb"]) == ("reviews", "v2", 9080, "LEAST_REQUEST")
    assert v2["endpoints"] == [
        {
            "address": "127.0.0.1",
            "port": 41003,
            "instance": "reviews-v2-0",
            "workload": "reviews-v2",
            "version": "v2",
            "labels": {"app": "reviews", "version": "v2"},
            "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "has_sidecar": True,
            "healthy": True,
        }
    ]
    assert v2["connection_pool"] is None and v2["outlier_detection"] is None
    assert v2["tls"] == {
        "mode": "ISTIO_MUTUAL",
        "server_identities": ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"],
    }
    assert clusters["details.default|v2"]["endpoints"] == []
    assert clusters["reviews.default|"]["subset"] == ""


def test_source_labels_resolved_against_the_node() -> None:
    resources = virtual_service("ratings", """
  - name: from-reviews-v2
    match:
    - sourceLabels: {app: reviews, version: v2}
    - sourceLabels: {app: productpage}
      uri: {prefix: /ratings}
    route: [{destination: {host: ratings, subset: v1}}]
  - name: only-reviews-v2
    match:
    - sourceLabels: {app: reviews, version: v2}
    route: [{destination: {host: ratings, subset: v2}}]
  - route: [{destination: {host: ratings}}]
""")
    for_productpage = routes(snap(resources, PRODUCTPAGE), "ratings")
    assert [r["name"] for r in for_productpage] == ["from-reviews-v2", "ratings.2"]
    assert for_productpage[0]["match"] == [{"uri": {"prefix": "/ratings"}, "ignore_uri_case": False}]
    for_reviews_v2 = routes(snap(resources, node_for("reviews", "v2")), "ratings")
    assert [r["name"] for r in for_reviews_v2] == ["from-reviews-v2", "only-reviews-v2", "ratings.2"]
    assert for_reviews_v2[0]["match"] == [{"ignore_uri_case": False}]
    assert "sourceLabels" not in json.dumps(for_reviews_v2) and "source_labels" not in json.dumps(
        for_reviews_v2
    )


def test_fault_disables_timeout_and_retries() -> None:
    resources = sample("virtual-service-ratings-test-delay", "destination-rule-all")
    delayed, normal = routes(snap(resources), "ratings")
    assert delayed["fault"] == {"delay": {"fixed_delay_ms": 7000, "percent": 100.0}, "abort": None}
    assert delayed["timeout_ms"] is None and delayed["retries"] is None
    assert normal["fault"] is None and normal["retries"] == DEFAULT_RETRIES
    aborted = routes(snap(sample("virtual-service-ratings-test-abort")), "ratings")[0]
    assert aborted["fault"] == {"delay": None, "abort": {"http_status": 500, "percent": 100.0}}
    legacy = routes(snap(sample("virtual-service-ratings-test-delay-v1alpha3-percent")), "ratings")[0]
    assert legacy["fault"]["delay"] == {"fixed_delay_ms": 7000, "percent": 100.0}
    with_timeout = virtual_service("ratings", """
  - route: [{destination: {host: ratings}}]
    timeout: 3s
    retries: {attempts: 5}
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
""")
    route = routes(snap(with_timeout), "ratings")[0]
    assert (route["timeout_ms"], route["retries"], route["fault"]["abort"]["percent"]) == (None, None, 50.0)


def test_timeout_and_retries() -> None:
    route = routes(snap(sample("virtual-service-reviews-timeout")), "reviews")[0]
    assert route["timeout_ms"] == 500 and route["retries"] == DEFAULT_RETRIES
    registry = RegistryView(services=(Service("ratings", "prod", 9080),))
    (host,) = snap(sample("virtual-service-ratings-retries"), registry=registry)["outbound"]["virtual_hosts"]
    (route,) = host["routes"]
    assert route["route"][0]["cluster"] == "ratings.prod|v1"
    assert route["retries"] == {
        "attempts": 3,
        "per_try_timeout_ms": 2000,
        "retry_on": ["gateway-error", "connect-failure", "refused-stream"],
        "retriable_status_codes": [],
    }
    custom = virtual_service("reviews", """
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 0}
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 4, retryOn: "5xx, 503,retriable-status-codes,429"}
""")
    disabled, codes = routes(snap(custom), "reviews")
    assert disabled["retries"] == {**DEFAULT_RETRIES, "attempts": 0}
    assert codes["retries"]["retry_on"] == ["5xx", "503", "retriable-status-codes", "429"]
    assert codes["retries"]["retriable_status_codes"] == [429, 503]


def test_mirror_headers_and_rewrite() -> None:
    (route,) = routes(snap(sample("httpbin-mirroring"), registry=_httpbin_registry()), "httpbin")
    assert route["mirror"] == {"cluster": "httpbin.default|v2", "percent": 100.0}
    resources = virtual_service("reviews", """
  - match: [{uri: {prefix: /old}, ignoreUriCase: true, method: {exact: GET},
             queryParams: {Debug: {exact: "1"}}, withoutHeaders: {X-Canary: {exact: "no"}}}]
    rewrite: {uri: /new}
    headers:
      request: {set: {X-A: "1"}, remove: [X-B]}
    route:
    - destination: {host: reviews}
      headers: {response: {add: {X-Served-By: reviews}}}
    mirror: {host: reviews.default.svc.cluster.local}
    mirrorPercent: 5
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
""")
    first, second = routes(snap(resources), "reviews")
    assert first["match"] == [
        {
            "uri": {"prefix": "/old"},
            "method": {"exact": "GET"},
            "without_headers": {"x-canary": {"exact": "no"}},
            "query_params": {"Debug": {"exact": "1"}},
            "ignore_uri_case": True,
        }
    ]
    assert first["rewrite"] == {"uri": "/new", "authority": None, "uri_regex": None}
    assert first["headers"] == {
        "request": {"set": {"x-a": "1"}, "add": {}, "remove": ["x-b"]},
        "response": {"set": {}, "add": {}, "remove": []},
    }
    assert first["route"][0]["headers"] == {
        "request": {"set": {}, "add": {}, "remove": []},
        "response": {"set": {}, "add": {"x-served-by": "reviews"}, "remove": []},
    }
    assert first["mirror"] == {"cluster": "reviews.default|", "percent": 5.0}
    assert second["mirror"] == {"cluster": "reviews.default|", "percent": 100.0}


def _httpbin_registry(*, legacy_v2: bool = False) -> RegistryView:
    return RegistryView(
        services=(Service("httpbin", "default", 8000),),
        endpoints=tuple(
            Endpoint(
                f"httpbin-{v}-0",
                f"httpbin-{v}",
                "httpbin",
                "default",
                "127.0.0.1",
                42000 + i,
                {"app": "httpbin", "version": v},
                service_account="httpbin",
                has_sidecar=not (legacy_v2 and v == "v2"),
            )
            for i, v in enumerate(["v1", "v2"])
        ),
    )


def test_circuit_breaker_policy() -> None:
    clusters = snap(sample("httpbin-circuit-breaker"), registry=_httpbin_registry())["clusters"]
    cluster = clusters["httpbin.default|"]
    assert cluster["connection_pool"] == {
        "max_connections": 1,
        "connect_timeout_ms": None,
        "http1_max_pending_requests": 1,
        "max_requests": None,
        "max_requests_per_connection": 1,
        "max_retries": None,
    }
    assert cluster["outlier_detection"] == {
        "consecutive_5xx_errors": 1,
        "consecutive_gateway_errors": None,
        "interval_ms": 1000,
        "base_ejection_time_ms": 180_000,
        "max_ejection_percent": 100,
    }
    defaults = load_resources("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 250ms}, http: {http2MaxRequests: 10, maxRetries: 2}}
    outlierDetection: {consecutiveGatewayErrors: 3}
""")
    cluster = snap(defaults, registry=_httpbin_registry())["clusters"]["httpbin.default|"]
    assert cluster["connection_pool"] == {
        "max_connections": None,
        "connect_timeout_ms": 250,
        "http1_max_pending_requests": None,
        "max_requests": 10,
        "max_requests_per_connection": 0,
        "max_retries": 2,
    }
    assert cluster["outlier_detection"] == {
        "consecutive_5xx_errors": 5,
        "consecutive_gateway_errors": 3,
        "interval_ms": 10_000,
        "base_ejection_time_ms": 30_000,
        "max_ejection_percent": 10,
    }


def test_subset_policy_merged_over_top_level() -> None:
    clusters = snap(sample("destination-rule-reviews-lb"))["clusters"]
    assert {k: c["lb"] for k, c in clusters.items() if k.startswith("reviews")} == {
        "reviews.default|": "RANDOM",
        "reviews.default|v1": "RANDOM",
        "reviews.default|v2": "ROUND_ROBIN",
        "reviews.default|v3": "RANDOM",
    }
    merged = load_resources("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    connectionPool: {tcp: {maxConnections: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 2}}, tls: {mode: DISABLE}}
""")
    clusters = snap(merged)["clusters"]
    assert clusters["reviews.default|v1"]["lb"] == "LEAST_REQUEST"  # LEAST_CONN is Istio's old name
    # the subset's connectionPool replaces the top-level one as a whole (Istio's merge)
    assert clusters["reviews.default|v1"]["connection_pool"]["max_connections"] is None
    assert clusters["reviews.default|v1"]["connection_pool"]["http1_max_pending_requests"] == 2
    assert clusters["reviews.default|"]["connection_pool"]["max_connections"] == 10
    assert clusters["reviews.default|v1"]["tls"] == {"mode": "DISABLE", "server_identities": []}
    assert clusters["reviews.default|"]["tls"]["mode"] == "ISTIO_MUTUAL"


def test_automatic_mtls() -> None:
    clusters = snap(sample("httpbin-mirroring"), registry=_httpbin_registry(legacy_v2=True))["clusters"]
    assert clusters["httpbin.default|v1"]["tls"] == {
        "mode": "ISTIO_MUTUAL",
        "server_identities": ["spiffe://cluster.local/ns/default/sa/httpbin"],
    }
    assert clusters["httpbin.default|v2"]["tls"]["mode"] == "DISABLE"  # no sidecar there
    assert clusters["httpbin.default|"]["tls"]["mode"] == "DISABLE"  # not every endpoint has one
    disabled_peer = load_resources("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin-v1}
spec: {selector: {matchLabels: {app: httpbin, version: v1}}, mtls: {mode: DISABLE}}
""")
    clusters = snap(disabled_peer, registry=_httpbin_registry())["clusters"]
    assert clusters["httpbin.default|"]["tls"]["mode"] == "DISABLE"  # the v1 workload only accepts plaintext
    mutual = sample("destination-rule-all-mtls")
    clusters = snap(mutual, registry=bookinfo_registry(has_sidecar=False))["clusters"]
    assert clusters["reviews.default|v1"]["tls"]["mode"] == "ISTIO_MUTUAL"  # the DestinationRule says so


def test_gateway_bound_virtual_services_do_not_apply_to_sidecars() -> None:
    resources = load_resources("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-edge}
spec:
  hosts: [reviews]
  gateways: [bookinfo-gateway]
  http: [{route: [{destination: {host: reviews, subset: v3}}]}]
""")
    assert routes(snap(resources), "reviews")[0]["name"] == "default"
    gateway = Node("ingress-0", namespace="istio-system", kind="gateway",
                   labels={"app": "istio-ingressgateway", "istio": "ingressgateway"})
    assert snap(resources, gateway)["outbound"]["virtual_hosts"] == []  # no Gateway named bookinfo-gateway
    bound = [*resources, *load_resources("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
""")]
    (host,) = snap(bound, gateway)["outbound"]["virtual_hosts"]
    assert host["domains"] == ["reviews"] and host["routes"][0]["route"][0]["cluster"] == "reviews.default|v3"
    both = load_resources(
        json.dumps(resources[0].to_dict()).replace('["bookinfo-gateway"]', '["bookinfo-gateway", "mesh"]')
    )
    assert routes(snap(both), "reviews")[0]["route"][0]["cluster"] == "reviews.default|v3"


def test_version_is_a_stable_content_hash() -> None:
    resources = sample("virtual-service-all-v1", "destination-rule-all", "authorization-policy-bookinfo")
    first = snap(resources, revision=1)
    again = snap(list(reversed(resources)), revision=2)
    assert len(first["version"]) == 16 and int(first["version"], 16) >= 0
    assert first["version"] == again["version"]  # order of input and the revision do not matter
    content = {k: v for k, v in first.items() if k not in ("version", "revision")}
    expected = hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()[:16]
    assert first["version"] == expected
    assert json.dumps(first, sort_keys=True) == json.dumps({**again, "revision": 1}, sort_keys=True)
    changed = snap(sample("virtual-service-reviews-80-20", "destination-rule-all"), revision=1)
    assert changed["version"] != first["version"]
    other_node = snap(resources, node_for("reviews"), revision=1)
    assert other_node["version"] != first["version"]
    registry = bookinfo_registry(root_pem="ANOTHER-ROOT")
    assert snap(resources, registry=registry, revision=1)["version"] != first["version"]


def test_same_resource_twice_keeps_the_last() -> None:
    first, second = sample("virtual-service-reviews-v3", "virtual-service-reviews-80-20")
    assert first.key == second.key
    assert [r["cluster"] for r in routes(snap([first, second]), "reviews")[0]["route"]] == [
        "reviews.default|v1",
        "reviews.default|v2",
    ]
    chosen = routes(snap([second, first]), "reviews")[0]["route"]
    assert [r["cluster"] for r in chosen] == ["reviews.default|v3"]


def test_hosts_that_are_not_registry_services_get_their_own_virtual_hosts() -> None:
    resources = load_resources(BOOKINFO_GATEWAY_VS)
    gateway = Node("ingress-0", namespace="istio-system", labels={"istio": "ingressgateway"}, kind="gateway")
    hosts = snap(resources, gateway)["outbound"]["virtual_hosts"]
    assert [h["name"] for h in hosts] == ["*"]  # only what Gateway + VirtualService bind: no internal names
    wildcard = hosts[-1]
    assert (wildcard["service"], wildcard["domains"], wildcard["port"]) == (None, ["*"], None)
    assert [r["source"] for r in wildcard["routes"]] == ["VirtualService/default/bookinfo#http[0]"]
    assert wildcard["routes"][0]["route"][0]["cluster"] == "productpage.default|"
    sidecar_hosts = snap(resources)["outbound"]["virtual_hosts"]
    assert [h["name"] for h in sidecar_hosts][-1] == "httpbin.org"  # the gateway-bound "*" is not here
    assert sidecar_hosts[-1]["domains"] == ["httpbin.org"]
    assert sidecar_hosts[-1]["routes"][0]["timeout_ms"] == 3000


def test_mesh_config_path_normalization() -> None:
    strict = snap([], mesh_config={"pathNormalization": {"normalization": "MERGE_SLASHES"}})
    assert strict["mesh"] == {"path_normalization": "MERGE_SLASHES", "outbound_traffic_policy": "ALLOW_ANY",
                              "num_trusted_proxies": 0, "proxy_protocol": False}
    assert snap([])["version"] != strict["version"]  # a change of mode is pushed
    with pytest.raises(ValueError, match=r"meshConfig\.pathNormalization\.normalization: 'SOMETIMES'"):
        snap([], mesh_config={"pathNormalization": {"normalization": "SOMETIMES"}})
