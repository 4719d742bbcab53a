"""Sidecar injection: golden JSONPatch per case, applied for real with jsonpatch, idempotence.

Regenerate the golden files after an intended change with
``MESHKIT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/k8s/test_inject.py`` and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from meshkit.k8s import names
from meshkit.k8s import sources as kube_sources
from meshkit.k8s.inject import PROBERS_ENV, InjectionRefused, InjectSettings, inject, should_inject
from meshkit.proxy.probes import AppProbe, parse_probers

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = InjectSettings(image="meshkit:test")
ENABLED = {names.INJECTION_LABEL: names.INJECTION_ENABLED}


def _pod(name: str, *, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "bookinfo"}
    if labels is not None:
        metadata["labels"] = labels
    containers = spec.pop("containers", [
        {"name": "app", "image": "bookinfo/details:1", "ports": [{"containerPort": 9080}]}
    ])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"serviceAccountName": "bookinfo-details", "containers": containers, **spec}}


def _already_injected() -> dict[str, Any]:
    pod = _pod("details-v1-abc", labels={"app": "details"})
    applied = jsonpatch.apply_patch(pod, inject(pod, ENABLED, SETTINGS))
    return dict(applied)


CASES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "plain_pod": (_pod("details-v1-abc", labels={"app": "details", "version": "v1"}), ENABLED),
    "override_true_unlabelled_ns": (
        _pod("details-v1-abc", labels={"app": "details", names.INJECT_OVERRIDE_LABEL: "true"}), {}
    ),
    "override_false_labelled_ns": (
        _pod("details-v1-abc", labels={"app": "details", names.INJECT_OVERRIDE_LABEL: "false"}), ENABLED
    ),
    "already_injected": (_already_injected(), ENABLED),
    "existing_init_containers_and_volumes": (
        _pod(
            "reviews-v2-xyz",
            labels={"app": "reviews"},
            initContainers=[{"name": "wait-for-db", "image": "busybox", "command": ["true"]}],
            volumes=[{"name": "wlp-output", "emptyDir": {}}],
        ),
        ENABLED,
    ),
    "no_container_ports": (
        _pod("sleep-1", containers=[{"name": "sleep", "image": "curl", "command": ["sleep", "inf"]}]),
        ENABLED,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_patch(case: str) -> None:
    pod, namespace_labels = CASES[case]
    before = copy.deepcopy(pod)
    patch = inject(pod, namespace_labels, SETTINGS)
    assert pod == before, "inject must not modify its input"
    path = GOLDEN / f"{case}.json"
    document = {"namespace_labels": namespace_labels, "pod": pod, "patch": patch}
    if os.environ.get("MESHKIT_UPDATE_GOLDEN"):
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    golden = json.loads(path.read_text())
    assert golden["pod"] == pod and golden["namespace_labels"] == namespace_labels, "golden input drifted"
    assert patch == golden["patch"], f"injection patch differs from {path.name}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_patch_applies_and_is_idempotent(case: str) -> None:
    pod, namespace_labels = CASES[case]
    patch = inject(pod, namespace_labels, SETTINGS)
    patched = jsonpatch.apply_patch(pod, patch)
    assert inject(patched, namespace_labels, SETTINGS) == [], "second injection must be a no-op"
    sidecars = [c for c in patched["spec"]["containers"] if c["name"] == names.SIDECAR_CONTAINER]
    expected = 0 if case == "override_false_labelled_ns" else 1
    assert len(sidecars) == expected
    # the app's own containers, init containers and volumes are kept, in order, in front
    for key in ("containers", "initContainers", "volumes"):
        original = pod["spec"].get(key) or []
        assert patched["spec"].get(key, [])[: len(original)] == original


def test_injected_pod_has_everything_the_sidecar_needs() -> None:
    pod, labels = CASES["existing_init_containers_and_volumes"]
    patched = jsonpatch.apply_patch(pod, inject(pod, labels, SETTINGS))
    spec = patched["spec"]
    sidecar = spec["containers"][-1]
    assert sidecar["command"] == ["python", "-m", "meshkit.proxy"]  # not the `meshkit` CLI (Typer)
    assert sidecar["args"][:4] == ["--control", SETTINGS.control_address,
                                   "--id", "$(POD_NAME).$(POD_NAMESPACE)"]
    assert sidecar["args"][sidecar["args"].index("--outbound-port") + 1] == "15001"
    assert sidecar["args"][sidecar["args"].index("--inbound-port") + 1] == "15006"
    assert {p["containerPort"]: p["name"] for p in sidecar["ports"]} == {
        15001: "tcp-outbound", 15006: "tcp-inbound", 15000: "http-admin",
        15090: "http-envoy-prom", 15021: "status-port",
    }
    # the sidecar serves /healthz/ready on its status port, as Istio's 15021 (meshkit/proxy/probes.py)
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert sidecar["args"][sidecar["args"].index("--health-port") + 1] == "15021"
    with_admin_port = inject(pod, labels, InjectSettings(health_port=15000))
    sidecar_op = next(op for op in with_admin_port if op["path"].startswith("/spec/containers"))
    assert sidecar_op["value"]["readinessProbe"]["httpGet"]["port"] == 15000
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    assert env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["MESHKIT_CONTROL"]["value"] == SETTINGS.control_address
    assert env["MESHKIT_APP_PORTS"]["value"] == "9080"
    assert sidecar["securityContext"]["runAsUser"] == 1337
    assert sidecar["resources"]["requests"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in sidecar["volumeMounts"]}
    token = volumes["meshkit-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "meshkit-ca", "expirationSeconds": 3600, "path": "meshkit-token"}
    assert mounts["meshkit-token"] == "/var/run/secrets/tokens"
    # the control plane is reached over TLS on 15012 and verified against the mesh root, which the
    # sidecar mounts from the ConfigMap published in every namespace (Istio's istio-ca-root-cert)
    assert SETTINGS.control_address == "https://meshkit-control.meshkit-system.svc:15012"
    assert volumes["meshkit-ca-root"] == {"name": "meshkit-ca-root",
                                          "configMap": {"name": "meshkit-ca-root-cert"}}
    assert env["MESHKIT_CONTROL_CA"]["value"] == f"{mounts['meshkit-ca-root']}/root-cert.pem"
    init = spec["initContainers"][-1]
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-db", "meshkit-init"]
    assert sorted(init["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    status = json.loads(patched["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert status["containers"] == ["meshkit-proxy"]


def _sidecar_args(pod: dict[str, Any]) -> list[str]:
    patched = jsonpatch.apply_patch(pod, inject(pod, ENABLED, SETTINGS))
    (sidecar,) = [c for c in patched["spec"]["containers"] if c["name"] == names.SIDECAR_CONTAINER]
    return list(sidecar["args"])


def test_proxy_config_concurrency_reaches_the_sidecar() -> None:
    """Istio's per-workload ``proxy.istio.io/config`` ``concurrency``: ``--concurrency N`` worker
    processes; none without it (the default, 1); a bad value refuses the pod, saying why."""
    assert "--concurrency" not in _sidecar_args(_pod("p", labels={"app": "x"}))
    for text, expected in (('{"concurrency": 2}', "2"), ("concurrency: 0\n", "0")):
        pod = _pod("p", labels={"app": "x"})
        pod["metadata"]["annotations"] = {"proxy.istio.io/config": text}
        args = _sidecar_args(pod)
        assert args[args.index("--concurrency") + 1] == expected, args
    pod = _pod("p", labels={"app": "x"})
    pod["metadata"]["annotations"] = {"proxy.istio.io/config": '{"concurrency": "two"}'}
    with pytest.raises(InjectionRefused, match=r"proxy.istio.io/config: concurrency: expected a whole"):
        inject(pod, ENABLED, SETTINGS)


def test_existing_annotations_are_kept() -> None:
    pod = _pod("p", labels={"app": "x"})
    pod["metadata"]["annotations"] = {"team": "a/b"}
    patched = jsonpatch.apply_patch(pod, inject(pod, ENABLED, SETTINGS))
    assert patched["metadata"]["annotations"]["team"] == "a/b"
    assert names.STATUS_ANNOTATION in patched["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("pod_label", "namespace_labels", "expected"),
    [
        (None, ENABLED, True),
        (None, {}, False),
        (None, {names.INJECTION_LABEL: "disabled"}, False),
        ("true", {}, True),
        ("false", ENABLED, False),
        ("TRUE", {}, True),
        ("maybe", ENABLED, True),  # not a boolean: the namespace decides
    ],
)
def test_should_inject(pod_label: str | None, namespace_labels: dict[str, str], expected: bool) -> None:
    labels = {} if pod_label is None else {names.INJECT_OVERRIDE_LABEL: pod_label}
    assert should_inject(_pod("p", labels=labels), namespace_labels) is expected


def test_host_network_pods_are_not_injected() -> None:
    assert inject(_pod("p", hostNetwork=True), ENABLED, SETTINGS) == []


def test_trusting_the_webhook_selectors_injects_without_the_namespace_labels() -> None:
    """The operator's namespace index is empty after a restart; the static webhook's selectors
    already chose the pod, so injection does not depend on the index (Istio's injector works so).
    Before, the injector read missing labels as "not enabled" and admitted the pod bare."""
    pod = _pod("details-v1-a")
    containers = [op for op in inject(pod, None, SETTINGS) if op["path"].startswith("/spec/containers")]
    assert [op["value"]["name"] for op in containers] == [names.SIDECAR_CONTAINER]
    opted_out = _pod("details-v1-b", labels={names.INJECT_OVERRIDE_LABEL: "false"})
    assert inject(opted_out, None, SETTINGS) == []


def test_exclusion_annotations_become_the_init_containers_environment() -> None:
    pod = _pod("details-v1-a")
    pod["metadata"]["annotations"] = {
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432, 9443",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeInboundPorts": "",
    }
    patched = jsonpatch.apply_patch(pod, inject(pod, ENABLED, SETTINGS))
    init = next(c for c in patched["spec"]["initContainers"] if c["name"] == names.INIT_CONTAINER)
    assert init["env"] == [{"name": "EXCLUDE_OUTBOUND_PORTS", "value": "5432,9443"},
                           {"name": "EXCLUDE_OUTBOUND_IP_RANGES", "value": "10.96.0.0/12"}]
    plain = jsonpatch.apply_patch(_pod("details-v1-b"), inject(_pod("details-v1-b"), ENABLED, SETTINGS))
    assert "env" not in plain["spec"]["initContainers"][0]


def test_app_probes_are_rewritten_to_the_status_port() -> None:
    """Kubelet's probes would be captured (failing under STRICT, or a TCP probe passing against the
    sidecar while the app is down): they go to 15021 and the sidecar runs the originals."""
    app = {"name": "app", "image": "bookinfo/details:1", "ports": [{"name": "http", "containerPort": 9080}],
           "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 3},
           "livenessProbe": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 2},
           "startupProbe": {"exec": {"command": ["true"]}}}
    pod = _pod("details-v1-a", containers=[app])
    patched = jsonpatch.apply_patch(pod, inject(pod, ENABLED, SETTINGS))
    container = patched["spec"]["containers"][0]
    assert container["readinessProbe"] == {"httpGet": {"path": "/app-health/app/readyz", "port": 15021,
                                                       "scheme": "HTTP"}, "periodSeconds": 3}
    assert container["livenessProbe"]["httpGet"]["path"] == "/app-health/app/livez"
    assert container["livenessProbe"]["timeoutSeconds"] == 2
    assert container["startupProbe"] == {"exec": {"command": ["true"]}}  # exec: left alone
    sidecar = patched["spec"]["containers"][-1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert PROBERS_ENV == "MESHKIT_APP_PROBERS"
    probers = parse_probers(env[PROBERS_ENV])  # what the sidecar will read
    assert probers["/app-health/app/readyz"] == AppProbe("http", 9080, "/ready")
    assert probers["/app-health/app/livez"] == AppProbe("tcp", 9080, timeout_s=2.0)
    opted_out = _pod("details-v1-b", containers=[app])
    opted_out["metadata"]["annotations"] = {"sidecar.istio.io/rewriteAppHTTPProbers": "false"}
    kept = jsonpatch.apply_patch(opted_out, inject(opted_out, ENABLED, SETTINGS))
    assert kept["spec"]["containers"][0]["readinessProbe"] == app["readinessProbe"]


def test_a_native_sidecar_runs_first_and_lets_a_job_complete() -> None:
    """Kubernetes >= 1.29: the proxy as an init container with ``restartPolicy: Always`` (started
    after the capture rules, before the app, which waits for its startup probe); a Job's pod then
    completes when its app exits. The result is a valid Pod at 1.30."""
    settings = InjectSettings(image="meshkit:test", native_sidecar=True)
    job_pod = _pod("migrate-x1", containers=[{"name": "migrate", "image": "tools:1", "command": ["true"]}],
                   restartPolicy="Never")
    patched = jsonpatch.apply_patch(job_pod, inject(job_pod, ENABLED, settings))
    init = patched["spec"]["initContainers"]
    assert [c["name"] for c in init] == [names.INIT_CONTAINER, names.SIDECAR_CONTAINER]
    assert init[1]["restartPolicy"] == "Always"
    assert init[1]["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": names.PORT_HEALTH}
    assert [c["name"] for c in patched["spec"]["containers"]] == ["migrate"]
    assert kube_sources.has_sidecar(patched)  # the control plane still sees the sidecar
    assert inject(patched, ENABLED, settings) == []
    kubernetes_validate.validate(patched, "1.30.0", strict=True)
