"""operator/deploy: every kustomization renders offline and every document validates strictly.

Rendering uses ``kubectl kustomize`` (offline); validation uses kubernetes-validate's bundled
Kubernetes 1.30 schemas with ``strict=True`` (unknown fields are errors). Custom resources
have no bundled schema and are only reported as such. Beyond schemas, the tests check what
the design asks for: least-privilege RBAC, probes and requests, and webhook paths that match
the operator's handler ids.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from meshkit.config.api_kinds import istio_kinds
from meshkit.k8s import names
from meshkit.k8s.inject import InjectSettings, inject

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "operator" / "deploy"
K8S_VERSION = "1.30.0"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def _render(directory: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_RENDERED: dict[Path, list[dict[str, Any]]] = {}


def rendered(directory: Path) -> list[dict[str, Any]]:
    if directory not in _RENDERED:
        _RENDERED[directory] = _render(directory)
    return _RENDERED[directory]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]


def test_there_is_a_base_and_the_demo_overlay() -> None:
    relative = {str(p.relative_to(DEPLOY)) for p in KUSTOMIZATIONS}
    assert {"base", "overlays/demo"} <= relative


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_renders_and_validates_strictly(directory: Path) -> None:
    docs = rendered(directory)
    assert docs
    custom = 0
    for doc in docs:
        label = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom += 1  # a custom resource: no bundled schema, as documented
        except kubernetes_validate.ValidationError as error:
            where = directory.relative_to(DEPLOY)
            pytest.fail(f"{where}: {label} is invalid: {error.message} at {list(error.path)}")
    assert custom == 0, "the manifests contain no custom resources"


def test_base_contents() -> None:
    docs = rendered(DEPLOY / "base")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", "meshkit-system"),
        ("CustomResourceDefinition", "virtualservices.networking.istio.io"),
        ("CustomResourceDefinition", "destinationrules.networking.istio.io"),
        ("CustomResourceDefinition", "peerauthentications.security.istio.io"),
        ("CustomResourceDefinition", "authorizationpolicies.security.istio.io"),
        ("ServiceAccount", "meshkit-control"), ("ServiceAccount", "meshkit-operator"),
        ("ClusterRole", "meshkit-control"), ("ClusterRole", "meshkit-operator"),
        ("Deployment", "meshkit-control"), ("Deployment", "meshkit-operator"),
        ("Service", names.CONTROL_SERVICE), ("Service", names.WEBHOOK_SERVICE),
        ("MutatingWebhookConfiguration", names.MUTATING_WEBHOOK_CONFIG),
        ("ValidatingWebhookConfiguration", names.VALIDATING_WEBHOOK_CONFIG),
    ]:
        assert expected in kinds, f"missing {expected}"
    namespaced = [d for d in docs if d["kind"] in ("Deployment", "Service", "ServiceAccount")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {names.SYSTEM_NAMESPACE}
    assert _find(docs, "Service", names.CONTROL_SERVICE)["spec"]["ports"][0]["port"] == names.PORT_CONTROL
    assert _find(docs, "Service", names.WEBHOOK_SERVICE)["spec"]["ports"][0]["port"] == names.PORT_WEBHOOK


def test_deployments_have_probes_requests_and_run_as_1337() -> None:
    docs = rendered(DEPLOY / "base")
    for name in ("meshkit-control", "meshkit-operator"):
        pod = _find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == names.PROXY_UID
        for container in pod["containers"]:
            assert container["image"] == "meshkit:dev"
            assert "readinessProbe" in container and "livenessProbe" in container, name
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]


def test_rbac_is_least_privilege() -> None:
    docs = rendered(DEPLOY / "base")
    for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard {key}"
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
    operator = _find(docs, "ClusterRole", "meshkit-operator")
    webhook_rules = [r for r in operator["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert {n for r in webhook_rules for n in r["resourceNames"]} == {
        names.MUTATING_WEBHOOK_CONFIG, names.VALIDATING_WEBHOOK_CONFIG
    }
    # the operator reads no pods: injection comes to it through the webhook
    assert not any("pods" in r["resources"] for r in operator["rules"])
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert bindings["meshkit-operator"]["subjects"][0]["name"] == "meshkit-operator"


def test_webhooks_select_as_istio_and_point_at_the_operator() -> None:
    docs = rendered(DEPLOY / "base")
    mutating = _find(docs, "MutatingWebhookConfiguration", names.MUTATING_WEBHOOK_CONFIG)["webhooks"]
    by_namespace, by_object = mutating
    enabled = {names.INJECTION_LABEL: names.INJECTION_ENABLED}
    assert by_namespace["namespaceSelector"] == {"matchLabels": enabled}
    assert by_namespace["objectSelector"]["matchExpressions"][0] == {
        "key": names.INJECT_OVERRIDE_LABEL, "operator": "NotIn", "values": ["false"]}
    assert by_object["objectSelector"] == {"matchLabels": {names.INJECT_OVERRIDE_LABEL: "true"}}
    assert by_object["namespaceSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    validating = _find(docs, "ValidatingWebhookConfiguration", names.VALIDATING_WEBHOOK_CONFIG)["webhooks"]
    resources = sorted(r for hook in validating for rule in hook["rules"] for r in rule["resources"])
    # every Istio kind the operator validates (the list the RBAC rules come from) has its webhook
    assert resources == sorted(kind.plural for kind in istio_kinds())
    for hook in [*mutating, *validating]:
        service = hook["clientConfig"]["service"]
        assert (service["name"], service["namespace"], service["port"]) == (
            names.WEBHOOK_SERVICE, names.SYSTEM_NAMESPACE, names.PORT_WEBHOOK)


def test_demo_overlay_runs_bookinfo_in_an_injected_namespace() -> None:
    docs = rendered(DEPLOY / "overlays" / "demo")
    namespace = _find(docs, "Namespace", "bookinfo")
    assert namespace["metadata"]["labels"][names.INJECTION_LABEL] == names.INJECTION_ENABLED
    deployments = {d["metadata"]["name"]: d for d in docs
                   if d["kind"] == "Deployment" and d["metadata"]["namespace"] == "bookinfo"}
    assert sorted(deployments) == ["details-v1", "productpage-v1", "ratings-v1",
                                   "reviews-v1", "reviews-v2", "reviews-v3"]
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"
                and d["metadata"]["namespace"] == "bookinfo"}
    assert accounts == {"bookinfo-details", "bookinfo-ratings", "bookinfo-reviews", "bookinfo-productpage"}
    services = {d["metadata"]["name"]: d["spec"]["ports"][0]["port"] for d in docs
                if d["kind"] == "Service" and d["metadata"]["namespace"] == "bookinfo"}
    assert services == {"details": 9080, "ratings": 9080, "reviews": 9080, "productpage": 9080}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        app = template["metadata"]["labels"]["app"]
        assert template["spec"]["serviceAccountName"] == f"bookinfo-{app}", name
        # the pod the injector would produce is still a valid Pod
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**template["metadata"], "name": f"{name}-0", "namespace": "bookinfo"},
               "spec": template["spec"]}
        patched = jsonpatch.apply_patch(pod, inject(pod, namespace["metadata"]["labels"], InjectSettings()))
        assert [c["name"] for c in patched["spec"]["containers"]][-1] == names.SIDECAR_CONTAINER
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
