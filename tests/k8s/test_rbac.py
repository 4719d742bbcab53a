"""RBAC: the ClusterRoles come from one list, and every API call the operator and the control plane
make is allowed by them, as a real API server would decide (KMock answering 403 otherwise).

The operator test runs kopf against KMock authenticated as ``meshkit-operator`` while KMock
evaluates the committed ``rbac.yaml`` (`operator_harness.enforce_rbac`). With the ClusterRole
shipped before this check (no ``envoyfilters`` rule), kopf waits for the EnvoyFilter index
forever and writes no status on any kind: `test_the_operator_writes_status_under_its_cluster_role`
fails against that manifest, which `test_a_missing_rule_stops_all_status` keeps showing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from meshkit.config.api_kinds import API_KINDS, CONTROL, OPERATOR, config_kinds, istio_kinds
from meshkit.config.kinds import RESOURCE_KINDS
from meshkit.k8s import rbac_rules
from meshkit.k8s.api import KubeAccess
from meshkit.k8s.control_plane import SyncOptions, run_kubernetes_control_plane
from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import ISTIO_RESOURCES, OperatorConfig
from meshkit.k8s.rbac_rules import allows, api_request, cluster_role_rules
from meshkit.k8s.sources import ISTIO_TYPES
from tests.k8s import kube_objects as k
from tests.k8s.operator_harness import (
    MANAGED,
    RBAC_MANIFEST,
    enforce_rbac,
    free_port,
    namespaces_parsed,
    prepare,
    running_operator,
    until,
)

pytestmark = pytest.mark.timeout(90)


def test_committed_rbac_is_generated_from_the_one_list() -> None:
    assert RBAC_MANIFEST.read_text() == rbac_rules.render(), (
        "operator/deploy/base/rbac.yaml is stale: run "
        "`python -m meshkit.k8s.rbac_rules > operator/deploy/base/rbac.yaml`")


def test_every_implemented_istio_kind_is_in_the_list_and_watched_by_both() -> None:
    listed = {(kind.kind, kind.group) for kind in API_KINDS}
    for name, model in RESOURCE_KINDS.items():
        assert (name, model.group) in listed, f"{name} is implemented but missing from API_KINDS"
    istio = {(kind.group, kind.plural) for kind in istio_kinds()}
    assert {(g, p) for g, _, p in ISTIO_RESOURCES} == istio  # what the operator watches
    mirrored = {(kind.group, kind.plural) for kind in config_kinds()}
    assert mirrored == istio | {("gateway.networking.k8s.io", "httproutes"),
                                ("gateway.networking.k8s.io", "gatewayclasses"),
                                ("gateway.networking.k8s.io", "gateways"),
                                ("gateway.networking.k8s.io", "tlsroutes")}
    assert {(t.group, t.plural) for t in ISTIO_TYPES} == mirrored  # what the control plane mirrors
    assert ("networking.istio.io", "envoyfilters") in istio
    # planned kinds are listed, granted nothing until meshkit has their model
    planned = [kind for kind in API_KINDS if not kind.active]
    assert ("Gateway", "gateway.networking.k8s.io") not in {(kind.kind, kind.group) for kind in planned}
    gateway_api = "gateway.networking.k8s.io"
    control = [rule for rule in cluster_role_rules(CONTROL) if gateway_api in rule["apiGroups"]]
    assert {r for rule in control for r in rule["resources"]} == {"httproutes", "gatewayclasses", "gateways",
                                                                 "tlsroutes"}
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in control)  # read only
    operator = {r for rule in cluster_role_rules(OPERATOR) for r in rule["resources"]
                if gateway_api in rule["apiGroups"]}
    assert operator == set()  # the operator neither validates them nor writes their status
    for role in (CONTROL, OPERATOR):
        granted = {r for rule in cluster_role_rules(role) for r in rule["resources"]}
        assert not {kind.plural for kind in planned if kind.group.endswith("istio.io")} & granted - {
            kind.plural for kind in istio_kinds()}


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/apis/networking.istio.io/v1/virtualservices", "", "list virtualservices.networking.istio.io"),
    ("GET", "/apis/networking.istio.io/v1/virtualservices", "watch=true&resourceVersion=5",
     "watch virtualservices.networking.istio.io"),
    ("PATCH", "/apis/networking.istio.io/v1/namespaces/b/virtualservices/r/status", "",
     "patch virtualservices/status.networking.istio.io 'r' in b"),
    ("GET", "/api/v1/namespaces", "", "list namespaces.core"),
    ("GET", "/api/v1/namespaces/bookinfo", "", "get namespaces.core 'bookinfo'"),
    ("PATCH", "/api/v1/namespaces/bookinfo/status", "", "patch namespaces/status.core 'bookinfo'"),
    ("POST", "/api/v1/namespaces/bookinfo/events", "", "create events.core in bookinfo"),
    ("DELETE", "/api/v1/namespaces/bookinfo/pods", "", "deletecollection pods.core in bookinfo"),
    ("GET", "/apis/discovery.k8s.io/v1", "", "get /apis/discovery.k8s.io/v1"),
])
def test_request_attributes(method: str, path: str, query: str, expected: str) -> None:
    assert str(api_request(method, path, query)) == expected


def test_the_evaluator_decides_as_rbac_does() -> None:
    rules = cluster_role_rules(OPERATOR)
    policy = "/apis/security.istio.io/v1/namespaces/a/peerauthentications/d"
    assert allows(rules, api_request("PATCH", policy + "/status"))
    assert not allows(rules, api_request("PUT", policy))
    assert not allows(rules, api_request("GET", "/api/v1/pods"))  # the operator reads no pods
    hook = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
    assert allows(rules, api_request("PATCH", hook + "meshkit-sidecar-injector"))
    assert not allows(rules, api_request("PATCH", hook + "someone-elses"))  # resourceNames
    assert allows(rules, api_request("GET", "/apis"))  # discovery: every authenticated client
    assert not allows(rules, api_request("GET", "/metrics"))
    control = cluster_role_rules(CONTROL)
    assert allows(control, api_request("POST", "/apis/authentication.k8s.io/v1/tokenreviews"))
    assert not allows(control, api_request("PATCH", "/api/v1/namespaces/a/pods/p"))


# ---------------------------------------------------------------------------------------------
# the operator and the control plane against KMock with RBAC
# ---------------------------------------------------------------------------------------------


def _virtual_service(name: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "bookinfo", "generation": 1},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}


def _status_written(kmock: Any, name: str) -> bool:
    for (resource, namespace, object_name), obj in list(kmock.objects.items()):
        if resource.plural == "virtualservices" and (namespace, object_name) == ("bookinfo", name):
            return bool((obj.get("status") or {}).get("conditions"))
    return False


@pytest.fixture()
def config() -> OperatorConfig:
    return OperatorConfig(inject=InjectSettings(image="meshkit:test"), status_resync_s=0.5,
                          webhook_addr="127.0.0.1", webhook_port=free_port(), managed=MANAGED)


async def test_the_operator_writes_status_under_its_cluster_role(
        kmock: Any, monkeypatch: pytest.MonkeyPatch, config: OperatorConfig) -> None:
    namespaces_parsed(monkeypatch)
    async with running_operator(kmock, config) as running:
        await running.create("/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices",
                             _virtual_service("reviews"))
        await until("the operator's status on the VirtualService", lambda: _status_written(kmock, "reviews"))
        assert running.rbac.refused == []
        seen = "\n".join(running.rbac.seen)
        for call in ("watch virtualservices.networking.istio.io", "watch envoyfilters.networking.istio.io",
                     "list namespaces.core", "patch virtualservices/status.networking.istio.io 'reviews'"):
            assert call in seen, f"the operator never made {call!r}; it made:\n{seen}"


async def test_a_missing_rule_stops_all_status(kmock: Any, monkeypatch: pytest.MonkeyPatch,
                                               config: OperatorConfig, tmp_path: Path) -> None:
    """The failure a real cluster showed: one kind without a rule, and kopf writes no status at all."""
    docs = [d for d in yaml.safe_load_all(RBAC_MANIFEST.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == OPERATOR:
            for rule in doc["rules"]:
                rule["resources"] = [r for r in rule["resources"] if not r.startswith("envoyfilters")]
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    namespaces_parsed(monkeypatch)
    async with running_operator(kmock, config, manifest, unwatched=frozenset({"envoyfilters"})) as running:
        await running.create("/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices",
                             _virtual_service("reviews"))
        await until("a refused envoyfilters call",
                    lambda: any("envoyfilters" in r for r in running.rbac.refused))
        # patched within 0.5 s when all kinds are listed (the test above); here never, for every kind
        await until("kopf retrying the refused list", lambda: sum(
            1 for r in running.kmock if r.resource is not None and r.resource.plural == "envoyfilters") >= 2)
        assert not _status_written(kmock, "reviews")


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def test_the_control_plane_syncs_under_its_cluster_role(kmock: Any, session: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    prepare(kmock)
    rbac = enforce_rbac(kmock)
    cluster = k.Cluster(session, str(kmock.url))
    for name in k.services():
        await cluster.request("POST", f"/api/v1/namespaces/{k.NAMESPACE}/services", k.service(name))
    for document in k.istio_documents():
        await cluster.request("POST", k.istio_path(document), k.as_served(document))
    access = KubeAccess(server=str(kmock.url).rstrip("/"), authorization=lambda: f"Bearer {CONTROL}")
    running = await run_kubernetes_control_plane(  # with its CA: the root's Secret is read and created
        access, port=0, state_dir=tmp_path / "control", record_address=False,
        sync_options=SyncOptions(debounce_s=0.01, max_backoff_s=0.5))
    try:
        synced = await running.sync.wait_synced(15)
        assert synced, f"not synced: {running.sync.stats}; refused: {rbac.refused}"
        assert running.control_plane.store.revision > 0
    finally:
        await running.close()
    assert rbac.refused == []
    seen = "\n".join(rbac.seen)
    for kind in ISTIO_TYPES:
        assert f"list {kind.plural}.{kind.group}" in seen
    assert "watch endpointslices.discovery.k8s.io" in seen
    assert "get secrets.core 'meshkit-ca-root' in meshkit-system" in seen
    assert "create secrets.core in meshkit-system" in seen  # allowed by the Role there only
    control = [d for d in yaml.safe_load_all(RBAC_MANIFEST.read_text()) if d]
    assert not any("secrets" in rule["resources"] for rule in cluster_role_rules(CONTROL))
    assert any(d["kind"] == "Role" and d["metadata"]["namespace"] == "meshkit-system" for d in control)
