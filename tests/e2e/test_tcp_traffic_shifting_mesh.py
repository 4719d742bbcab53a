"""Istio's "TCP Traffic Shifting" task inside the mesh, on the real local mesh: the task's YAML with its
Gateway removed (the VirtualService for ``mesh``, ``hosts: [tcp-echo]``), the connections made by the
curl pod's own ``nc``, which reaches its sidecar as a ``CONNECT tcp-echo:9000`` tunnel (Istio's
iptables capture): the sidecar picks v1/v2 by the ``tcp`` route's weights and carries each connection
over mutual TLS to the chosen tcp-echo's sidecar. Replies are counted by version (``one``/``two``, the
samples' prefixes); the 80/20 split is judged by an exact binomial test. The curl sidecar's access log
shows Envoy's TCP line with ``outbound|9000|v1|tcp-echo.NS.svc.cluster.local`` and its metrics Istio's
TCP series. A port the Service does not declare (9002) goes to ``PassthroughCluster``, plain HTTP to it
too (as TCP: no HTTP listener of the sidecar takes it), and to ``BlackHoleCluster`` under REGISTRY_ONLY.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.config.meshconfig import mesh_config_map
from tests.e2e import cli
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh
from tests.e2e.traffic import assert_share

NS = "tcp-mesh"
FQDN = f"tcp-echo.{NS}.svc.cluster.local"
DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d UTC \d{4}"
PER_EXEC = 8  # connections per `meshkit exec` (the shell reader runs at most 32 commands)
# execs at once: each connection lasts ~1 s (a half-close over mutual TLS ends after the upstream's
# 1 s of silence, docs/from-istio.md), so the connections of a step are spread over several shells
EXECS_AT_ONCE = 8


def without_gateway(text: str) -> str:
    """The task's file for ``mesh``: no Gateway, the VirtualService bound to nothing (``mesh``) with
    the service as its host and the Service port as its match, as Istio's in-mesh variant writes it."""
    documents = [d for d in text.split("\n---") if "kind: Gateway" not in d]
    text = "\n---".join(documents)
    text = text.replace('  hosts:\n  - "*"\n  gateways:\n  - tcp-echo-gateway\n', "  hosts:\n  - tcp-echo\n")
    assert "gateways" not in text and "31400" in text, text
    return text.replace("port: 31400", "port: 9000")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("tcpmesh"), ["none"], spare=3) as running:
        yield running


def in_curl(mesh: RunningMesh, script: str) -> list[str]:
    """``kubectl exec deploy/curl -c curl -n NS -- sh -c SCRIPT``: the lines printed."""
    return mesh.ok("exec", "deploy/curl", "-c", "curl", "-n", NS, "--", "sh", "-c", script).splitlines()


def versions(mesh: RunningMesh, connections: int) -> list[str]:
    """``echo N | nc tcp-echo 9000`` ``connections`` times from curl (a few execs at once, as several
    shells in the pod would): the prefix of each reply."""
    def batch(count: int) -> list[str]:
        lines = in_curl(mesh, "; ".join(f"echo {i} | nc tcp-echo 9000" for i in range(count)))
        assert [line.split(" ", 1)[1] for line in lines] == [str(i) for i in range(count)], lines
        return [line.split(" ", 1)[0] for line in lines]

    sizes = [min(PER_EXEC, connections - start) for start in range(0, connections, PER_EXEC)]
    with ThreadPoolExecutor(max_workers=EXECS_AT_ONCE) as pool:
        return [prefix for found in pool.map(batch, sizes) for prefix in found]


