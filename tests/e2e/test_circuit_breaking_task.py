"""Istio's "Circuit Breaking" task on the real local mesh, with its own commands after `meshkit exec`.

The task: ``kubectl apply -f samples/httpbin/httpbin.yaml``, the DestinationRule with one
connection and one pending request, ``kubectl apply -f samples/httpbin/sample-client/
fortio-deploy.yaml``, then from the fortio pod ``fortio curl -quiet http://httpbin:8000/get`` (200),
``fortio load -c 3 -qps 0 -n 30 -loglevel Warning http://httpbin:8000/get`` (some ``Code 503``),
and ``pilot-agent request GET stats | grep httpbin | grep pending`` in the istio-proxy container
(``upstream_rq_pending_overflow`` counts them). Here each ``kubectl exec POD -c C -- ...`` is
``meshkit exec POD -c C -- ...`` with the same words after ``--``. Also the other sample whose
image runs here, helloworld (``samples/helloworld/helloworld.yaml``), called from sleep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import meshkit
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

# samples/httpbin/sample-client/fortio-deploy.yaml, as Istio ships it (its Service and Deployment)
FORTIO_DEPLOY = """\
apiVersion: v1
kind: Service
metadata:
  name: fortio
  labels:
    app: fortio
    service: fortio
spec:
  ports:
  - port: 8080
    name: http
  selector:
    app: fortio
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: fortio-deploy
spec:
  replicas: 1
  selector:
    matchLabels:
      app: fortio
  template:
    metadata:
      annotations:
        proxy.istio.io/config: |-
          proxyStatsMatcher:
            inclusionPrefixes:
            - "cluster.outbound"
            - "cluster_manager"
            - "listener_manager"
            - "server"
            - "cluster.xds-grpc"
      labels:
        app: fortio
    spec:
      containers:
      - name: fortio
        image: fortio/fortio:latest_release
        imagePullPolicy: Always
        ports:
        - containerPort: 8080
          name: http-fortio
        - containerPort: 8079
          name: grpc-ping
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("circuit-breaking"), ["none"], spare=4) as running:
        yield running


def _run(mesh: RunningMesh, *args: str) -> tuple[int, str]:
    done = meshkit(mesh.home, mesh.base, *args, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_the_circuit_breaking_task_with_fortio(mesh: RunningMesh, tmp_path: Path) -> None:
    fortio = tmp_path / "fortio-deploy.yaml"
    fortio.write_text(FORTIO_DEPLOY)
    for path in (SAMPLES / "httpbin.yaml", SAMPLES / "httpbin-circuit-breaker.yaml", fortio):
        code, out = _run(mesh, "apply", "-f", str(path))
        assert code == 0, out

    code, out = _run(mesh, "exec", "fortio-deploy", "-c", "fortio", "--",
                     "/usr/bin/fortio", "curl", "-quiet", "http://httpbin:8000/get")
    assert code == 0, out
    assert out.startswith("HTTP/1.1 200") and '"url"' in out, out

    code, out = _run(mesh, "exec", "fortio-deploy", "-c", "fortio", "--", "/usr/bin/fortio", "load",
                     "-c", "3", "-qps", "0", "-n", "60", "-loglevel", "Warning", "http://httpbin:8000/get")
    assert code == 0, out
    counts = {int(c): int(n) for c, n in re.findall(r"^Code (-?\d+) : (\d+) \(", out, re.MULTILINE)}
    assert sum(counts.values()) == 60, out
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0, out  # the breaker tripped, as in the task
    assert "All done 60 calls" in out

    code, out = _run(mesh, "exec", "fortio-deploy", "-c", "istio-proxy", "--",
                     "pilot-agent", "request", "GET", "stats")
    assert code == 0, out
    pending = [line for line in out.splitlines() if "httpbin" in line and "pending" in line]
    overflow = next(line for line in pending if "upstream_rq_pending_overflow" in line)
    assert int(overflow.rsplit(":", 1)[1]) >= counts[503], pending

    # what cannot run says so, with what can
    code, out = _run(mesh, "exec", "fortio-deploy", "--", "wget", "http://httpbin:8000/get")
    assert code != 0 and "'wget' does not run on the local mesh" in out and "fortio load" in out


def _helloworld(version: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: helloworld-{version}
  labels:
    app: helloworld
    version: {version}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: helloworld
      version: {version}
  template:
    metadata:
      labels:
        app: helloworld
        version: {version}
    spec:
      containers:
      - name: helloworld
        image: docker.io/istio/examples-helloworld-{version}:1.0
        resources:
          requests:
            cpu: "100m"
        imagePullPolicy: IfNotPresent #Always
        ports:
        - containerPort: 5000
"""


# samples/helloworld/helloworld.yaml, as Istio ships it: a Service and two versioned Deployments
HELLOWORLD = """\
apiVersion: v1
kind: Service
metadata:
  name: helloworld
  labels:
    app: helloworld
    service: helloworld
spec:
  ports:
  - port: 5000
    name: http
  selector:
    app: helloworld
---
""" + _helloworld("v1") + "---\n" + _helloworld("v2")


def test_the_helloworld_sample_answers_with_its_version(mesh: RunningMesh, tmp_path: Path) -> None:
    sample = tmp_path / "helloworld.yaml"
    sample.write_text(HELLOWORLD)
    for path in (sample, SAMPLES / "sleep.yaml"):
        code, out = _run(mesh, "apply", "-f", str(path))
        assert code == 0, out
    seen: set[str] = set()
    for _ in range(12):  # round robin over the two versions
        code, out = _run(mesh, "exec", "deploy/sleep", "--", "curl", "-sS", "helloworld:5000/hello")
        assert code == 0, out
        assert re.fullmatch(r"Hello version: (v1|v2), instance: helloworld-\1-\w+\n", out), out
        seen.add(out.split(",")[0])
        if len(seen) == 2:
            break
    assert seen == {"Hello version: v1", "Hello version: v2"}
