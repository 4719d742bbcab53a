"""Istio's "TCP Traffic Shifting" task on the real local mesh: its commands, its samples verbatim.

The namespace is labelled for injection as the task does, so tcp-echo v1/v2 run behind sidecars whose
Service port is opaque TCP (``tcp``): the ingress gateway's TCP listener (Istio's 31400) carries each
connection by the ``tcp`` routes over mutual TLS to one sidecar, which relays the bytes to its app. The
loop is the task's: ``sh -c "(date; sleep 1) | nc $INGRESS_HOST $TCP_INGRESS_PORT"`` from sleep. The
80/20 split is then judged on more connections than the task's 20 (exact binomial test).
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e import cli
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh
from tests.e2e.traffic import assert_share

NS = "istio-io-tcp-traffic-shifting"
DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d UTC \d{4}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("tcpshift"), ["none"], spare=3) as running:
        yield running


def task_loop(mesh: RunningMesh, host: str, port: str, times: int) -> list[str]:
    """``kubectl exec "$SLEEP" -c sleep -n NS -- sh -c "(date; sleep 1) | nc $INGRESS_HOST
    $TCP_INGRESS_PORT"``, ``times`` times: the lines printed."""
    lines = []
    for _ in range(times):
        done: subprocess.CompletedProcess[str] = cli.meshkit(
            mesh.home, mesh.base, "exec", "deploy/sleep", "-c", "sleep", "-n", NS, "--", "sh", "-c",
            f"(date; sleep 1) | nc {host} {port}")
        assert done.returncode == 0, done
        lines.append(done.stdout.strip())
    return lines


def echo_prefix(port: int) -> str:
    """One connection as the loop makes it, without the second of sleep: the answering version."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"ping\n")
        answer = conn.makefile("rb").readline().decode()
    assert answer.endswith("ping\n"), answer
    return answer.split(" ", 1)[0]


def test_the_task_shifts_tcp_from_v1_to_80_20(mesh: RunningMesh) -> None:
    mesh.ok("create", "namespace", NS)
    mesh.ok("label", "namespace", NS, "istio-injection=enabled")
    mesh.ok("apply", "-f", str(SAMPLES / "sleep.yaml"), "-n", NS)
    mesh.ok("apply", "-f", str(SAMPLES / "tcp-echo-services.yaml"), "-n", NS)
    pods = mesh.ok("get", "pods", "-n", NS)
    ready = [line.split()[1] for line in pods.splitlines() if line.startswith("tcp-echo")]
    assert ready == ["2/2", "2/2"], pods  # with their sidecars: the namespace is labelled
    mesh.ok("apply", "-f", str(SAMPLES / "tcp-echo-all-v1.yaml"), "-n", NS)
    host = mesh.ok("get", "service", "istio-ingressgateway", "-n", "istio-system",
                   "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}")
    port = mesh.ok("get", "service", "istio-ingressgateway", "-n", "istio-system",
                   "-o", 'jsonpath={.spec.ports[?(@.name=="tcp")].port}')
    for line in task_loop(mesh, host, port, 4):
        assert re.fullmatch(rf"one {DATE}", line), line

    mesh.ok("apply", "-f", str(SAMPLES / "tcp-echo-20-v2.yaml"), "-n", NS)
    shown = mesh.ok("get", "virtualservice", "tcp-echo", "-o", "yaml", "-n", NS)
    assert "weight: 80" in shown and "weight: 20" in shown, shown
    lines = task_loop(mesh, host, port, 4)
    assert all(re.fullmatch(rf"(one|two) {DATE}", line) for line in lines), lines
    prefixes = [echo_prefix(int(port)) for _ in range(200)]
    assert set(prefixes) == {"one", "two"}, prefixes
    assert_share(prefixes.count("two"), len(prefixes), 0.2, "tcp-echo v2 after tcp-echo-20-v2.yaml")

    # cleanup, as the task: the routes go, the ingress's TCP port carries nothing
    mesh.ok("delete", "-f", str(SAMPLES / "tcp-echo-all-v1.yaml"), "-n", NS)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as conn:
        conn.sendall(b"ping\n")
        assert conn.recv(100) == b""  # closed: no route (Envoy closes a connection no filter chain takes)
