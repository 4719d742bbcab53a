"""Istio's tcp-echo sample on the real local mesh, driven by the CLI as a learner types it.

``tcp-echo-services.yaml`` (its Service with ports ``tcp`` 9000 and ``tcp-other`` 9001, and the Deployments
tcp-echo-v1 and -v2 of ``docker.io/istio/tcp-echo-server`` with ``args: ["9000,9001,9002", "one"|"two"]``)
applied in a namespace without injection runs two tcp-echo processes, ready on a TCP connect; from sleep,
the TCP traffic-shifting task's ``sh -c "(date; sleep 1) | nc HOST PORT"`` to an instance's app port prints
``one <date>`` / ``two <date>``; ``meshkit status`` names the ingress gateway's TCP port. (Through the
sidecars and the ingress gateway's TCP routes is the task's own test, with the proxy's TCP relay.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime.ports import PortPlan
from tests.e2e.cli import meshkit
from tests.e2e.mesh import RunningMesh, start_mesh

NAMESPACE = "tcp-plain"  # created without the istio-injection label: no sidecars
DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d UTC \d{4}"


def _deployment(version: str, prefix: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tcp-echo-{version}
  labels:
    app: tcp-echo
    version: {version}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tcp-echo
      version: {version}
  template:
    metadata:
      labels:
        app: tcp-echo
        version: {version}
    spec:
      containers:
      - name: tcp-echo
        image: docker.io/istio/tcp-echo-server:1.2
        imagePullPolicy: IfNotPresent
        args: [ "9000,9001,9002", "{prefix}" ]
        ports:
        - containerPort: 9000
        - containerPort: 9001
"""


# the shape of samples/tcp-echo/tcp-echo-services.yaml
TCP_ECHO_SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  labels:
    app: tcp-echo
spec:
  ports:
  - name: tcp
    port: 9000
  - name: tcp-other
    port: 9001
  selector:
    app: tcp-echo
---
""" + _deployment("v1", "one") + "---\n" + _deployment("v2", "two")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("tcpecho"), ["clients"], spare=2) as running:
        yield running


def test_tcp_echo_runs_from_its_manifests_and_answers_nc(mesh: RunningMesh, tmp_path: Path) -> None:
    run = lambda *args: meshkit(mesh.home, mesh.base, *args)  # noqa: E731
    created = run("create", "namespace", NAMESPACE)
    assert created.returncode == 0, created.stderr
    manifest = tmp_path / "tcp-echo-services.yaml"
    manifest.write_text(TCP_ECHO_SERVICES)
    applied = run("apply", "-f", str(manifest), "-n", NAMESPACE)
    assert applied.returncode == 0, applied.stderr
    assert "pod/tcp-echo-v1-0.tcp-plain started" in applied.stdout
    rows = {w["name"]: w for w in mesh.status["workloads"]}
    one, two = rows["tcp-echo-v1-0.tcp-plain"], rows["tcp-echo-v2-0.tcp-plain"]
    assert one["healthy"] and two["healthy"] and one["inbound_port"] is None  # no sidecar in this namespace
    for row, prefix in ((one, "one"), (two, "two")):
        done = run("exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
                   f"(date; sleep 1) | nc 127.0.0.1 {row['app_port']}")
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(rf"{prefix} {DATE}\n", done.stdout), done.stdout
    # a name of the mesh: Kubernetes DNS from sleep's namespace, to one instance of the service
    named = run("exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
                f"(date; sleep 0.2) | nc tcp-echo.{NAMESPACE} 9000")
    assert re.fullmatch(rf"(one|two) {DATE}\n", named.stdout), (named.stdout, named.stderr)
    refused = run("exec", "deploy/sleep", "--", "sh", "-c", "date | nc example.com 31400")
    assert refused.returncode != 0 and "neither a loopback address" in refused.stderr


def test_status_names_the_ingress_gateway_s_tcp_port(mesh: RunningMesh) -> None:
    shown = meshkit(mesh.home, mesh.base, "status")
    assert shown.returncode == 0, shown.stderr
    port = PortPlan(mesh.base).ingress_tcp
    assert f"TCP Gateway servers: 127.0.0.1:{port}" in shown.stdout
    assert mesh.status["ingress_tcp"] == f"127.0.0.1:{port}"
    # the task's TCP_INGRESS_PORT line, with meshkit for kubectl
    found = meshkit(mesh.home, mesh.base, "get", "service", "istio-ingressgateway", "-n", "istio-system",
                    "-o", 'jsonpath={.spec.ports[?(@.name=="tcp")].port}')
    assert (found.returncode, found.stdout) == (0, str(port)), found.stderr
