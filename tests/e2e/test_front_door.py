"""Istio's front door on a real local mesh: its sample manifests applied unchanged with the `meshkit` CLI.

A mesh started with no apps (`meshkit up --app none`, like `istioctl install`) gets Istio's
``bookinfo.yaml`` (Services, ServiceAccounts, Deployments): the Deployments run as instances with
their sidecars; ``bookinfo-gateway.yaml`` makes ``/productpage`` answer through the ingress gateway,
which serves nothing else (an internal service's Host gets 404 ``NR``); re-applying with other
replicas scales; deleting the files stops what they started. Bad input gets a named error and
changes nothing; a file mixing Kubernetes objects and Istio rules is analyzed as one change.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.runtime.processes import ProcessRecord
from tests.e2e.cli import meshkit
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh
from tests.waiting import wait_until

BOOKINFO = SAMPLES / "bookinfo.yaml"
GATEWAY = SAMPLES / "bookinfo-gateway.yaml"
BOOKINFO_PODS = ["productpage-v1-0", "details-v1-0", "reviews-v1-0", "reviews-v2-0", "reviews-v3-0",
                 "ratings-v1-0"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("front-door"), ["none"], spare=12) as running:
        yield running


def run(mesh: RunningMesh, *args: str) -> tuple[int, str, str]:
    done = meshkit(mesh.home, mesh.base, *args)
    return done.returncode, done.stdout, done.stderr


def ingress(mesh: RunningMesh, path: str, host: str | None = None) -> int:
    request = urllib.request.Request(f"{mesh.ingress}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def pods(mesh: RunningMesh) -> list[str]:
    return [w["name"] for w in mesh.status["workloads"]]


def written(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def test_bookinfo_manifests_then_its_gateway_from_a_mesh_with_no_apps(mesh: RunningMesh) -> None:
    assert pods(mesh) == []
    code, out, err = run(mesh, "apply", "-f", str(BOOKINFO))
    assert code == 0, err
    assert "Deployment/default/reviews-v2 created" in out and "pod/reviews-v2-0 started" in out
    assert pods(mesh) == BOOKINFO_PODS
    code, out, _ = run(mesh, "get", "pods")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert sorted(rows) == sorted(BOOKINFO_PODS)
    assert all(cells[:2] == ["2/2", "Running"] for cells in rows.values())
    code, out, _ = run(mesh, "get", "deployments")
    assert code == 0 and any(line.split()[:2] == ["reviews-v3", "1/1"] for line in out.splitlines())
    endpoints = mesh.client.request("GET", "registry/endpoints")["endpoints"]
    reviews = next(e for e in endpoints if e["instance"] == "reviews-v2-0")
    assert (reviews["service_account"], reviews["labels"]) == ("bookinfo-reviews",
                                                               {"app": "reviews", "version": "v2"})
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 404  # no Gateway yet: the ingress serves nothing

    code, out, err = run(mesh, "apply", "-f", str(GATEWAY))
    assert code == 0 and "Gateway/default/bookinfo-gateway created" in out, err
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 200
    assert ingress(mesh, "/ratings/0", host="ratings.default.svc.cluster.local:9080") == 404
    log = mesh.home / "logs" / "ingressgateway.access.log"

    def unbound() -> list[dict[str, object]]:  # the sidecar writes its access log off the request path
        return [json.loads(line) for line in log.read_text().splitlines()
                if "ratings.default.svc.cluster.local" in line]

    logged = wait_until(unbound, 10, "the ingress's access-log line for the unbound host")
    assert (logged[-1]["status"], logged[-1]["response_flags"]) == (404, "NR")

    code, out, err = run(mesh, "delete", "-f", str(GATEWAY))
    assert code == 0, err
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 404  # as on Istio: deleting the Gateway closes the door
    code, _, err = run(mesh, "apply", "-f", str(GATEWAY))
    assert code == 0, err
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 200


def test_re_apply_with_other_replicas_scales(mesh: RunningMesh, tmp_path: Path) -> None:
    text = BOOKINFO.read_text()
    head, sep, tail = text.partition("  name: reviews-v1\n")
    two = written(tmp_path, "bookinfo-2.yaml", head + sep + tail.replace("replicas: 1", "replicas: 2", 1))
    code, out, err = run(mesh, "apply", "-f", two)
    assert code == 0, err
    assert "Deployment/default/reviews-v1 configured" in out and "pod/reviews-v1-1 started" in out
    assert "reviews-v1-1" in pods(mesh)
    extra = mesh.mesh.record().processes["reviews-v1-1"]  # type: ignore[union-attr]
    code, out, err = run(mesh, "apply", "-f", str(BOOKINFO))
    assert code == 0 and "pod/reviews-v1-1 removed" in out, err
    assert pods(mesh) == BOOKINFO_PODS
    assert not ProcessRecord.alive(extra)
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 200


def test_bad_input_gets_a_named_error_and_changes_nothing(mesh: RunningMesh, tmp_path: Path) -> None:
    revision = mesh.client.history()["revision"]
    before = mesh.pids()
    text = BOOKINFO.read_text()
    unknown = written(tmp_path, "unknown.yaml", text.replace(
        "registry.istio.io/release/examples-bookinfo-ratings-v1:1.20.3", "docker.io/library/redis:7"))
    code, _, err = run(mesh, "apply", "-f", unknown)
    assert code == 1
    assert "MK0301" in err and "Deployment/default/ratings-v1 spec.template.spec.containers[0].image" in err
    assert "examples-bookinfo" in err  # the images that are known
    httpbin = (SAMPLES / "httpbin.yaml").read_text()
    unlabelled = written(tmp_path, "unlabelled.yaml", httpbin.replace(
        "    metadata:\n      labels:\n        app: httpbin\n        version: v1\n", "    metadata: {}\n"))
    code, _, err = run(mesh, "apply", "-f", unlabelled)
    assert code == 1 and "MK0302" in err and "Deployment/default/httpbin spec.template.metadata.labels" in err
    lonely = written(tmp_path, "lonely.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: lonely}\n"
                                              "spec:\n  selector: {app: nobody}\n  ports: [{port: 80}]\n")
    code, _, err = run(mesh, "apply", "-f", lonely)
    assert code == 1 and "MK0303" in err and "Service/default/lonely spec.selector" in err
    elsewhere = written(tmp_path, "foo.yaml", (SAMPLES / "sleep.yaml").read_text().replace(
        "metadata:\n  name: sleep\n", "metadata:\n  name: sleep\n  namespace: foo\n"))
    code, _, err = run(mesh, "apply", "-n", "bar", "-f", elsewhere)
    assert code == 1 and "does not match the namespace" in err and "--namespace=foo" in err
    assert "ServiceAccount/foo/sleep metadata.namespace" in err
    many = written(tmp_path, "many.yaml", text.replace("replicas: 1", "replicas: 50", 1))
    code, _, err = run(mesh, "apply", "-f", many)
    assert code == 1 and "Deployment/default/details-v1 spec.replicas: 50 is more than" in err
    assert mesh.client.history()["revision"] == revision
    record = mesh.mesh.record()
    assert record is not None and mesh.pids() == before
    assert all(ProcessRecord.alive(p) for p in record.processes.values())
    mesh.wait_synced()
    assert ingress(mesh, "/productpage") == 200


def test_a_mixed_file_is_one_change_whose_bad_subset_is_reported_not_refused(mesh: RunningMesh,
                                                                  tmp_path: Path) -> None:
    route = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin}\n"
             "spec:\n  hosts: [httpbin]\n  http:\n  - route:\n"
             "    - destination: {host: httpbin, subset: v9}\n")
    parts = [(SAMPLES / "httpbin.yaml").read_text(), (SAMPLES / "sleep.yaml").read_text(),
             "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: settings}\n", route]
    mixed = written(tmp_path, "mixed.yaml", "\n---\n".join(parts))
    # as `kubectl apply` on Istio: the file applies as one change, the bad subset is reported (what
    # `istioctl analyze` says) and the HorizontalPodAutoscaler is reported as left out; nothing refuses it
    code, out, err = run(mesh, "apply", "-f", mixed)
    assert code == 0, err
    assert "Error [MK0101] (VirtualService/default/httpbin spec.http[0].route[0].destination.subset" \
        in out + err
    assert "[IST0101]" in out + err and "MK0009" in out + err \
        and "HorizontalPodAutoscaler/default/settings" in out + err
    assert "not a known kind" not in err and "not supported" not in err  # the file's kinds are all fine
    assert "pod/httpbin-0 started" in out and "pod/sleep-0 started" in out
    mesh.wait_synced()
    # ... and until a DestinationRule defines v9, the route fails as Envoy fails it: 503 NC
    code, out, err = run(mesh, "curl", "--from", "sleep-0", "-i", "http://httpbin:8000/headers")
    assert code != 0 and out.startswith("HTTP/1.1 503"), out + err
    assert "no cluster 'httpbin.default|v9'" in out, out

    fixed = written(tmp_path, "fixed.yaml", "\n---\n".join([*parts[:3], route.replace(", subset: v9", "")]))
    code, out, err = run(mesh, "apply", "-f", fixed)
    assert code == 0, err
    assert "MK0101" not in out + err
    mesh.wait_synced()
    code, out, err = run(mesh, "curl", "--from", "sleep-0", "http://httpbin:8000/headers")
    assert code == 0, err
    code, out, err = run(mesh, "curl", "--from", "sleep-0", "http://productpage:9080/productpage")
    assert code == 0 and "Book Details" in out, err
    gone = [mesh.mesh.record().processes[n] for n in ("sleep-0", "httpbin-0")]  # type: ignore[union-attr]
    code, out, err = run(mesh, "delete", "-f", fixed)
    assert code == 0 and "pod/sleep-0 removed" in out and "pod/httpbin-0 removed" in out, err
    assert not any(ProcessRecord.alive(p) for p in gone)


def test_deleting_bookinfo_yaml_stops_its_pods(mesh: RunningMesh) -> None:
    running = [mesh.mesh.record().processes[n] for n in BOOKINFO_PODS]  # type: ignore[union-attr]
    code, out, err = run(mesh, "delete", "-f", str(BOOKINFO))
    assert code == 0 and "Deployment/default/productpage-v1 deleted" in out, err
    assert pods(mesh) == []
    deadline = time.monotonic() + 10
    while any(ProcessRecord.alive(p) for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(ProcessRecord.alive(p) for p in running)
    code, _, err = run(mesh, "get", "pods")
    assert code == 0 and "No resources found in default namespace." in err
    code, out, _ = run(mesh, "get", "pods", "-n", "istio-system")
    assert "istio-ingressgateway-0" in out and "1/1" in out


def test_up_again_runs_the_deployments_the_store_kept(mesh: RunningMesh) -> None:
    code, out, err = run(mesh, "apply", "-f", str(SAMPLES / "sleep.yaml"))
    assert code == 0 and "pod/sleep-0 started" in out, err
    mesh.mesh.down()
    status = mesh.mesh.up(["none"], base_port=mesh.base, timeout=60.0)
    assert [w["name"] for w in status["workloads"]] == ["sleep-0"]  # the config persists, as a cluster's
    code, out, _ = run(mesh, "get", "pods")
    assert any(line.split()[:3] == ["sleep-0", "2/2", "Running"] for line in out.splitlines())
    code, out, err = run(mesh, "curl", "--from", "sleep-0", "http://sleep:80/healthz")
    assert code == 0, err


def test_create_namespace_and_list_it(mesh: RunningMesh) -> None:
    code, out, err = run(mesh, "create", "namespace", "foo")
    assert code == 0 and "namespace/foo created" in out, err
    code, _, err = run(mesh, "create", "namespace", "foo")
    assert code == 1 and 'namespaces "foo" already exists' in err
    code, out, _ = run(mesh, "get", "namespaces")
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["foo", "Active"]]
    code, out, err = run(mesh, "delete", "ns", "foo")
    assert code == 0 and "Namespace/default/foo deleted" in out, err
