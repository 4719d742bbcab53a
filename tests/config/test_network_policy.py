"""Kubernetes NetworkPolicy on the local mesh: the model's named errors, Kubernetes' egress semantics,
the analyzer's MK0320 warnings and the snapshot section a sidecar enforces (istio.io's "Egress Gateways"
task, section "Apply Kubernetes network policies", with its NetworkPolicy verbatim)."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Severity
from meshkit.config.network_policy import (
    Destination,
    NetworkPolicy,
    egress_allowed,
    namespace_label_map,
    selecting_egress,
)
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.egress_gate import gate_from

# istio.io: content/en/docs/tasks/traffic-management/egress/egress-gateway (snip 8), verbatim
TASK_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-egress-to-istio-system-and-kube-dns
spec:
  podSelector: {}
  policyTypes:
  - Egress
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kube-system: "true"
    ports:
    - protocol: UDP
      port: 53
  - to:
    - namespaceSelector:
        matchLabels:
          istio: system
"""
LABELLED = """
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {istio: system}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {kube-system: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: test-egress}
"""
SLEEP = {"app": "sleep"}
GATEWAY = {"app": "istio-egressgateway", "istio": "egressgateway"}


def _in_test_egress(text: str) -> str:
    """``kubectl apply -n test-egress -f``: the documents' metadata with that namespace."""
    return text.replace("metadata:\n", "metadata:\n  namespace: test-egress\n").replace(
        "metadata: {name: p}", "metadata: {name: p, namespace: test-egress}").replace(
        "metadata: {name: deny}", "metadata: {name: deny, namespace: test-egress}")


def _policy(text: str) -> NetworkPolicy:
    [policy] = [r for r in load_resources(_in_test_egress(text)) if isinstance(r, NetworkPolicy)]
    return policy


def _allowed(policies: list[NetworkPolicy], to: Destination, source_ns: str = "test-egress",
             labels: dict[str, str] | None = None) -> bool:
    namespaces = namespace_label_map(load_resources(LABELLED))
    return egress_allowed(selecting_egress(policies, source_ns, labels or SLEEP), to, namespaces)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_resources(text)
    return "\n".join(f"{m.field}: {m.text}" for m in caught.value.messages)


# -- the model -----------------------------------------------------------------------------------


def test_the_tasks_policy_loads_with_kubernetes_field_names() -> None:
    policy = _policy(TASK_POLICY)
    assert policy.metadata.namespace == "test-egress"
    assert policy.spec.types == ("Egress",)
    first, second = policy.spec.egress or []
    assert first.ports is not None and first.ports[0].protocol == "UDP" and first.ports[0].port == 53
    assert second.to is not None and second.to[0].namespace_selector is not None
    assert second.to[0].namespace_selector.match_labels == {"istio": "system"}
    assert policy.to_dict()["spec"]["podSelector"] == {}


@pytest.mark.parametrize(("spec", "named"), [
    ("policyTypes: [Egress]", "podSelector"),  # required
    ("podSelector: {}\npolicyTypes: [Outbound]", "policyTypes"),
    ("podSelector: {}\negress: [{to: [{}]}]", "a peer needs one of podSelector, namespaceSelector, ipBlock"),
    ("podSelector: {}\negress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
     "ipBlock cannot be combined"),
    ("podSelector: {}\negress: [{to: [{ipBlock: {cidr: ten}}]}]", "is not a CIDR"),
    ("podSelector: {}\negress: [{ports: [{port: 70000}]}]", "port 70000 is not in 1-65535"),
    ("podSelector: {}\negress: [{ports: [{port: 443, endPort: 80}]}]", "endPort 80 is below port 443"),
    ("podSelector: {}\negress: [{ports: [{protocol: ICMP}]}]", "protocol"),
    ("podSelector: {matchExpressions: [{key: app, operator: In}]}", "needs a non-empty values list"),
    ("podSelector: {}\negres: []", "egres"),  # a misspelt field is named
])
def test_a_bad_policy_is_refused_naming_the_field(spec: str, named: str) -> None:
    body = "\n".join("  " + line for line in spec.splitlines())
    text = f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n{body}\n"
    assert named in _error(text)


def test_the_kind_is_stored_not_ignored() -> None:
    warnings: list[Any] = []
    resources = load_resources(TASK_POLICY, warnings=warnings)
    assert [r.kind for r in resources] == ["NetworkPolicy"] and warnings == []


