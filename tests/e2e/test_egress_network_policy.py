"""Istio's "Egress Gateways" task, last section "Apply Kubernetes network policies", on the real local mesh.

On top of the task's HTTPS part (the `cnn` ServiceEntry, the egress gateway's PASSTHROUGH Gateway, its
DestinationRule and VirtualService, tests/config/istio_samples/egress-gateway-https-*.yaml), the section's
commands run as a learner types them, with ``kubectl`` replaced by ``meshkit`` and its YAML verbatim
(egress-gateway-network-policy*.yaml, applied with ``-n test-egress`` as the task pipes them):
sleep in ``test-egress`` without a sidecar reaches edition.cnn.com until the NetworkPolicy selects it;
then its own connection is dropped (curl's exit 28, "Connection timed out"); with a sidecar injected
its traffic goes through the egress gateway in ``istio-system`` (labelled ``istio=system``: allowed)
and succeeds, while the sidecar's own connections straight out stay dropped. Everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

CNN_TLS = SAMPLES / "egress-gateway-https-serviceentry-cnn.yaml"
CNN_GATEWAY = SAMPLES / "egress-gateway-https-cnn.yaml"
SLEEP = SAMPLES / "sleep.yaml"
POLICY = SAMPLES / "egress-gateway-network-policy.yaml"
RULE = SAMPLES / "egress-gateway-network-policy-destinationrule.yaml"
URL = "https://edition.cnn.com/politics"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egressnetpol"), ["clients", "external"], spare=1) as running:
        yield running


def sleep_pod(mesh: RunningMesh) -> str:
    """``$(kubectl get pod -n test-egress -l app=sleep -o jsonpath={.items..metadata.name})``."""
    return mesh.ok("get", "pod", "-n", "test-egress", "-l", "app=sleep", "-o",
                   "jsonpath={.items..metadata.name}").strip()


def sleep_curl(mesh: RunningMesh, *curl_args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl exec "$(...)" -n test-egress -c sleep -- curl ARGS``."""
    return mesh.run("exec", sleep_pod(mesh), "-n", "test-egress", "-c", "sleep", "--", "curl",
                    *curl_args)


