"""Istio's "Accessing External Services", last section "Direct access to external services", verbatim.

The learner finds the cluster's internal IP range (on kind: ``kubectl cluster-info dump | grep -m 1
service-cluster-ip-range``), reinstalls with ``istioctl install --set
values.global.proxy.includeIPRanges="..."`` (here ``meshkit up --set ...``, which applies to the running
mesh), and ``kubectl exec "$SOURCE_POD" -c sleep -- curl -sS http://httpbin.org/headers`` then reaches
the httpbin.org stand-in without the sidecar: no header Envoy adds, no line in the sidecar's access log;
a call to a mesh Service (in the range) still goes through it. The cleanup (``istioctl install`` without
the flag) puts interception of everything back. Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh
from tests.e2e.traffic import istio_requests

ENVOY_ADDED = ("x-envoy-", "x-b3-", "x-request-id", "traceparent", "x-forwarded-client-cert")
INCLUDE = "values.global.proxy.includeIPRanges"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("direct"), ["clients", "external", "httpbin"],
                    spare=1) as running:
        yield running


def headers(mesh: RunningMesh, url: str, namespace: str = "default") -> dict[str, str]:
    """``kubectl exec "$SOURCE_POD" -c sleep -- curl -sS URL``: the headers the server saw."""
    source_pod = mesh.ok("get", "pod", "-n", namespace, "-l", "app=sleep", "-o",
                         "jsonpath={.items..metadata.name}").strip()
    printed = mesh.ok("exec", source_pod, "-n", namespace, "-c", "sleep", "--", "curl", "-sS", url)
    echoed: dict[str, str] = json.loads(printed)["headers"]
    return echoed


def added_by_envoy(echoed: dict[str, str]) -> list[str]:
    return [name for name in echoed if name.lower().startswith(ENVOY_ADDED)]


def proxy_lines(mesh: RunningMesh, authority: str) -> list[dict[str, Any]]:
    """``kubectl logs "$SOURCE_POD" -c istio-proxy``: its access-log lines for ``authority``."""
    printed = mesh.ok("logs", "sleep-v1-0", "-c", "istio-proxy", "--tail", "0")
    return [e for e in (json.loads(line) for line in printed.splitlines() if line.strip())
            if e.get("authority") == authority]


def passthrough(admin: int) -> float:
    """sleep's sidecar's ``istio_requests_total`` to PassthroughCluster (httpbin.org has no ServiceEntry)."""
    return istio_requests(admin, destination_service_name="PassthroughCluster", reporter="source")


def test_the_internal_range_is_kinds_service_range(mesh: RunningMesh) -> None:
    # kubectl cluster-info dump | grep -m 1 service-cluster-ip-range
    dump = mesh.ok("cluster-info", "dump")
    found = [line.strip() for line in dump.splitlines() if "service-cluster-ip-range" in line][:1]
    assert found == ['"--service-cluster-ip-range=10.96.0.0/16",'], dump


def test_include_ip_ranges_sends_external_hosts_around_the_sidecar(mesh: RunningMesh) -> None:
    # before: the request goes through sleep's sidecar (Envoy's headers, an access-log line, a metric)
    admin = mesh.workload("sleep-v1-0")["admin_port"]
    logged = len(proxy_lines(mesh, "httpbin.org"))
    counted = passthrough(admin)
    assert added_by_envoy(headers(mesh, "http://httpbin.org/headers"))
    assert len(proxy_lines(mesh, "httpbin.org")) == logged + 1
    assert passthrough(admin) == counted + 1

    # istioctl install <flags-you-used-to-install-Istio> --set values.global.proxy.includeIPRanges="..."
    mesh.ok("up", "--set", f'{INCLUDE}="10.96.0.0/16"')
    try:
        direct = headers(mesh, "http://httpbin.org/headers")
        assert direct.get("Host") == "httpbin.org" and added_by_envoy(direct) == [], direct
        assert len(proxy_lines(mesh, "httpbin.org")) == logged + 1  # no line: the sidecar never saw it
        assert passthrough(admin) == counted + 1  # nor a request in its metrics
        # a Service of the mesh (10.96.0.0/16) is still reached through the sidecar
        in_mesh = len(proxy_lines(mesh, "httpbin:8000"))
        assert added_by_envoy(headers(mesh, "http://httpbin:8000/headers"))
        assert len(proxy_lines(mesh, "httpbin:8000")) == in_mesh + 1

        # a bad range is refused, naming the setting; what was set stays
        bad = mesh.run("up", "--set", f"{INCLUDE}=10.96.0.0/33")
        assert bad.returncode != 0 and f"--set {INCLUDE}: '10.96.0.0/33' is not a CIDR" in bad.stderr, bad
        assert added_by_envoy(headers(mesh, "http://httpbin.org/headers")) == []
    finally:
        # cleanup: istioctl install <flags-you-used-to-install-Istio> (without the flag): everything again
        mesh.ok("up")
    assert added_by_envoy(headers(mesh, "http://httpbin.org/headers"))
    assert len(proxy_lines(mesh, "httpbin.org")) == logged + 2


def test_exclude_ip_ranges_leaves_the_mesh_services_out(mesh: RunningMesh) -> None:
    mesh.ok("up", "--set", "values.global.proxy.excludeIPRanges=10.96.0.0/16")
    try:
        in_mesh = len(proxy_lines(mesh, "httpbin:8000"))
        # straight to an httpbin pod: its own sidecar takes the plaintext in (PERMISSIVE), so no mTLS
        # client certificate and no retry count of an outbound Envoy; sleep's sidecar never saw it
        echoed = {name.lower(): value for name, value in headers(mesh, "http://httpbin:8000/headers").items()}
        assert "x-forwarded-client-cert" not in echoed and "x-envoy-attempt-count" not in echoed, echoed
        assert len(proxy_lines(mesh, "httpbin:8000")) == in_mesh
        assert added_by_envoy(headers(mesh, "http://httpbin.org/headers"))
    finally:
        mesh.ok("up")


def test_a_pods_include_outbound_ip_ranges_annotation_replaces_the_mesh_wide_value(
        mesh: RunningMesh, tmp_path: Path) -> None:
    # Istio's sleep sample with the pod annotation, in an injected namespace of its own
    annotated = (SAMPLES / "sleep.yaml").read_text().replace(
        "    metadata:\n      labels:\n        app: sleep\n",
        "    metadata:\n      annotations:\n"
        '        traffic.sidecar.istio.io/includeOutboundIPRanges: "10.96.0.0/16"\n'
        "      labels:\n        app: sleep\n")
    assert "includeOutboundIPRanges" in annotated
    manifest = tmp_path / "sleep-annotated.yaml"
    manifest.write_text(annotated)
    mesh.ok("create", "namespace", "direct")
    bad = tmp_path / "sleep-bad.yaml"
    bad.write_text(annotated.replace('"10.96.0.0/16"', '"10.96.0.0/16,10.300.0.0/16"'))
    refused = mesh.run("apply", "-f", str(bad), "-n", "direct")
    assert refused.returncode != 0 and "MK0309" in refused.stdout + refused.stderr, refused
    assert "'10.300.0.0/16' is not a CIDR" in refused.stdout + refused.stderr, refused
    mesh.ok("label", "namespace", "direct", "istio-injection=enabled")
    mesh.ok("apply", "-f", str(manifest), "-n", "direct")
    try:
        direct = headers(mesh, "http://httpbin.org/headers", "direct")
        assert direct.get("Host") == "httpbin.org" and added_by_envoy(direct) == [], direct
        through = {k.lower() for k in headers(mesh, "http://httpbin.default:8000/headers", "direct")}
        assert "x-envoy-attempt-count" in through and "x-forwarded-client-cert" in through, through
        # the default namespace's sleep, without the annotation, still sends everything to its sidecar
        assert added_by_envoy(headers(mesh, "http://httpbin.org/headers"))
    finally:
        mesh.ok("delete", "-f", str(manifest), "-n", "direct")
