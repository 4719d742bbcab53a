"""Smoke test of the proxy-overhead benchmark harness: configs, snapshots and one short round.

It proves the harness works (real nginx, real wrk, real /proc sampling, clean shutdown) without
measuring anything meaningful; the benchmark itself is benchmarks/proxy_overhead.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxybench import report, snapshots
from proxybench.load import Wrk
from proxybench.processes import Supervisor, process_tree
from proxybench.runner import measure
from proxybench.targets import Direct, MeshkitMesh, MeshkitSidecar, NginxProxy, Stage, start_upstream
from proxybench.tools import Tools, find_tools, missing_tools

pytestmark = pytest.mark.timeout(60)


def _all_snapshots() -> dict[str, dict[str, Any]]:
    upstream = snapshots.Destination(port=18080, has_sidecar=False)
    server = snapshots.Destination(port=18081, has_sidecar=True)
    return {
        "single": snapshots.client_snapshot(upstream, app_port=18080),
        "mesh-client": snapshots.client_snapshot(server, app_port=18080),
        "mesh-server": snapshots.server_snapshot(18080),
    }


@pytest.mark.parametrize("name", ["single", "mesh-client", "mesh-server"])
def test_snapshot_is_consistent_with_the_contract(name: str) -> None:
    doc = _all_snapshots()[name]
    assert json.loads(json.dumps(doc)) == doc, "snapshot must be plain JSON"
    assert doc["schema"] == 1
    assert doc["version"] == snapshots.with_version(doc)["version"]
    assert len(doc["version"]) == 16
    for vhost in doc["outbound"]["virtual_hosts"]:
        assert "bench" in vhost["domains"]
        for route in vhost["routes"]:
            assert sum(dest["weight"] for dest in route["route"]) == 100, route["name"]
            for dest in route["route"]:
                assert dest["cluster"] in doc["clusters"], f"{route['name']} -> {dest['cluster']}"
    for key, cluster in doc["clusters"].items():
        assert key == f"{cluster['service']}|{cluster['subset']}"
        assert all(ep["address"] == "127.0.0.1" for ep in cluster["endpoints"])
    assert doc["inbound"]["app"] == {"address": "127.0.0.1", "port": 18080}


def test_realistic_route_table_has_the_canary_shape() -> None:
    routes = _all_snapshots()["single"]["outbound"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"] == [{"headers": {"end-user": {"exact": "jason"}}}]
    assert [(d["cluster"], d["weight"]) for d in routes[0]["route"]] == [("bench|v2", 100)]
    assert routes[1]["match"] == []
    assert [(d["cluster"], d["weight"]) for d in routes[1]["route"]] == [("bench|v1", 90), ("bench|v2", 10)]


@pytest.mark.skipif(importlib.util.find_spec("meshkit.proxy.snapshot") is None,
                    reason="meshkit.proxy.snapshot (PROXY-CORE) is not there yet")
@pytest.mark.parametrize("name", ["single", "mesh-client", "mesh-server"])
def test_the_sidecar_accepts_the_benchmark_snapshots(name: str) -> None:
    from meshkit.proxy.snapshot import Snapshot  # noqa: PLC0415 - exists only once PROXY-CORE lands it

    snapshot = Snapshot.from_json(_all_snapshots()[name])
    assert snapshot.version == _all_snapshots()[name]["version"]


@pytest.fixture
def tools() -> Tools:
    found = find_tools()
    if found is None:
        missing = ", ".join(missing_tools())
        pytest.skip(f"benchmark tools missing: {missing} (apt-get install nginx haproxy wrk)")
    return found


@pytest.fixture
def stage(tools: Tools, tmp_path: Path) -> Iterator[Stage]:
    supervisor = Supervisor(tmp_path)
    try:
        yield Stage(supervisor, tools, tmp_path)
    finally:
        supervisor.close()


def test_one_short_round_against_direct_and_nginx(stage: Stage) -> None:
    upstream = start_upstream(stage)
    direct = Direct("direct", "baseline")
    nginx = NginxProxy("nginx", "reference")
    for target in (direct, nginx):
        target.start(stage)
    assert direct.port == stage.upstream_port != nginx.port
    nginx_pids = process_tree(nginx.children[0].pid)
    assert len(nginx_pids) == 2, "nginx runs as master + one worker"

    wrk = Wrk.prepare(stage.tools.wrk, stage.workdir)
    samples = [measure(target, wrk, connections=1, seconds=1, round_no=0) for target in (direct, nginx)]
    for sample in samples:
        assert sample.load.requests > 100, sample
        assert sample.load.errors == 0 and sample.load.non_2xx == 0, sample
        assert 0 < sample.load.p50_us <= sample.load.p99_us, sample
    direct_sample, nginx_sample = samples
    assert direct_sample.cpu_seconds is None and direct_sample.rss_bytes is None
    assert nginx_sample.cpu_seconds is not None and nginx_sample.cpu_seconds > 0
    assert nginx_sample.rss_bytes is not None and 1024 * 1024 < nginx_sample.rss_bytes < 512 * 1024 * 1024

    summary = report.summarize(samples)
    assert summary["direct"][1]["added_p50_us"] == 0
    assert summary["nginx"][1]["added_p50_us"] == nginx_sample.load.p50_us - direct_sample.load.p50_us
    verdicts = report.checks(summary, [direct, nginx])
    assert [check.passed for check in verdicts] == [None] * 4, "no meshkit target: every check is n/a"

    stage.supervisor.close()
    for pid in [upstream.pid, *nginx_pids]:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} survived the supervisor"


@pytest.mark.skipif(importlib.util.find_spec("meshkit.proxy.__main__") is None,
                    reason="python -m meshkit.proxy (PROXY-CORE) is not there yet")
def test_one_short_round_through_the_meshkit_targets(stage: Stage) -> None:
    start_upstream(stage)
    single = MeshkitSidecar("meshkit", "one sidecar")
    mesh = MeshkitMesh("meshkit-mesh", "two sidecars")
    for target in (single, mesh):
        target.start(stage)  # includes a GET through the target that must return the upstream's body
    assert len(single.proxy_roots) == 1 and len(mesh.proxy_roots) == 2

    wrk = Wrk.prepare(stage.tools.wrk, stage.workdir)
    for target in (single, mesh):
        sample = measure(target, wrk, connections=1, seconds=1, round_no=0)
        assert sample.load.requests > 50, sample
        assert sample.load.errors == 0 and sample.load.non_2xx == 0, sample
        assert sample.cpu_seconds is not None and sample.cpu_seconds > 0
        assert sample.rss_bytes is not None and sample.rss_bytes_per_proxy is not None
        assert 0 < sample.rss_bytes_per_proxy <= sample.rss_bytes
    pids = [root.pid for target in (single, mesh) for root in target.proxy_roots]
    stage.supervisor.close()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"sidecar {pid} survived the supervisor"
