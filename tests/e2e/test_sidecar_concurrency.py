"""Istio's per-workload ``proxy.istio.io/config: '{"concurrency": 2}'`` in the REAL local mesh.

A Deployment applied with the annotation on its pod template gets a sidecar started with
``--concurrency 2`` (two processes sharing its ports: docs/proxy.md); requests reach it over mTLS
from sleep's sidecar, its admin port sums the workers' counters and reports memory per process,
and the other sidecars of the mesh stay one process (the default). ``meshkit down`` leaves none of
them behind.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import meshkit, processes_of
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.pids import alive
from tests.security.e2e_support import through
from tests.waiting import wait_until

REQUESTS = 12
MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
  selector: {app: httpbin}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpbin, version: v1}}
  template:
    metadata:
      labels: {app: httpbin, version: v1}
      annotations:
        proxy.istio.io/config: '{"concurrency": 2}'
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: docker.io/kong/httpbin
        ports: [{containerPort: 8080}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("concurrency"), ["clients"], spare=1) as running:
        yield running


def _admin(port: int, page: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{page}", timeout=10) as answer:
        return json.loads(answer.read())


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_annotation_gives_that_workload_s_sidecar_two_processes(
    mesh: RunningMesh, tmp_path: Path
) -> None:
    manifest = tmp_path / "httpbin.yaml"
    manifest.write_text(MANIFEST)
    applied = meshkit(mesh.home, mesh.base, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    row = mesh.workload("httpbin-0")
    sidecar = int(row["sidecar_pid"])
    workers = _children(sidecar)
    assert len(workers) == 1, f"httpbin's sidecar (pid {sidecar}) forked {workers}"
    assert _children(int(mesh.workload("sleep-v1-0")["sidecar_pid"])) == []  # the default: one process
    for _ in range(REQUESTS):
        status, body = through(mesh, "sleep-v1-0", "http://httpbin:8000/get")
        assert status == 200, body
    admin = int(row["admin_port"])
    stats = _admin(admin, "/stats")
    assert [w["pid"] for w in stats["workers"]] == [sidecar, *workers]
    assert stats["listeners"]["inbound"]["downstream_rq_total"] >= REQUESTS
    assert sum(w["listeners"]["inbound"]["downstream_rq_total"] for w in stats["workers"]) == \
        stats["listeners"]["inbound"]["downstream_rq_total"]
    memory = _admin(admin, "/memory")
    assert memory["concurrency"] == 2
    assert all(p["rss_bytes"] > 0 and p["pss_bytes"] > 0 for p in memory["processes"])
    pods = meshkit(mesh.home, mesh.base, "get", "pods")
    assert any(line.split()[:3] == ["httpbin-0", "2/2", "Running"] for line in pods.stdout.splitlines()), \
        pods.stdout
    mesh.mesh.down()
    wait_until(lambda: not any(alive(pid) for pid in [sidecar, *workers]), 20,
               "the sidecar and its worker to stop")
    wait_until(lambda: processes_of(mesh.home) == [], 20, "every process of the mesh to stop")