def gateway_lines(mesh: RunningMesh, count: int) -> list[dict[str, Any]]:
    """``kubectl logs -l istio=egressgateway -n istio-system``: its TCP lines for edition.cnn.com once
    ``count`` are there (a tunnel's line is written when both sides are done, just after curl exits)."""
    deadline = time.monotonic() + 10
    while True:
        printed = mesh.ok("logs", "-l", "istio=egressgateway", "-n", "istio-system")
        lines = [e for e in (json.loads(line) for line in printed.splitlines() if line.strip())
                 if e.get("requested_server_name") == "edition.cnn.com"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_network_policy_keeps_sleep_from_bypassing_the_egress_gateway(mesh: RunningMesh) -> None:
    # the HTTPS part of the task, whose config the section builds on
    mesh.ok("up", "--set", "components.egressGateways[0].enabled=true")
    mesh.ok("apply", "-f", str(CNN_TLS))
    mesh.ok("apply", "-f", str(CNN_GATEWAY))

    mesh.ok("create", "namespace", "test-egress")
    mesh.ok("apply", "-n", "test-egress", "-f", str(SLEEP))
    pods = mesh.ok("get", "pod", sleep_pod(mesh), "-n", "test-egress")
    assert [line.split()[1:3] for line in pods.splitlines()[1:]] == [["1/1", "Running"]], pods
    before = sleep_curl(mesh, "-s", "-o", "/dev/null", "-w", "%{http_code}\\n", URL)
    assert (before.returncode, before.stdout) == (0, "200\n"), before  # no sidecar, no policy: straight out

    mesh.ok("label", "namespace", "istio-system", "istio=system")
    mesh.ok("label", "ns", "kube-system", "kube-system=true")
    applied = mesh.run("apply", "-n", "test-egress", "-f", str(POLICY))
    assert applied.returncode == 0 and "Warning" not in applied.stdout + applied.stderr, applied
    listed = mesh.ok("get", "networkpolicies", "-n", "test-egress")
    assert listed.splitlines()[0].split() == ["NAME", "POD-SELECTOR", "AGE"], listed
    assert listed.splitlines()[1].split()[:2] == \
        ["allow-egress-to-istio-system-and-kube-dns", "<none>"], listed

    blocked = sleep_curl(mesh, "-v", "-sS", URL)  # the pod's own connection: dropped, as by the CNI
    assert blocked.returncode == 28, blocked
    assert "Failed to connect to edition.cnn.com port 443" in blocked.stdout, blocked
    assert "Connection timed out" in blocked.stdout, blocked
    # curl's --connect-timeout says how long a dropped connect hangs
    quick = sleep_curl(mesh, "--connect-timeout", "0.2", "-sS", URL)
    assert quick.returncode == 28 and "after 200 ms" in quick.stdout, quick

    mesh.ok("label", "namespace", "test-egress", "istio-injection=enabled")
    mesh.ok("delete", "deployment", "sleep", "-n", "test-egress")
    mesh.ok("apply", "-f", str(SLEEP), "-n", "test-egress")
    containers = mesh.ok("get", "pod", sleep_pod(mesh), "-n", "test-egress", "-o",
                         "jsonpath={.spec.containers[*].name}")
    assert containers == "sleep istio-proxy", containers
    mesh.ok("apply", "-n", "test-egress", "-f", str(RULE))

    through = sleep_curl(mesh, "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", URL)
    assert (through.returncode, through.stdout) == (0, "200\n"), through
    # `kubectl logs -l istio=egressgateway -n istio-system`: "- - -" 0 ... outbound|443||edition.cnn.com
    [entry] = gateway_lines(mesh, 1)
    assert entry["status"] == 0 and entry["upstream_cluster"] == "outbound|443||edition.cnn.com", entry
    assert entry["bytes_received"] > 0, entry

    # the sidecar shares the pod's network: its own connections straight out are dropped too, as
    # Envoy's connect times out (UF): www.google.com (no route: PassthroughCluster) and plain HTTP
    direct = sleep_curl(mesh, "-sSI", "https://www.google.com")
    assert direct.returncode == 35, direct  # the sidecar closes the tunnel: the handshake fails
    plain = sleep_curl(mesh, "-sS", "http://httpbin.org/headers")
    assert plain.returncode == 0, plain
    assert "upstream connect error or disconnect/reset before headers. reset reason: connection timeout" \
        in plain.stdout, plain
    # kubectl logs "$(...)" -n test-egress -c istio-proxy
    printed = mesh.ok("logs", sleep_pod(mesh), "-n", "test-egress", "-c", "istio-proxy", "--tail", "0")
    sidecar_log = [json.loads(line) for line in printed.splitlines() if line.strip()]
    assert {e.get("authority"): e["response_flags"] for e in sidecar_log if e.get("authority") in
            ("www.google.com", "httpbin.org")} == {"www.google.com": "UF", "httpbin.org": "UF"}, sidecar_log

    # cleanup, verbatim
    mesh.ok("delete", "-f", str(SLEEP), "-n", "test-egress")
    mesh.ok("delete", "destinationrule", "egressgateway-for-cnn", "-n", "test-egress")
    mesh.ok("delete", "networkpolicy", "allow-egress-to-istio-system-and-kube-dns", "-n", "test-egress")
    mesh.ok("label", "namespace", "kube-system", "kube-system-")
    mesh.ok("label", "namespace", "istio-system", "istio-")
    mesh.ok("delete", "namespace", "test-egress")
    assert "No resources found" in mesh.ok("get", "networkpolicies", "-A") + \
        mesh.run("get", "networkpolicies", "-A").stderr
    # the default namespace's sleep was never restricted
    still = mesh.run("exec", "deploy/sleep", "-c", "sleep", "--", "curl", "-sS", "-o", "/dev/null", "-w",
                     "%{http_code}\\n", URL)
    assert (still.returncode, still.stdout) == (0, "200\n"), still
