"""Istio's front door as data: the Kubernetes objects of Istio's samples, Gateways and what binds to them.

Istio's own files (tests/config/istio_samples: bookinfo.yaml, bookinfo-gateway.yaml, httpbin.yaml,
sleep.yaml, curl.yaml) load unchanged; the analyzer names what the local mesh cannot run; the ingress
gateway's snapshot holds only the hosts a Gateway and a VirtualService bind.
"""

from __future__ import annotations

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.gateways import Gateway, bound_hosts
from meshkit.config.loader import load_files, load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import Node
from meshkit.config.workloads import Namespace, plan_workloads, repository_of, sample_app
from tests.config.bookinfo import SAMPLES, bookinfo_registry

INGRESS = Node("istio-ingressgateway-0", namespace="istio-system", kind="gateway",
               labels={"app": "istio-ingressgateway", "istio": "ingressgateway"})


def codes(messages: list[Message]) -> list[tuple[str, str, str]]:
    return [(m.code, m.resource, m.field) for m in messages]


def test_istio_bookinfo_manifests_load_unchanged_and_plan_six_workloads() -> None:
    resources = load_files([SAMPLES / "bookinfo.yaml"])
    kinds = sorted({r.kind for r in resources})
    assert kinds == ["Deployment", "Service", "ServiceAccount"]
    plans = {p.name: p for p in plan_workloads(resources)}
    assert sorted(plans) == ["details-v1", "productpage-v1", "ratings-v1", "reviews-v1", "reviews-v2",
                             "reviews-v3"]
    reviews = plans["reviews-v2"]
    assert (reviews.app, reviews.version, reviews.service, reviews.service_port) == (
        "reviews", "v2", "reviews", 9080)
    assert reviews.service_account == "bookinfo-reviews" and dict(reviews.labels) == {"app": "reviews",
                                                                                        "version": "v2"}
    assert analyze(resources) == []


@pytest.mark.parametrize(("sample", "app", "service", "port", "account"), [
    ("httpbin.yaml", "httpbin", "httpbin", 8000, "httpbin"),
    ("sleep.yaml", "sleep", "sleep", 80, "sleep"),
    ("curl.yaml", "sleep", "curl", 80, "curl"),
])
def test_httpbin_sleep_and_curl_samples_run_the_built_in_apps(sample: str, app: str, service: str, port: int,
                                                               account: str) -> None:
    (plan,) = plan_workloads(load_files([SAMPLES / sample]))
    assert (plan.app, plan.service, plan.service_port, plan.service_account, plan.sidecar) == (
        app, service, port, account, True)


def test_sample_images_of_any_registry_and_tag() -> None:
    assert sample_app("docker.io/istio/examples-bookinfo-productpage-v1:1.20.2") == "productpage"
    assert sample_app("registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3") == "reviews"
    assert sample_app("istio/examples-bookinfo-ratings-v2@sha256:abc") == "ratings"
    assert sample_app("docker.io/kong/httpbin:0.1.0") == "httpbin"
    assert sample_app("localhost:5000/mccutchen/go-httpbin") == "httpbin"
    assert sample_app("curlimages/curl") == "sleep" and sample_app("fortio/fortio:latest_release") == "sleep"
    assert sample_app("docker.io/istio/examples-helloworld-v1:1.0") == "helloworld"
    assert sample_app("docker.io/istio/tcp-echo-server:1.2") == "tcp-echo"
    assert sample_app("nginx:1.25") == "nginx" and sample_app("docker.io/library/nginx") == "nginx"
    assert sample_app("redis:7") is None and sample_app("docker.io/istio/tcp-echo-client:1.3") is None
    assert repository_of("registry.istio.io/release/x:1") == "release/x"


def test_unknown_image_missing_labels_and_a_service_selecting_nothing_are_named_errors() -> None:
    text = (SAMPLES / "httpbin.yaml").read_text()
    bad_image = load_resources(text.replace("docker.io/mccutchen/go-httpbin:v2.15.0", "redis:7"))
    (message,) = analyze(bad_image)
    assert (message.code, message.severity, message.resource, message.field) == (
        "MK0301", Severity.ERROR, "Deployment/default/httpbin", "spec.template.spec.containers[0].image")
    assert '"redis:7"' in message.text and "examples-bookinfo" in message.text and "curl" in message.text
    template_labels = "    metadata:\n      labels:\n        app: httpbin\n        version: v1\n"
    unlabelled = load_resources(text.replace(template_labels, "    metadata: {}\n"))
    assert codes(analyze(unlabelled)) == [
        ("MK0302", "Deployment/default/httpbin", "spec.template.metadata.labels"),
        ("MK0303", "Service/default/httpbin", "spec.selector"),
    ]
    lonely = load_resources(text.replace("    app: httpbin\n---\napiVersion: apps/v1", "    app: nobody\n"
                                         "---\napiVersion: apps/v1"))
    (selects_nothing,) = analyze(lonely)
    assert (selects_nothing.code, selects_nothing.field) == ("MK0303", "spec.selector")
    assert "app=nobody" in selects_nothing.text


