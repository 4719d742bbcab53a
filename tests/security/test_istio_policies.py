"""Istio YAML -> meshkit.config (loader + compiler) -> snapshot -> the sidecar's authz/authn decisions.

Checks the contract between CONFIG's compiler output and this side's interpretation of it.
"""

from __future__ import annotations

from typing import Any

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.proxy.filters.authn import mtls_mode_for_port
from meshkit.proxy.filters.authz import compile_authz
from meshkit.proxy.http import Headers, Request

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
RATINGS = "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
OUTSIDER = "spiffe://cluster.local/ns/foo/sa/sleep"

REVIEWS = Node(
    instance="reviews-v1-0", namespace="default", workload="reviews-v1", service="reviews",
    labels={"app": "reviews", "version": "v1"}, service_account="bookinfo-reviews", app_port=41000,
)
REGISTRY = RegistryView(
    services=(Service("reviews", "default", 9080),),
    endpoints=(
        Endpoint("reviews-v1-0", "reviews-v1", "reviews", "default", "127.0.0.1", 41001,
                 {"app": "reviews", "version": "v1"}, "bookinfo-reviews"),
    ),
)

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/reviews/*"]
  - when:
    - key: request.headers[x-canary]
      values: ["yes"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-other-namespaces
  namespace: default
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["default"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: reviews-legacy-port
  namespace: default
spec:
  selector:
    matchLabels:
      app: reviews
  mtls:
    mode: STRICT
  portLevelMtls:
    9080:
      mode: PERMISSIVE
"""


def _inbound(yaml_text: str) -> dict[str, Any]:
    snapshot = compile_snapshot(load_resources(yaml_text), REGISTRY, REVIEWS)
    inbound: dict[str, Any] = snapshot["inbound"]
    return inbound


def _allowed(inbound: dict[str, Any], method: str, path: str, peer: str | None, **headers: str) -> bool:
    policies = compile_authz(inbound["authz"], port=inbound["service_port"])
    assert policies is not None
    request = Request(method, path, "reviews:9080", Headers(list(headers.items())), peer_identity=peer)
    return policies.evaluate(request).allowed


def test_istio_authorization_policies_through_the_compiler() -> None:
    inbound = _inbound(POLICIES)
    assert _allowed(inbound, "GET", "/reviews/0", PRODUCTPAGE)
    assert not _allowed(inbound, "POST", "/reviews/0", PRODUCTPAGE)  # method not allowed
    assert not _allowed(inbound, "GET", "/reviews/0", RATINGS)  # principal not allowed
    assert not _allowed(inbound, "GET", "/health", PRODUCTPAGE)  # path not allowed
    assert _allowed(inbound, "GET", "/health", RATINGS, **{"x-canary": "yes"})  # second rule
    assert not _allowed(inbound, "GET", "/reviews/0", OUTSIDER, **{"x-canary": "yes"})  # DENY wins
    assert not _allowed(inbound, "GET", "/reviews/0", None)  # plaintext: no principal, no namespace


def test_allow_nothing_policy_denies_everything() -> None:
    inbound = _inbound(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow-nothing, namespace: default}\nspec: {}\n"
    )
    assert not _allowed(inbound, "GET", "/", PRODUCTPAGE)


def test_peer_authentication_precedence_reaches_the_sidecar() -> None:
    inbound = _inbound(POLICIES)
    assert mtls_mode_for_port(inbound["mtls"], inbound["service_port"]) == "PERMISSIVE"
    assert mtls_mode_for_port(inbound["mtls"], 8080) == "STRICT"