def tcp_opened(admin: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "istio_tcp_connections_opened":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("reporter") == "source":
                    key = (s.labels["destination_service"], s.labels["response_flags"])
                    found[key] = found.get(key, 0) + s.value
    return found


def test_the_curl_pods_own_tcp_shifts_from_v1_to_80_20_through_its_sidecar(mesh: RunningMesh) -> None:
    mesh.ok("create", "namespace", NS)
    mesh.ok("label", "namespace", NS, "istio-injection=enabled")
    mesh.ok("apply", "-f", str(SAMPLES / "curl.yaml"), "-n", NS)
    mesh.ok("apply", "-f", str(SAMPLES / "tcp-echo-services.yaml"), "-n", NS)
    pods = mesh.ok("get", "pods", "-n", NS)
    ready = {line.split()[0]: line.split()[1] for line in pods.splitlines()[1:] if line.strip()}
    assert sorted(ready.values()) == ["2/2"] * 3, pods  # curl and both tcp-echo with their sidecars
    [curl] = [name for name in ready if name.startswith("curl")]

    # no VirtualService yet: the Service's own cluster, both versions answer in turn
    assert set(versions(mesh, 12)) <= {"one", "two"}
    # a port the Service does not declare (9000 and 9001 only; the sample's server listens on 9002 too):
    # no listener of Istio's sidecar takes it, so PassthroughCluster carries it to the original destination
    [line] = in_curl(mesh, "echo 9002 | nc tcp-echo 9002")
    assert line in ("one 9002", "two 9002"), line
    all_v1 = without_gateway((SAMPLES / "tcp-echo-all-v1.yaml").read_text())
    path = mesh.home / "tcp-echo-all-v1-mesh.yaml"
    path.write_text(all_v1)
    mesh.ok("apply", "-f", str(path), "-n", NS)
    # the task's loop, from curl to the service: every connection is v1's
    for _ in range(3):
        [line] = in_curl(mesh, "(date; sleep 1) | nc tcp-echo 9000")
        assert re.fullmatch(rf"one {DATE}", line), line
    assert set(versions(mesh, 15)) == {"one"}

    path = mesh.home / "tcp-echo-20-v2-mesh.yaml"
    path.write_text(without_gateway((SAMPLES / "tcp-echo-20-v2.yaml").read_text()))
    mesh.ok("apply", "-f", str(path), "-n", NS)
    shown = mesh.ok("get", "virtualservice", "tcp-echo", "-o", "yaml", "-n", NS)
    assert "weight: 80" in shown and "weight: 20" in shown and "gateways" not in shown, shown
    replies = versions(mesh, 120)
    assert set(replies) == {"one", "two"}, replies
    assert_share(replies.count("two"), len(replies), 0.2, "tcp-echo v2 from curl after the 80/20 route")

    # Envoy's TCP line in curl's sidecar log, Istio's TCP metrics on its admin port
    # `kubectl logs -l app=curl -c istio-proxy -n NS`
    log = [json.loads(line) for line in mesh.ok("logs", "-l", "app=curl", "-c", "istio-proxy", "--tail", "0")
           .splitlines() if line.strip().startswith("{")]
    clusters = {e["upstream_cluster"] for e in log if e.get("method") is None}
    assert {f"outbound|9000|v1|{FQDN}", f"outbound|9000|v2|{FQDN}"} <= clusters, clusters
    line = next(e for e in log if e.get("upstream_cluster") == f"outbound|9000|v2|{FQDN}")
    assert (line["status"], line["response_flags"], line["requested_server_name"]) == (0, "-", None), line
    assert line["bytes_received"] > 0 and line["bytes_sent"] > 0, line
    [row] = [w for w in mesh.status["workloads"] if w["name"].split(".")[0] == curl]
    opened = tcp_opened(row["admin_port"])
    assert opened.get((FQDN, "-"), 0) >= 12 + 3 + 15 + 120, opened
    passthrough = [e for e in log if e.get("upstream_cluster") == "PassthroughCluster"]
    assert [(e["status"], e["response_flags"]) for e in passthrough] == [(0, "-")], passthrough
    assert passthrough[0]["bytes_sent"] > 0, passthrough
    assert opened.get(("unknown", "-"), 0) == 1, opened  # Istio: destination_service "unknown"


def curl_log(mesh: RunningMesh) -> list[dict[str, object]]:
    """`kubectl logs -l app=curl -c istio-proxy -n NS`: the curl sidecar's JSON access-log lines."""
    text = mesh.ok("logs", "-l", "app=curl", "-c", "istio-proxy", "--tail", "0")
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def http_requests(admin: int, cluster: str) -> float:
    """curl's sidecar's ``istio_requests_total`` (HTTP) to ``destination_service_name`` ``cluster``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=10) as answer:
        text = answer.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) if family.name == "istio_requests"
               for s in family.samples if s.name.endswith("_total")
               and s.labels.get("destination_service_name") == cluster)


def test_plain_http_to_a_port_the_service_does_not_declare_goes_as_tcp(mesh: RunningMesh) -> None:
    """`curl http://tcp-echo:9002/` from the curl pod: Istio's sidecar has no HTTP listener on 9002, so
    its virtual outbound listener's passthrough chain carries the connection as TCP: PassthroughCluster
    under ALLOW_ANY (tcp-echo's server reads curl's request line and echoes it: not HTTP, curl's exit 1),
    BlackHoleCluster with UH under REGISTRY_ONLY (closed, nothing answered); no HTTP metric either way."""
    pods = mesh.ok("get", "pods", "-n", NS)  # the first test of this module deployed curl and tcp-echo
    assert sum(line.startswith("curl") for line in pods.splitlines()) == 1, pods
    [row] = [w for w in mesh.status["workloads"] if w["name"].split(".")[0].startswith("curl")]
    seen = len(curl_log(mesh))
    done = cli.meshkit(mesh.home, mesh.base, "exec", "deploy/curl", "-c", "curl", "-n", NS, "--",
                       "curl", "-sS", "http://tcp-echo:9002/")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "curl: (1) Received HTTP/0.9 when not allowed" in done.stdout + done.stderr, done
    [line] = [e for e in curl_log(mesh)[seen:] if e.get("upstream_cluster") == "PassthroughCluster"]
    assert (line["method"], line["status"], line["response_flags"]) == (None, 0, "-"), line
    # curl's request went out, and tcp-echo answered
    assert int(str(line["bytes_sent"])) > 0 and int(str(line["bytes_received"])) > 0, line
    assert http_requests(row["admin_port"], "PassthroughCluster") == 0

    registry_only = mesh_config_map({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    with mesh.rules(registry_only):
        seen = len(curl_log(mesh))
        done = cli.meshkit(mesh.home, mesh.base, "exec", "deploy/curl", "-c", "curl", "-n", NS, "--",
                           "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "http://tcp-echo:9002/")
        assert done.returncode != 0 and done.stdout == "000\n", done  # no answer at all
        [line] = [e for e in curl_log(mesh)[seen:] if e.get("upstream_cluster") == "BlackHoleCluster"]
        assert (line["response_flags"], line["upstream_host"]) == ("UH", None), line
        assert line["bytes_received"] == 0, line
    assert http_requests(row["admin_port"], "BlackHoleCluster") == 0
    opened = tcp_opened(row["admin_port"])
    assert opened.get(("unknown", "UH"), 0) >= 1, opened  # Istio: BlackHoleCluster, destination "unknown"