def test_deployment_without_selector_is_refused_by_the_loader() -> None:
    with pytest.raises(ConfigError) as refused:
        load_resources("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n"
                       "    spec: {containers: [{name: c, image: curlimages/curl}]}\n")
    assert [(m.code, m.field) for m in refused.value.messages] == [("MK0006", "spec.selector")]


def test_ignored_kubernetes_kinds_are_warnings_and_the_rest_loads() -> None:
    warnings: list[Message] = []
    text = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n---\n"
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: hpa}\n---\n"
            + (SAMPLES / "sleep.yaml").read_text())
    resources = load_resources(text, warnings=warnings)
    # a ConfigMap is stored (a pod may mount it: the nginx tasks); the HPA is reported as left out
    assert sorted(r.kind for r in resources) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert [(m.code, m.severity, m.resource) for m in warnings] == [
        ("MK0009", Severity.WARNING, "HorizontalPodAutoscaler/default/hpa")]


def test_injection_follows_the_pod_annotation_then_the_namespace_label() -> None:
    text = (SAMPLES / "sleep.yaml").read_text()
    plain = load_resources(text)
    (meshed,) = plan_workloads(plain)
    assert meshed.sidecar and meshed.app == "sleep"
    disabled = Namespace.model_validate({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "default", "labels": {"istio-injection": "disabled"}}})
    (legacy,) = plan_workloads([*plain, disabled])
    assert not legacy.sidecar and legacy.app == "legacy"  # the out-of-mesh client
    annotated = load_resources(text.replace("    spec:\n      terminationGracePeriodSeconds",
                                            "      annotations: {sidecar.istio.io/inject: 'true'}\n"
                                            "    spec:\n      terminationGracePeriodSeconds"))
    (forced,) = plan_workloads([*annotated, disabled])
    assert forced.sidecar


def test_the_ingress_serves_only_hosts_bound_by_gateway_and_virtual_service() -> None:
    gateway_file = load_files([SAMPLES / "bookinfo-gateway.yaml"])
    assert any(isinstance(r, Gateway) for r in gateway_file)
    assert [host for host, _ in bound_hosts(INGRESS, gateway_file)] == ["*"]
    snapshot = compile_snapshot(gateway_file, bookinfo_registry(), INGRESS)
    hosts = snapshot["outbound"]["virtual_hosts"]
    assert [h["domains"] for h in hosts] == [["*"]]  # no reviews.default.svc.cluster.local:9080 of its own
    assert hosts[0]["routes"][0]["route"][0]["cluster"] == "productpage.default|"
    vs_only = [r for r in gateway_file if not isinstance(r, Gateway)]
    assert compile_snapshot(vs_only, bookinfo_registry(), INGRESS)["outbound"]["virtual_hosts"] == []
    (missing,) = analyze(vs_only)
    assert (missing.code, missing.severity, missing.field) == ("MK0401", Severity.WARNING, "spec.gateways[0]")
    other = Node("egress-0", namespace="istio-system", kind="gateway", labels={"istio": "egressgateway"})
    assert bound_hosts(other, gateway_file) == []


def test_gateway_and_virtual_service_hosts_intersect() -> None:
    resources = load_resources("""
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com", "default/bookinfo.local", "other/hidden.local"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["httpbin.example.com", "bookinfo.local", "hidden.local", "elsewhere.org"]
  gateways: [istio-system/gw, mesh]
  http: [{route: [{destination: {host: httpbin}}]}]
""")
    assert [host for host, _ in bound_hosts(INGRESS, resources)] == ["bookinfo.local", "httpbin.example.com"]
    sidecar = compile_snapshot(resources, bookinfo_registry(), Node("sleep-0"))
    assert "httpbin.example.com" in [h["name"] for h in sidecar["outbound"]["virtual_hosts"]]  # mesh too


def test_tls_modes_other_than_simple_are_named_as_not_supported() -> None:
    """HTTPS servers with tls.mode SIMPLE work (tests/config/test_gateway_tls.py), PASSTHROUGH too
    (tests/config/test_tls_routes.py); the others are named."""
    with pytest.raises(ConfigError) as refused:
        load_resources("""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: MONGO}
    hosts: ["*"]
    tls: {mode: MUTUAL}
""")
    assert sorted((m.code, m.field) for m in refused.value.messages) == [
        ("MK0004", "spec.servers[0].port.protocol"), ("MK0004", "spec.servers[0].tls.mode")]
