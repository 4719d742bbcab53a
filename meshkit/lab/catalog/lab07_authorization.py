"""Lab 07 — Authorization: deny all, then allow call by call, by identity, and deny one path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab import checks, security
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["DETAILS", "LAB", "PRODUCTPAGE"]

PRODUCTPAGE = "http://productpage:9080/productpage"
DETAILS = "http://details:9080/details/0"
RBAC = security.DENIED_BODY  # "RBAC: access denied"


def deny_all(mesh: Mesh, _lab: Lab) -> None:
    policy = security.require_policy(mesh, "allow-nothing")
    checks.expect(not policy.get("spec"), f"allow-nothing should have an empty spec, it has "
                                          f"{policy.get('spec')}")
    page = mesh.visit()
    checks.expect(page.status == 403 and page.says(RBAC), f"the product page should be refused with 403 "
                                                          f"{RBAC!r}: {page}")
    security.require_denied(mesh, "productpage")


def productpage_open(mesh: Mesh, _lab: Lab) -> None:
    security.require_policy(mesh, "productpage-viewer")
    page = mesh.visit()
    checks.expect(page.status == 200, f"the product page through the ingress should answer 200: {page}")
    status, body = security.call(mesh, "sleep", PRODUCTPAGE)
    checks.expect(status == 403, f"sleep is not the ingress gateway, so it should get 403 from productpage; "
                                 f"it got {status} {body[:60]!r}")


def backends_open(mesh: Mesh, _lab: Lab) -> None:
    for name in ("details-viewer", "reviews-viewer", "ratings-viewer"):
        security.require_policy(mesh, name)
    page = mesh.visit()
    checks.expect(page.status == 200 and not page.notices(),
                  f"the whole page should load, with details, reviews and stars: {page}")
    status, _ = security.call(mesh, "sleep", DETAILS)
    checks.expect(status == 403, f"only productpage's identity may read details; sleep got {status}")


def identified(mesh: Mesh, _lab: Lab) -> None:
    security.require_policy(mesh, "details-from-sleep")
    security.require_reaches(mesh, "sleep", DETAILS)
    status, body = security.call(mesh, "legacy", DETAILS)
    checks.expect(status == 403 and body == RBAC,
                  f"legacy has no sidecar, hence no certificate and no principal: it should get 403; it "
                  f"got {status}")


def api_denied(mesh: Mesh, _lab: Lab) -> None:
    security.require_policy(mesh, "deny-products-api")
    api, page = mesh.visit("/api/v1/products"), mesh.visit()
    checks.expect(api.status == 403 and api.says(RBAC), f"the products API should be refused with 403: {api}")
    checks.expect(page.status == 200, f"the product page itself should still load: {page}")
    security.require_denied(mesh, "productpage")


DENY_ALL = """%%mesh apply
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec: {}
"""

PRODUCTPAGE_VIEWER = """%%mesh apply
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
    to:
    - operation:
        methods: ["GET"]
"""

def debug_header_denied(mesh: Mesh, _lab: Lab) -> None:
    """Behaviour: with an x-debug header sleep is refused by details, without one it still reads it."""
    status, body = security.call(mesh, "sleep", DETAILS, headers={"x-debug": "1"})
    checks.expect(status == 403 and body == RBAC,
                  f"sleep → details with an x-debug header answered {status}; the challenge wants 403 "
                  f"{RBAC!r}")
    security.require_reaches(mesh, "sleep", DETAILS)


DENY_DEBUG = """%%mesh apply
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-debug
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  action: DENY
  rules:
  - when:
    - key: request.headers[x-debug]
      values: ["*"]
"""


LAB = LabSpec(
    name="07-authorization",
    title="Authorization",
    objectives=("Start from deny-all and open the calls the application needs, one by one",
                "Allow by workload identity (the SPIFFE principal from mTLS), not by network address",
                "Deny one path while the rest stays open; know that a header such as end-user is not an "
                "identity"),
    prerequisites=("Lab 06 (mTLS, identities)", "Reading YAML"),
    steps=(
        predict("predict-deny-all", "Predict: what does an AuthorizationPolicy with an empty spec do?",
                "You apply an AuthorizationPolicy named allow-nothing with `spec: {}` in namespace default. "
                "What does the product page answer?",
                ("a) 403 RBAC: access denied — an ALLOW policy that matches nothing denies everything",
                 "b) 200: an empty policy does nothing", "c) the connection is refused"),
                "a) 403 RBAC: access denied — an ALLOW policy that matches nothing denies everything"),
        StepSpec("deny-all", "Deny all: every call in the namespace gets 403", deny_all, exercise="yaml",
                 task="Write the AuthorizationPolicy allow-nothing (namespace default) with an empty spec.",
                 hint="An AuthorizationPolicy named allow-nothing in namespace default with an empty spec: "
                      "{}",
                 solution=DENY_ALL),
        StepSpec("productpage", "The ingress gateway may GET productpage (and no one else)", productpage_open,
                 exercise="yaml",
                 task="Write productpage-viewer: ALLOW GET on app: productpage, only from the ingress "
                      "gateway's "
                      "principal.",
                 hint="ALLOW on app: productpage, from the principal "
                      "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account, method GET.",
                 solution=PRODUCTPAGE_VIEWER),
        StepSpec("backends", "productpage may read details and reviews, reviews may read "
                             "ratings", backends_open,
                 task="Three ALLOW policies: details-viewer and reviews-viewer (from productpage's service "
                      "account bookinfo-productpage) and ratings-viewer (from bookinfo-reviews), GET only.",
                 hint="rules.allow(to, from_=[service account], methods=['GET'], name=...) — one per callee.",
                 solution='backends = [\n'
                          '    rules.allow("details", from_=["bookinfo-productpage"], methods=["GET"], '
                          'name="details-viewer"),\n'
                          '    rules.allow("reviews", from_=["bookinfo-productpage"], methods=["GET"], '
                          'name="reviews-viewer"),\n'
                          '    rules.allow("ratings", from_=["bookinfo-reviews"], methods=["GET"], '
                          'name="ratings-viewer"),\n]\nmesh.apply(backends)\nbackends'),
        StepSpec("identity", "sleep may read details; legacy cannot even say who it is", identified,
                 task="Allow GET on details from the service account of the sidecar'd client (sleep), as "
                      "details-from-sleep.",
                 hint="Another ALLOW on details, for the service account sleep.",
                 solution='mesh.apply(rules.allow("details", from_=["sleep"], methods=["GET"], '
                          'name="details-from-sleep"))'),
        StepSpec("deny-path", "DENY the products API while the page stays open", api_denied,
                 task="DENY every request to productpage's /api/v1/products (and below) as "
                      "deny-products-api.",
                 hint="rules.deny(to, paths=[...], name=...) — a trailing * matches a prefix.",
                 solution='deny_api = rules.deny("productpage", paths=["/api/v1/products*"], '
                          'name="deny-products-api")\nmesh.apply(deny_api)\ndeny_api'),
        StepSpec("challenge", "Challenge: details refuses any request that carries an x-debug header",
                 debug_header_denied, exercise="yaml",
                 task="Write a DENY policy on details for requests that carry the header x-debug (any "
                      "value); "
                      "sleep keeps reading details without it.",
                 hint='A DENY rule with `when: [{key: "request.headers[x-debug]", values: ["*"]}]` and a '
                      "selector for app: details.",
                 solution=DENY_DEBUG),
    ),
)
