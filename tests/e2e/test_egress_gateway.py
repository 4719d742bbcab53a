"""Istio's "Egress Gateways" task (HTTP part) on the real local mesh, with the task's YAML verbatim.

The mesh runs `clients` (sleep, in the mesh) and `external` (the stand-ins); `meshkit deploy egressgateway`
(or ``meshkit up --set components.egressGateways[0].enabled=true``, istioctl's flag) adds the
``istio-egressgateway`` gateway proxy (``istio: egressgateway``, istio-system), as istioctl's demo
profile has it. Everything is done through the CLI a learner types: ``meshkit apply -f`` of the task's
files (tests/config/istio_samples/egress-gateway-*.yaml), ``meshkit curl -i --from sleep-v1-0`` for
``kubectl exec sleep -- curl -sSL -o /dev/null -D - http://edition.cnn.com/politics`` and ``meshkit logs
egressgateway --access`` for ``kubectl logs -l istio=egressgateway -n istio-system``. Every request stays
on 127.0.0.1: sleep's sidecar, the egress gateway and the stand-in.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import cli
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

SERVICE_ENTRY = SAMPLES / "egress-gateway-serviceentry-cnn.yaml"
GATEWAY = SAMPLES / "egress-gateway-cnn.yaml"
VIRTUAL_SERVICE = SAMPLES / "egress-gateway-virtualservice-cnn.yaml"
URL = "http://edition.cnn.com/politics"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egressgw"), ["clients", "external"]) as running:
        yield running


def meshkit(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    done = cli.meshkit(mesh.home, mesh.base, *args)
    assert done.returncode == 0, f"meshkit {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def _gateway_log(mesh: RunningMesh) -> list[dict[str, Any]]:
    done = meshkit(mesh, "logs", "egressgateway", "--access", "--tail", "0")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _curl_cnn(mesh: RunningMesh) -> str:
    """``kubectl exec sleep -- curl -sSL -o /dev/null -D - http://edition.cnn.com/politics``: the headers."""
    return meshkit(mesh, "curl", "-i", "--from", "sleep-v1-0", URL).stdout


def _status_line(headers: str) -> str:
    return headers.splitlines()[0]


def test_http_traffic_through_the_egress_gateway(mesh: RunningMesh) -> None:
    # istioctl install --set profile=demo has it; here istioctl's own flag, on the running mesh
    meshkit(mesh, "up", "--set", "components.egressGateways[0].enabled=true")
    gateway_pid = mesh.pids()["egressgateway"]
    pods = meshkit(mesh, "get", "pods", "-n", "istio-system").stdout  # kubectl get pod -n istio-system
    assert [line.split()[:3] for line in pods.splitlines() if "egress" in line] == [
        ["istio-egressgateway-0", "1/1", "Running"]], pods
    meshkit(mesh, "apply", "-f", str(SERVICE_ENTRY))
    direct = _curl_cnn(mesh)  # the task's first check: the ServiceEntry alone, straight out
    assert " 301" in _status_line(direct), direct
    assert "location: https://edition.cnn.com/politics" in direct.lower(), direct
    assert _gateway_log(mesh) == []  # nothing went through the egress gateway yet

    for path in (GATEWAY, VIRTUAL_SERVICE):  # applied with no warning: the gateway and cnn are known
        applied = meshkit(mesh, "apply", "-f", str(path))
        assert "Warning" not in applied.stdout + applied.stderr, applied
    through = _curl_cnn(mesh)
    assert " 301" in _status_line(through), through
    assert "location: https://edition.cnn.com/politics" in through.lower(), through

    # `kubectl logs -l istio=egressgateway -c istio-proxy -n istio-system | tail`: the request is there
    [entry] = [e for e in _gateway_log(mesh) if e.get("path") == "/politics"]
    assert entry["authority"] == "edition.cnn.com", entry
    assert entry["status"] == 301, entry
    assert entry["upstream_cluster"].startswith("edition.cnn.com"), entry
    # and sleep's sidecar sent it to the egress gateway's subset cnn, not to the host
    sleep_log = meshkit(mesh, "logs", "sleep-v1-0", "--access", "--tail", "0").stdout
    sent = [json.loads(line) for line in sleep_log.splitlines() if line.strip()]
    cnn = [e for e in sent if e.get("authority") == "edition.cnn.com"]
    assert cnn[-1]["upstream_cluster"] == "istio-egressgateway.istio-system|cnn", cnn[-1]

    # cleanup as the task does: the VirtualService gone, sleep goes straight out again
    meshkit(mesh, "delete", "-f", str(VIRTUAL_SERVICE))
    before = len(_gateway_log(mesh))
    again = _curl_cnn(mesh)
    assert " 301" in _status_line(again), again
    assert len(_gateway_log(mesh)) == before
    # `meshkit deploy egressgateway` (the other way to ask for it) keeps the running one
    meshkit(mesh, "deploy", "egressgateway")
    assert mesh.pids()["egressgateway"] == gateway_pid
