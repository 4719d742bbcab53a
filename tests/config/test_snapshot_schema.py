"""One definition of the snapshot JSON (meshkit/proxy/schema.py), and the compiler and the docs checked
against it.

The compiler cannot import the sidecar nor the sidecar the compiler, so the sidecar's types are the
definition: every snapshot compiled from the Istio samples (for a sidecar, a gateway and a client)
has exactly the declared fields with values of the declared types and is accepted by the sidecar's
validation, every declared field is produced by some compiled snapshot, and docs/snapshot.md names
exactly the declared fields.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from meshkit.config import compile as compiler
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.proxy import schema
from meshkit.proxy import snapshot as proxy_snapshot
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.bookinfo import SAMPLES, node_for, vs
from tests.config.test_compile_contract import GATEWAY, HTTPBIN_V1, _registry

ROOT = Path(__file__).resolve().parents[2]
# Data, not field names, that docs/snapshot.md's examples write as JSON keys.
DATA_KEYS_IN_EXAMPLES = {"debug"}
# One VirtualService with the route features no Istio sample uses (every match kind, rewrite, headers).
RICH_ROUTE = vs("""
  - name: rich
    match:
    - uri: {regex: "^/r.*$"}
      method: {exact: GET}
      authority: {prefix: reviews}
      headers: {end-user: {exact: jason}}
      withoutHeaders: {x-test: {prefix: "1"}}
      queryParams: {debug: {exact: "1"}}
      ignoreUriCase: true
    rewrite: {uri: /new}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
    route:
    - destination: {host: reviews, subset: v1}
      headers:
        response: {set: {x-d: "1"}}
""")
# A redirect (no Istio sample has one): answered by the proxy, no destination.
RICH_REDIRECT = vs("""
  - name: moved
    match:
    - uri: {prefix: /old}
    redirect: {uri: /new, authority: example.com, port: 8443, scheme: https, redirectCode: 302}
  - name: regex-rewrite
    match:
    - uri: {prefix: /service}
    rewrite:
      uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\\2/instance/\\1'}
      authority: x.example
    route:
    - destination: {host: reviews}
  - route:
    - destination: {host: reviews}
""")
# Istio's Dry Run task's annotation, on a DENY and an ALLOW policy (inbound.authz.dry_run_*)
RICH_DRY_RUN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  namespace: default
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/headers"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-get
  namespace: default
  annotations: {"istio.io/dry-run": "true"}
spec:
  rules:
  - to:
    - operation: {methods: ["GET"]}
"""
RICH_CLUSTER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 1s}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 5, maxRequestsPerConnection: 1, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 2, consecutiveGatewayErrors: 1, interval: 1s}
  subsets:
  - {name: v1, labels: {version: v1}}
"""


def _typeddicts() -> list[type]:
    """The schema's documents (``_Name`` mixins only make some keys optional: their fields are checked
    in the documents that inherit them)."""
    return [value for name, value in vars(schema).items()
            if typing.is_typeddict(value) and not name.startswith("_")]


def _check(value: Any, expected: Any, where: str, seen: set[tuple[str, str]]) -> None:
    """``value`` has the type ``expected`` (a schema type); records every (TypedDict, field) met."""
    origin = typing.get_origin(expected)
    if typing.is_typeddict(expected):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        hints = typing.get_type_hints(expected)
        unknown = set(value) - set(hints)
        assert not unknown, f"{where}: fields not in {expected.__name__}: {sorted(unknown)}"
        missing = set(expected.__required_keys__) - set(value)
        assert not missing, f"{where}: required fields of {expected.__name__} missing: {sorted(missing)}"
        for key, item in value.items():
            seen.add((expected.__name__, key))
            _check(item, hints[key], f"{where}.{key}", seen)
    elif origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None:
            assert type(None) in options, f"{where}: null is not allowed"
        else:
            [option] = [o for o in options if o is not type(None)]
            _check(value, option, where, seen)
    elif origin in (typing.NotRequired, typing.Required):
        _check(value, typing.get_args(expected)[0], where, seen)
    elif origin is typing.Literal:
        allowed = typing.get_args(expected)
        assert value in allowed, f"{where}: {value!r} not one of {allowed}"
    elif origin is list:
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
        for index, item in enumerate(value):
            _check(item, typing.get_args(expected)[0], f"{where}[{index}]", seen)
    elif origin is dict:
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        for key, item in value.items():
            assert isinstance(key, str)
            _check(item, typing.get_args(expected)[1], f"{where}.{key}", seen)
    elif expected is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{where}: {value!r}"
    elif expected is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
    else:
        assert isinstance(value, expected), f"{where}: expected {expected.__name__}, got {value!r}"


# Every field of a RequestAuthentication rule, with Istio's own sample key set inline.
ISTIO_JWKS = (Path(__file__).resolve().parents[1] / "security" / "istio_jwt" / "jwks.json").read_text()
ISTIO_JWKS = ISTIO_JWKS.strip()
RICH_AUTHN = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    audiences: [bookinfo]
    jwks: '{ISTIO_JWKS}'
    fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}]
    fromParams: [token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-group, claim: groups}}]
"""


STAND_IN_CA = pem(issue_ca()[0])
RICH_ORIGINATION = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cnn}
spec:
  host: edition.cnn.com
  trafficPolicy:
    tls: {mode: SIMPLE, sni: edition.cnn.com, subjectAltNames: [edition.cnn.com], insecureSkipVerify: false}