# -- Kubernetes' egress semantics ----------------------------------------------------------------


def test_the_tasks_policy_allows_istio_system_and_nothing_else() -> None:
    policy = [_policy(TASK_POLICY)]
    assert _allowed(policy, Destination("istio-system", GATEWAY, 443))  # the egress gateway
    assert not _allowed(policy, Destination(None, {}, 443))  # edition.cnn.com itself
    assert not _allowed(policy, Destination("default", {"app": "httpbin"}, 8000))
    assert not _allowed(policy, Destination("test-egress", SLEEP, 80))  # not even its own namespace
    # kube-system only on UDP 53 (DNS): TCP 53 and other ports are not allowed
    assert _allowed(policy, Destination("kube-system", {}, 53, "UDP"))
    assert not _allowed(policy, Destination("kube-system", {}, 53, "TCP"))
    assert not _allowed(policy, Destination("kube-system", {}, 443))


def test_pods_no_policy_selects_are_unrestricted() -> None:
    policy = [_policy(TASK_POLICY)]
    assert _allowed(policy, Destination(None, {}, 443), source_ns="default")  # other namespace
    only_sleep = _policy(TASK_POLICY.replace("podSelector: {}", "podSelector: {matchLabels: {app: sleep}}"))
    assert _allowed([only_sleep], Destination(None, {}, 443), labels={"app": "httpbin"})
    assert not _allowed([only_sleep], Destination(None, {}, 443))
    ingress_only = _policy(TASK_POLICY.replace("  - Egress", "  - Ingress"))
    assert _allowed([ingress_only], Destination(None, {}, 443))  # Egress not in its types


def test_the_rules_of_all_selecting_policies_add_up() -> None:
    deny_all = _policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\n"
                       "spec: {podSelector: {}, policyTypes: [Egress]}\n")
    assert not _allowed([deny_all], Destination("istio-system", GATEWAY, 443))
    assert _allowed([deny_all, _policy(TASK_POLICY)], Destination("istio-system", GATEWAY, 443))


@pytest.mark.parametrize(("peer", "to", "allowed"), [
    # the automatic kubernetes.io/metadata.name label
    ("{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}", ("default", {}), True),
    ("{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}", ("istio-system", {}),
     False),
    # podSelector alone: pods of the policy's own namespace
    ("{podSelector: {matchLabels: {app: httpbin}}}", ("test-egress", {"app": "httpbin"}), True),
    ("{podSelector: {matchLabels: {app: httpbin}}}", ("default", {"app": "httpbin"}), False),
    # both in one peer: those pods in those namespaces
    ("{namespaceSelector: {}, podSelector: {matchLabels: {istio: egressgateway}}}",
     ("istio-system", GATEWAY), True),
    ("{namespaceSelector: {}, podSelector: {matchLabels: {istio: egressgateway}}}",
     ("default", SLEEP), False),
    ("{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [sleep]}]}}",
     ("test-egress", SLEEP), False),
    ("{podSelector: {matchExpressions: [{key: version, operator: DoesNotExist}]}}", ("test-egress", SLEEP),
     True),
    # ipBlock: everything matches every destination, a narrower block nothing (not matched by address)
    ("{ipBlock: {cidr: 0.0.0.0/0}}", (None, {}), True),
    ("{ipBlock: {cidr: 151.101.0.0/16}}", (None, {}), False),
    ("{namespaceSelector: {}}", (None, {}), False),  # a host outside the cluster is in no namespace
])
def test_peers(peer: str, to: tuple[str | None, dict[str, str]], allowed: bool) -> None:
    policy = _policy(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\n"
                     f"spec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{{to: [{peer}]}}]}}\n")
    assert _allowed([policy], Destination(to[0], to[1], 80)) is allowed


def test_ports_and_port_ranges() -> None:
    policy = _policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
                     "spec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: "
                     "[{port: 8000, endPort: 8080}, {port: https}]}]}\n")
    assert _allowed([policy], Destination(None, {}, 8000))
    assert _allowed([policy], Destination("default", {}, 8080))
    assert not _allowed([policy], Destination(None, {}, 8081))
    assert not _allowed([policy], Destination(None, {}, 443))  # a named port matches nothing locally


# -- the analyzer: what the local mesh does not enforce is said by name ---------------------------


