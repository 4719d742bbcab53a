"""The "Gateway API" tab of Istio's "Egress Gateways" task (HTTP and HTTPS parts) on the real local mesh.

Everything is the tab's commands as a learner types them: ``meshkit apply -f`` of the task's YAML
verbatim (tests/config/istio_samples/egress-gateway-api-*.yaml and the ServiceEntries), ``meshkit exec
deploy/sleep -c sleep -- curl -sSL -o /dev/null -D - URL`` for ``kubectl exec "$SOURCE_POD" -c sleep --
curl ...``, ``meshkit logs -l gateway.networking.k8s.io/gateway-name=cnn-egress-gateway -c istio-proxy``
for the same kubectl command, and the cleanup's ``meshkit delete gtw cnn-egress-gateway``. Applying the
Gateway starts its own proxy process ``cnn-egress-gateway-istio-0`` (Istio's gateway deployment), deleting
it stops the process. Every byte stays on 127.0.0.1: sleep's sidecar, the Gateway's proxy, the stand-ins.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.runtime import kube_gateways
from tests.e2e import cli
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

HTTP_SERVICE_ENTRY = SAMPLES / "egress-gateway-serviceentry-cnn.yaml"
HTTP_GATEWAY = SAMPLES / "egress-gateway-api-cnn.yaml"
HTTP_ROUTES = SAMPLES / "egress-gateway-api-httproutes-cnn.yaml"
TLS_SERVICE_ENTRY = SAMPLES / "egress-gateway-https-serviceentry-cnn.yaml"
TLS_GATEWAY_AND_ROUTES = SAMPLES / "egress-gateway-api-https-cnn.yaml"
PROCESS = "cnn-egress-gateway-istio-0"
SELECTOR = "gateway.networking.k8s.io/gateway-name=cnn-egress-gateway"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egressgwapi"), ["clients", "external"]) as running:
        yield running


def sleep_curl(mesh: RunningMesh, url: str) -> subprocess.CompletedProcess[str]:
    """``kubectl exec "$SOURCE_POD" -c sleep -- curl -sSL -o /dev/null -D - URL``: the headers of each hop."""
    return cli.meshkit(mesh.home, mesh.base, "exec", "deploy/sleep", "-c", "sleep", "--", "curl", "-sSL",
                       "-o", "/dev/null", "-D", "-", url)


def status_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("HTTP/")]


def gateway_log(mesh: RunningMesh) -> list[dict[str, Any]]:
    """``kubectl logs -l gateway.networking.k8s.io/gateway-name=cnn-egress-gateway -c istio-proxy``."""
    text = mesh.ok("logs", "-l", SELECTOR, "-c", "istio-proxy", "--tail", "0")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sleep_log(mesh: RunningMesh) -> list[dict[str, Any]]:
    text = mesh.ok("logs", "sleep-v1-0", "--access", "--tail", "0")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_http_traffic_through_the_gateway_api_egress_gateway(mesh: RunningMesh) -> None:
    mesh.ok("apply", "-f", str(HTTP_SERVICE_ENTRY))
    applied = mesh.ok("apply", "-f", str(HTTP_GATEWAY))  # Istio deploys cnn-egress-gateway-istio
    assert f"pod/{PROCESS} started" in applied, applied
    assert PROCESS in mesh.pids()
    pods = mesh.ok("get", "pods")  # kubectl get pod: the Gateway's deployment has its pod
    assert [line.split()[:3] for line in pods.splitlines() if "cnn" in line] == [[PROCESS, "1/1", "Running"]]
    routes = cli.meshkit(mesh.home, mesh.base, "apply", "-f", str(HTTP_ROUTES))
    assert routes.returncode == 0 and "Warning" not in routes.stdout + routes.stderr, routes

    done = sleep_curl(mesh, "http://edition.cnn.com/politics")
    assert done.returncode == 0, done
    # 301 from the stand-in (through the gateway), then -L follows it over https: 200
    assert [line.split()[1] for line in status_lines(done.stdout)] == ["301", "200"], done.stdout
    assert "location: https://edition.cnn.com/politics" in done.stdout.lower(), done.stdout

    [entry] = [e for e in gateway_log(mesh) if e.get("path") == "/politics"]
    assert (entry["authority"], entry["status"]) == ("edition.cnn.com", 301), entry
    assert entry["upstream_cluster"].startswith("edition.cnn.com"), entry
    assert entry["route_name"] == "default.forward-cnn-from-egress-gateway.0", entry  # Envoy's %ROUTE_NAME%
    sent = [e for e in sleep_log(mesh) if e.get("authority") == "edition.cnn.com" and e.get("path")]
    assert sent[-1]["upstream_cluster"] == "cnn-egress-gateway-istio.default|", sent[-1]
    assert sent[-1]["route_name"] == "default.direct-cnn-to-egress-gateway.0", sent[-1]
    # its identity is the Gateway's service account, as Istio's snip_egress_gateway_for_http_traffic_13 shows
    admin = kube_gateways.ports(mesh.base, 0)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/certs", timeout=10) as answer:
        assert "spiffe://cluster.local/ns/default/sa/cnn-egress-gateway-istio" in answer.read().decode()

    # cleanup, as the task: the Gateway's proxy goes with the Gateway; sleep goes straight out again
    mesh.ok("delete", "serviceentry", "cnn")
    deleted = mesh.ok("delete", "gtw", "cnn-egress-gateway")
    assert f"pod/{PROCESS} removed" in deleted, deleted
    assert PROCESS not in mesh.pids()
    mesh.ok("delete", "httproute", "direct-cnn-to-egress-gateway")
    mesh.ok("delete", "httproute", "forward-cnn-from-egress-gateway")


def test_https_traffic_through_the_gateway_api_egress_gateway(mesh: RunningMesh) -> None:
    mesh.ok("apply", "-f", str(TLS_SERVICE_ENTRY))
    direct = sleep_curl(mesh, "https://edition.cnn.com/politics")
    assert direct.returncode == 0 and status_lines(direct.stdout)[-1].split()[1] == "200", direct
    applied = mesh.ok("apply", "-f", str(TLS_GATEWAY_AND_ROUTES))  # the Gateway and both TLSRoutes at once
    assert f"pod/{PROCESS} started" in applied, applied

    done = sleep_curl(mesh, "https://edition.cnn.com/politics")
    assert done.returncode == 0, done
    assert [line.split()[1] for line in status_lines(done.stdout)] == ["200"], done.stdout
    # the gateway passed the TLS on by its SNI, never opening it: Envoy's TCP line
    [entry] = [e for e in gateway_log(mesh) if e.get("requested_server_name") == "edition.cnn.com"]
    assert (entry["status"], entry["method"]) == (0, None), entry
    assert entry["upstream_cluster"] == "outbound|443||edition.cnn.com", entry
    assert entry["bytes_received"] > 0 and entry["bytes_sent"] > 0, entry
    tunnels = [e for e in sleep_log(mesh) if e.get("requested_server_name") == "edition.cnn.com"]
    assert "cnn-egress-gateway-istio" in tunnels[-1]["upstream_cluster"], tunnels[-1]

    cleanup = (("serviceentry", "cnn"), ("gtw", "cnn-egress-gateway"),
               ("tlsroute", "direct-cnn-to-egress-gateway"), ("tlsroute", "forward-cnn-from-egress-gateway"))
    for args in cleanup:
        mesh.ok("delete", *args)
    assert PROCESS not in mesh.pids()


def test_the_gateway_proxy_restarts_and_runs_again_after_down_and_up(mesh: RunningMesh) -> None:
    for path in (HTTP_SERVICE_ENTRY, HTTP_GATEWAY, HTTP_ROUTES):
        mesh.ok("apply", "-f", str(path))
    before = mesh.pids()[PROCESS]
    mesh.ok("restart", PROCESS)  # as `kubectl delete pod` of the gateway's pod: a new process, same ports
    assert mesh.pids()[PROCESS] != before
    again = sleep_curl(mesh, "http://edition.cnn.com/politics")
    assert [line.split()[1] for line in status_lines(again.stdout)] == ["301", "200"], again
    # the store outlives the processes: `up` after `down` runs the stored Gateway's proxy again
    mesh.mesh.down()
    assert PROCESS not in mesh.pids()
    mesh.mesh.up(["clients", "external"], base_port=mesh.base, timeout=60.0)
    assert PROCESS in mesh.pids()
    done = sleep_curl(mesh, "http://edition.cnn.com/politics")
    assert [line.split()[1] for line in status_lines(done.stdout)] == ["301", "200"], done
    assert [e for e in gateway_log(mesh) if e.get("path") == "/politics"], "it went through the gateway"
    for path in (HTTP_ROUTES, HTTP_GATEWAY, HTTP_SERVICE_ENTRY):
        mesh.ok("delete", "-f", str(path))
    assert PROCESS not in mesh.pids()