"""


_CA, _CA_KEY = issue_ca()
_CERT, _KEY = issue_server(["httpbin.example.com"], _CA, _CA_KEY)
HTTPS_GATEWAY = f"""
apiVersion: v1
kind: Secret
metadata: {{name: httpbin-credential, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: {json.dumps(pem(_CERT))}
  tls.key: {json.dumps(key_pem(_KEY))}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mygateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: httpbin-credential}}
    hosts: [httpbin.example.com]
"""


MUTUAL_ORIGINATION = f"""
apiVersion: v1
kind: Secret
metadata: {{name: client-credential}}
stringData:
  tls.crt: {json.dumps(pem(_CERT))}
  tls.key: {json.dumps(key_pem(_KEY))}
  ca.crt: {json.dumps(pem(_CA))}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls}}
spec:
  workloadSelector: {{matchLabels: {{app: productpage}}}}
  host: ratings
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 9080}}
      tls: {{mode: MUTUAL, credentialName: client-credential, sni: ratings.example.com}}
"""


# the task's NetworkPolicy (istio.io's "Egress Gateways", "Apply Kubernetes network policies"), on default
RICH_NETWORK_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-to-istio-system-and-kube-dns}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kube-system: "true"}}}]
    ports: [{protocol: UDP, port: 53}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]
"""


ISTIO_MUTUAL_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: https, protocol: HTTPS}
    tls: {mode: ISTIO_MUTUAL}
    hosts: [edition.cnn.com]
"""


def _compiled() -> list[tuple[str, dict[str, Any]]]:
    registry = _registry()
    inputs = [(path.stem, path.read_text()) for path in sorted(SAMPLES.glob("*.yaml"))]
    inputs.append(("rich-route-and-cluster", RICH_ROUTE + "---\n" + RICH_CLUSTER))
    inputs.append(("rich-request-authentication", RICH_AUTHN))
    inputs.append(("rich-redirect", RICH_REDIRECT))
    inputs.append(("rich-dry-run", RICH_DRY_RUN))
    inputs.append(("rich-network-policy", RICH_NETWORK_POLICY))
    found = []
    # TLS origination with every field set, and the stand-ins' CA (meshkit deploy external)
    standins = dataclasses.replace(registry, external_ca=STAND_IN_CA,
                                   external_hosts=(("edition.cnn.com:443", "127.0.0.1:8101"),))
    origination = compile_snapshot(load_resources(RICH_ORIGINATION), standins, node_for("productpage"),
                                   revision=3)
    found.append(("rich-tls-origination for productpage", json.loads(json.dumps(origination))))
    mutual = compile_snapshot(load_resources(MUTUAL_ORIGINATION), registry, node_for("productpage"),
                              revision=3)
    found.append(("mutual-tls-origination for productpage", json.loads(json.dumps(mutual))))
    https = compile_snapshot(load_resources(HTTPS_GATEWAY), registry, GATEWAY, revision=3)
    found.append(("https-gateway for the ingress", json.loads(json.dumps(https))))
    mutual_gateway = compile_snapshot(load_resources(ISTIO_MUTUAL_GATEWAY), registry, GATEWAY, revision=3)
    found.append(("istio-mutual-gateway for the ingress", json.loads(json.dumps(mutual_gateway))))
    for name, text in inputs:
        resources = load_resources(text)
        for node in (node_for("productpage"), node_for("reviews", "v2"), GATEWAY, HTTPBIN_V1):
            doc = json.loads(json.dumps(compile_snapshot(resources, registry, node, revision=3)))
            found.append((f"{name} for {node.id}", doc))
    return found


COMPILED = _compiled()


@pytest.mark.parametrize(("name", "doc"), COMPILED, ids=[name for name, _ in COMPILED])
def test_compiled_snapshot_has_exactly_the_declared_fields_and_passes_the_sidecar(
        name: str, doc: dict[str, Any]) -> None:
    _check(doc, schema.SnapshotDoc, "snapshot", set())
    assert Snapshot.from_json(doc).version == doc["version"]


# Fields the sidecar takes from hand-written snapshots (``--config FILE``, the benchmarks) that no Istio
# resource sets, so the compiler never writes them: Istio sets Envoy's stream idle timeout only through
# an EnvoyFilter, which meshkit does not translate into it.
SIDECAR_ONLY_FIELDS = {("MeshDoc", "stream_idle_timeout_ms")}


def test_every_declared_field_is_produced_by_the_compiler() -> None:
    seen: set[tuple[str, str]] = set()
    for _, doc in COMPILED:
        _check(doc, schema.SnapshotDoc, "snapshot", seen)
    declared = {(td.__name__, key) for td in _typeddicts() for key in typing.get_type_hints(td)}
    stale = declared - seen - SIDECAR_ONLY_FIELDS
    assert stale == set(), "declared but never compiled (stale in the schema?)"
    assert declared >= SIDECAR_ONLY_FIELDS


def test_the_compiler_and_the_sidecar_agree_on_the_schema_number() -> None:
    # the sidecar's own copy: a running sidecar never loads the schema's types (test_lint.py)
    assert compiler.SCHEMA == schema.SCHEMA == proxy_snapshot.SCHEMA


def test_docs_name_exactly_the_declared_fields() -> None:
    doc = (ROOT / "docs" / "snapshot.md").read_text(encoding="utf-8")
    contract = doc.split("## Push protocol")[0]
    quoted = set(re.findall(r'"([a-z][a-z0-9_]*)"\s*:', contract))
    named = quoted | set(re.findall(r"`([a-z][a-z0-9_]*)`", contract))
    declared = {key for td in _typeddicts() for key in typing.get_type_hints(td)}
    assert declared - named == set(), "fields docs/snapshot.md does not describe"
    shown = quoted - DATA_KEYS_IN_EXAMPLES
    assert shown - declared == set(), "docs/snapshot.md shows fields that do not exist"