def test_the_tasks_policy_has_no_warning() -> None:
    assert [m for m in analyze(load_resources(TASK_POLICY)) if m.code == "MK0320"] == []


def test_ingress_rules_ip_blocks_and_named_ports_are_warned_by_name() -> None:
    text = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
            "spec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n"
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: http}]}]\n"
            "  policyTypes: [Ingress, Egress]\n")
    found = {(m.field, m.severity) for m in analyze(load_resources(text)) if m.code == "MK0320"}
    assert {field for field, _ in found} == {"spec.policyTypes", "spec.egress[0].to[0].ipBlock",
                                            "spec.egress[0].ports[0].port"}
    assert {severity for _, severity in found} == {Severity.WARNING}


# -- the snapshot: a sidecar's allowed addresses ---------------------------------------------------


def _registry() -> RegistryView:
    services = (Service("istio-egressgateway", port=443, namespace="istio-system"),
                Service("httpbin", port=8000, namespace="default"))
    endpoints = (
        Endpoint(instance="istio-egressgateway-0", service="istio-egressgateway", address="127.0.0.1",
                 port=7443, namespace="istio-system", workload="istio-egressgateway", labels=GATEWAY,
                 has_sidecar=False),
        Endpoint(instance="httpbin-v1-0", service="httpbin", address="127.0.0.1", port=7000,
                 namespace="default", workload="httpbin-v1", labels={"app": "httpbin"}, has_sidecar=True))
    return RegistryView(services=services, endpoints=endpoints,
                        external_hosts=(("edition.cnn.com:443", "127.0.0.1:8101"),))


SLEEP_NODE = Node("sleep-0.test-egress", namespace="test-egress", workload="sleep", service="sleep",
                  labels=SLEEP)


def test_the_sidecar_may_reach_only_istio_system() -> None:
    resources = load_resources(LABELLED) + load_resources(_in_test_egress(TASK_POLICY))
    doc = compile_snapshot(resources, _registry(), SLEEP_NODE)
    assert doc["network_policy"] == {
        "policies": ["NetworkPolicy/test-egress/allow-egress-to-istio-system-and-kube-dns"],
        "allowed": ["127.0.0.1:7443"]}
    assert Snapshot.from_json(doc).egress_allowed == frozenset({"127.0.0.1:7443"})
    # without the label on istio-system, the egress gateway is not allowed either
    unlabelled = load_resources(LABELLED.replace("labels: {istio: system}", "labels: {}"))
    doc = compile_snapshot(unlabelled + resources[3:], _registry(), SLEEP_NODE)
    assert doc["network_policy"]["allowed"] == []


def test_no_section_for_pods_the_policy_does_not_select_or_allows_everything() -> None:
    resources = load_resources(LABELLED) + load_resources(_in_test_egress(TASK_POLICY))
    other = Node("sleep-0", namespace="default", workload="sleep", service="sleep", labels=SLEEP)
    assert "network_policy" not in compile_snapshot(resources, _registry(), other)
    everything = TASK_POLICY + "  - to:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n"
    resources = load_resources(LABELLED) + load_resources(_in_test_egress(everything))
    assert "network_policy" not in compile_snapshot(resources, _registry(), SLEEP_NODE)


def test_a_malformed_section_is_nacked_by_name() -> None:
    doc = compile_snapshot(load_resources(LABELLED), _registry(), SLEEP_NODE)
    doc["network_policy"] = {"policies": [], "allowed": [7443]}
    with pytest.raises(ValueError, match=r"network_policy\.allowed"):
        Snapshot.from_json(doc)


# -- a pod without a sidecar: meshkit exec's own connections ----------------------------------------


def test_the_exec_gate_judges_the_pods_own_connections() -> None:
    items = [{"resource": r.to_dict()} for r in
             load_resources(LABELLED) + load_resources(_in_test_egress(TASK_POLICY))]
    gate = gate_from(items, {"sleep-0.test-egress": SLEEP, "istio-egressgateway-0": GATEWAY})
    sleep = {"name": "sleep-0.test-egress", "namespace": "test-egress", "service": "sleep"}
    gateway = {"name": "istio-egressgateway-0", "namespace": "istio-system", "service": "istio-egressgateway"}
    assert not gate.allows(sleep, None, 443)  # edition.cnn.com's stand-in
    assert gate.allows(sleep, gateway, 443)
    assert gate.allows({**sleep, "name": "sleep-0", "namespace": "default"}, None, 443)
