"""The HTTPS halves of Istio's "Accessing External Services" and "Egress Gateways" tasks, on the real mesh.

sleep's own curl speaks TLS to the external hosts; its sidecar never opens it: the tunnel (CONNECT, the
local mesh's form of iptables capturing port 443) is routed by the ClientHello's SNI (`proxy/tunnel.py`).
The commands are the tasks' (``kubectl exec "$SOURCE_POD" -c sleep -- curl ...`` as ``meshkit exec
deploy/sleep -c sleep -- curl ...``), the YAML is the tasks' verbatim (tests/config/istio_samples), the
external hosts are the stand-ins on 127.0.0.1 with their own CA, which sleep's curl trusts as it trusts
public CAs. Every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.config.meshconfig import mesh_config_map
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

REGISTRY_ONLY = mesh_config_map({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
GOOGLE = SAMPLES / "egress-serviceentry-google.yaml"
CNN_TLS = SAMPLES / "egress-gateway-https-serviceentry-cnn.yaml"
CNN_GATEWAY = SAMPLES / "egress-gateway-https-cnn.yaml"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egresshttps"), ["clients", "external"]) as running:
        yield running


def sleep_curl(mesh: RunningMesh, *curl_args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl exec "$SOURCE_POD" -c sleep -- curl ARGS``."""
    return mesh.run("exec", "deploy/sleep", "-c", "sleep", "--", "curl", *curl_args)


def status_lines(output: str) -> list[str]:
    """What ``| grep "HTTP/"`` keeps."""
    return [line for line in output.splitlines() if "HTTP/" in line]


def tcp_opened(mesh: RunningMesh, **labels: str) -> float:
    """Sum of sleep's sidecar's ``istio_tcp_connections_opened_total`` over the series matching ``labels``."""
    admin = mesh.workload("sleep-v1-0")["admin_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "istio_tcp_connections_opened":
            total += sum(s.value for s in family.samples if s.name.endswith("_total")
                         and all(s.labels.get(k) == v for k, v in labels.items()))
    return total


def access_log(mesh: RunningMesh, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in mesh.ok("logs", name, "--access", "--tail", "0").splitlines()
            if line.strip()]


def logged(mesh: RunningMesh, name: str, server_name: str, count: int = 1) -> list[dict[str, Any]]:
    """The TCP lines of ``name``'s access log for ``server_name``, once ``count`` are there: a tunnel
    writes its line when both sides are done, just after curl exits."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in access_log(mesh, name) if e.get("requested_server_name") == server_name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_https_to_external_hosts_under_allow_any_registry_only_and_a_service_entry(mesh: RunningMesh) -> None:
    # ALLOW_ANY (Istio's default): both hosts answer, through PassthroughCluster
    for url in ("https://www.google.com", "https://edition.cnn.com"):
        done = sleep_curl(mesh, "-sSI", url)
        assert done.returncode == 0, done
        assert status_lines(done.stdout)[0].startswith("HTTP/1.1 200"), done.stdout
    # Istio's stats filter on a TCP connection: the cluster in destination_service_name, no service
    assert tcp_opened(mesh, destination_service_name="PassthroughCluster", destination_service="unknown",
                      reporter="source") >= 2
    # `kubectl logs "$SOURCE_POD" -c istio-proxy | tail`: Envoy's TCP line, "- - -" 0, with the SNI
    [line] = logged(mesh, "sleep-v1-0", "www.google.com")
    assert (line["method"], line["path"], line["status"]) == (None, None, 0), line
    assert line["upstream_cluster"] == "PassthroughCluster" and line["bytes_sent"] > 0, line

    with mesh.rules(REGISTRY_ONLY):
        # the task: "command terminated with exit code 35" for both hosts
        for url in ("https://www.google.com", "https://edition.cnn.com"):
            done = sleep_curl(mesh, "-sSI", url)
            assert done.returncode == 35, done
            assert status_lines(done.stdout) == [], done.stdout
        assert tcp_opened(mesh, destination_service_name="BlackHoleCluster",
                          destination_service="unknown") >= 2
        mesh.ok("apply", "-f", str(GOOGLE))  # the `google` ServiceEntry (HTTPS 443)
        try:
            done = sleep_curl(mesh, "-sSI", "https://www.google.com")
            assert done.returncode == 0 and status_lines(done.stdout)[0].startswith("HTTP/1.1 200"), done
            assert tcp_opened(mesh, destination_service="www.google.com") >= 1
            assert sleep_curl(mesh, "-sSI", "https://edition.cnn.com").returncode == 35  # still blocked
        finally:
            mesh.ok("delete", "-f", str(GOOGLE))
        assert sleep_curl(mesh, "-sSI", "https://www.google.com").returncode == 35
    assert sleep_curl(mesh, "-sSI", "https://www.google.com").returncode == 0  # ALLOW_ANY again


def test_https_through_the_egress_gateway_with_sni_passthrough(mesh: RunningMesh) -> None:
    mesh.ok("up", "--set", "components.egressGateways[0].enabled=true")
    mesh.ok("apply", "-f", str(CNN_TLS))
    direct = sleep_curl(mesh, "-sSL", "-o", "/dev/null", "-D", "-", "https://edition.cnn.com/politics")
    assert direct.returncode == 0 and status_lines(direct.stdout)[0].startswith("HTTP/1.1 200"), direct
    assert not [e for e in access_log(mesh, "egressgateway") if e.get("requested_server_name")]

    applied = mesh.ok("apply", "-f", str(CNN_GATEWAY))
    assert "Warning" not in applied, applied
    before = len(logged(mesh, "sleep-v1-0", "edition.cnn.com", count=0))
    through = sleep_curl(mesh, "-sSL", "-o", "/dev/null", "-D", "-", "https://edition.cnn.com/politics")
    assert through.returncode == 0 and status_lines(through.stdout)[0].startswith("HTTP/1.1 200"), through
    # `kubectl logs -l istio=egressgateway -n istio-system`: "- - -" 0 ... outbound|443||edition.cnn.com
    [entry] = logged(mesh, "egressgateway", "edition.cnn.com")
    assert entry["requested_server_name"] == "edition.cnn.com" and entry["status"] == 0, entry
    assert entry["upstream_cluster"] == "outbound|443||edition.cnn.com" and entry["bytes_received"] > 0, entry
    # sleep's sidecar sent the tunnel to the egress gateway's subset cnn, not to the host
    sent = logged(mesh, "sleep-v1-0", "edition.cnn.com", count=before + 1)
    assert sent[-1]["upstream_cluster"] == \
        "outbound|443|cnn|istio-egressgateway.istio-system.svc.cluster.local", sent[-1]

    # cleanup as the task does: sleep goes straight out again, the gateway sees nothing new
    for kind, name in (("serviceentry", "cnn"), ("gateway", "istio-egressgateway"),
                       ("virtualservice", "direct-cnn-through-egress-gateway"),
                       ("destinationrule", "egressgateway-for-cnn")):
        mesh.ok("delete", kind, name)
    again = sleep_curl(mesh, "-sSL", "-o", "/dev/null", "-D", "-", "https://edition.cnn.com/politics")
    assert again.returncode == 0, again
    assert len([e for e in access_log(mesh, "egressgateway") if e.get("requested_server_name")]) == 1
