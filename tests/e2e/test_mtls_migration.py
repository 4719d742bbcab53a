"""Istio's "Mutual TLS Migration" task on a real local mesh, with its namespaces foo, bar and legacy.

The task's commands, each as its `meshkit` form (docs/from-istio.md), run by bash as a learner types
them: ``kubectl create ns foo`` -> ``meshkit create namespace foo``; ``kubectl apply -f <(istioctl
kube-inject -f samples/httpbin/httpbin.yaml) -n foo`` -> the same with ``meshkit kube-inject`` and
``meshkit apply``; ``legacy`` gets sleep.yaml without kube-inject, so its client runs without a
sidecar (a namespace with no ``istio-injection=enabled`` label, as in Istio); the curl loop from each
sleep to each httpbin is the task's loop with ``meshkit curl -n FROM --from sleep`` in place of
``kubectl exec ... -c sleep -n FROM -- curl``, with the same ``-s -o /dev/null -w`` output. Then
PeerAuthentication STRICT in ``foo`` and mesh-wide in ``istio-system`` give the documented 200 / 000
(connection reset) outcomes from legacy. Istio's sample YAML is tests/config/istio_samples, unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

LOOP = """
for from in "foo" "bar" "legacy"; do for to in "foo" "bar"; do meshkit curl -n ${from} --from sleep \
"http://httpbin.${to}:8000/ip" -s -o /dev/null -w "sleep.${from} to httpbin.${to}: %{http_code}\\n"; \
done; done
"""
# the same loop with the task's own words after `meshkit exec ... --` (kubectl exec's shape)
EXEC_LOOP = """
for from in "foo" "bar" "legacy"; do for to in "foo" "bar"; do \
meshkit exec deploy/sleep -c sleep -n ${from} -- curl -s "http://httpbin.${to}:8000/ip" -s -o /dev/null \
-w "sleep.${from} to httpbin.${to}: %{http_code}\\n"; done; done
"""
ALL_200 = [f"sleep.{a} to httpbin.{b}: 200" for a in ("foo", "bar", "legacy") for b in ("foo", "bar")]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("mtls-migration"), ["none"], spare=6) as running:
        yield running


def bash(mesh: RunningMesh, script: str) -> tuple[int, str, str]:
    """Run ``script`` in bash with ``meshkit`` as this test's CLI (same MESHKIT_HOME and ports)."""
    prelude = f'meshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\ncd "{SAMPLES}"\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def test_mutual_tls_migration(mesh: RunningMesh) -> None:
    code, out, err = bash(mesh, """
set -e
meshkit create namespace foo
meshkit apply -f <(meshkit kube-inject -f httpbin.yaml) -n foo
meshkit apply -f <(meshkit kube-inject -f sleep.yaml) -n foo
meshkit create namespace bar
meshkit apply -f <(meshkit kube-inject -f httpbin.yaml) -n bar
meshkit apply -f <(meshkit kube-inject -f sleep.yaml) -n bar
meshkit create namespace legacy
meshkit apply -f sleep.yaml -n legacy
""")
    assert code == 0, out + err
    assert "Deployment/foo/httpbin created" in out and "Deployment/bar/httpbin created" in out
    rows = {w["name"]: w for w in mesh.status["workloads"]}
    assert sorted(rows) == ["httpbin-0.bar", "httpbin-0.foo", "sleep-0.bar", "sleep-0.foo", "sleep-0.legacy"]
    assert rows["sleep-0.legacy"]["outbound_proxy"] is None  # no sidecar in legacy
    assert all(rows[name]["outbound_proxy"] for name in rows if not name.endswith(".legacy"))
    code, out, _ = bash(mesh, "meshkit get pods -n foo; meshkit get pods -n legacy")
    table = [line.split()[:3] for line in out.splitlines()]
    assert ["httpbin-0", "2/2", "Running"] in table and ["sleep-0", "1/1", "Running"] in table
    endpoints = mesh.client.request("GET", "registry/endpoints")["endpoints"]
    httpbins = sorted((e["namespace"], e["instance"], e["service_account"]) for e in endpoints
                      if e["service"] == "httpbin")
    assert httpbins == [("bar", "httpbin-0", "httpbin"), ("foo", "httpbin-0", "httpbin")]
    mesh.wait_synced()

    code, out, err = bash(mesh, LOOP)
    assert out.splitlines() == ALL_200, err

    # the calls carried the real namespaces: mTLS identities, Istio's metric labels
    with urllib.request.urlopen(f"http://127.0.0.1:{rows['httpbin-0.bar']['admin_port']}/stats/prometheus",
                                timeout=10) as answer:
        metrics = answer.read().decode()
    from_foo = [line for line in metrics.splitlines()
                if line.startswith("istio_requests_total{") and 'source_workload_namespace="foo"' in line]
    assert from_foo, metrics[:2000]
    assert 'reporter="destination"' in from_foo[0] and 'destination_workload_namespace="bar"' in from_foo[0]
    assert 'source_principal="spiffe://cluster.local/ns/foo/sa/sleep"' in from_foo[0]
    assert 'destination_principal="spiffe://cluster.local/ns/bar/sa/httpbin"' in from_foo[0]
    assert 'connection_security_policy="mutual_tls"' in from_foo[0]
    assert 'destination_service="httpbin.bar.svc.cluster.local"' in from_foo[0]

    # Lock down to mutual TLS by namespace: legacy's plaintext to foo is reset, everything else is 200
    code, out, err = bash(mesh, """meshkit apply -n foo -f - <<EOF
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: "default"
spec:
  mtls:
    mode: STRICT
EOF
""")
    assert code == 0 and "PeerAuthentication/foo/default created" in out, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, LOOP)
    expected = [line.replace("legacy to httpbin.foo: 200", "legacy to httpbin.foo: 000") for line in ALL_200]
    assert out.splitlines() == expected, err
    code, out, err = bash(mesh, EXEC_LOOP)
    assert out.splitlines() == expected, err

    # Lock down mutual TLS for the entire mesh (istio-system is the root namespace)
    code, out, err = bash(mesh, """meshkit apply -n istio-system -f - <<EOF
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: "default"
spec:
  mtls:
    mode: STRICT
EOF
""")
    assert code == 0, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, LOOP)
    assert out.splitlines() == [line.replace(": 200", ": 000") if "legacy to" in line else line
                                for line in ALL_200], err

    # Clean up as the task does: back to PERMISSIVE everywhere, legacy reaches both again
    code, out, err = bash(mesh, "meshkit delete peerauthentication -n foo default\n"
                                "meshkit delete peerauthentication -n istio-system default\n")
    assert code == 0, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, LOOP)
    assert out.splitlines() == ALL_200, err

    # deleting foo's httpbin stops it and removes foo's Service from the registry, bar's stays
    code, out, err = bash(mesh, "meshkit delete -f <(meshkit kube-inject -f httpbin.yaml) -n foo")
    assert code == 0 and "pod/httpbin-0.foo removed" in out, out + err
    assert "httpbin-0.foo" not in {w["name"] for w in mesh.status["workloads"]}
    services = mesh.client.request("GET", "registry/services")["services"]
    assert sorted((s["namespace"], s["name"]) for s in services
                  if s["name"] == "httpbin") == [("bar", "httpbin")]

    # the task's last clean-up, `kubectl delete ns foo bar legacy`: a namespace goes with what it holds
    code, out, err = bash(mesh, "meshkit delete ns foo bar legacy")
    assert code == 0, out + err
    for gone in ("Namespace/default/foo deleted", "Namespace/default/legacy deleted",
                 "Deployment/bar/httpbin deleted", "Service/bar/httpbin deleted",
                 "pod/sleep-0.legacy removed"):
        assert gone in out, out + err
    namespaces = ("foo", "bar", "legacy")
    assert [w["name"] for w in mesh.status["workloads"] if w.get("namespace") in namespaces] == []
    services = mesh.client.request("GET", "registry/services")["services"]
    assert [s for s in services if s["namespace"] in ("foo", "bar", "legacy")] == []
    assert [i["ref"] for i in mesh.client.request("GET", "config")["items"]
            if i["ref"].split("/")[1] in ("foo", "bar", "legacy")] == []


CURL = ('meshkit curl -n foo --from curl {url} {extra} -sS -o /dev/null -w "%{{http_code}}\\n"')
DENY_GET = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""


def test_explicit_deny_in_namespace_foo(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Istio's "Explicit deny" task: foo labelled for injection, httpbin and curl in it, a DENY policy."""
    with start_mesh(tmp_path_factory.mktemp("explicit-deny"), ["none"], spare=3) as mesh:
        code, out, err = bash(mesh, """
set -e
meshkit create ns foo
meshkit label ns foo istio-injection=enabled
meshkit apply -f httpbin.yaml -n foo
meshkit apply -f curl.yaml -n foo
""")
        assert code == 0 and "namespace/foo labeled" in out, out + err
        assert mesh.workload("curl-0.foo")["outbound_proxy"]
        assert mesh.workload("httpbin-0.foo")["outbound_proxy"]
        mesh.wait_synced()
        code, out, err = bash(mesh, CURL.format(url="http://httpbin.foo:8000/ip", extra=""))
        assert out.splitlines() == ["200"], err

        code, out, err = bash(mesh, f"meshkit apply -f - <<EOF\n{DENY_GET}EOF\n")
        assert code == 0, out + err
        mesh.wait_synced()
        code, out, err = bash(mesh, "\n".join([
            CURL.format(url='"http://httpbin.foo:8000/get"', extra="-X GET"),
            CURL.format(url='"http://httpbin.foo:8000/post"', extra="-X POST"),
        ]))
        assert out.splitlines() == ["403", "200"], err

        with_token = DENY_GET + '    when:\n    - key: request.headers[x-token]\n      notValues: ["admin"]\n'
        code, out, err = bash(mesh, f"meshkit apply -f - <<EOF\n{with_token}EOF\n")
        assert code == 0, out + err
        mesh.wait_synced()
        code, out, err = bash(mesh, "\n".join([
            CURL.format(url="http://httpbin.foo:8000/get", extra='-X GET -H "x-token: admin"'),
            CURL.format(url="http://httpbin.foo:8000/get", extra='-X GET -H "x-token: guest"'),
        ]))
        assert out.splitlines() == ["200", "403"], err

        code, out, err = bash(mesh, "meshkit scale httpbin.foo=2 && meshkit get pods -n foo")
        assert code == 0 and "httpbin.foo scaled to 2" in out, out + err
        assert [line.split()[:2] for line in out.splitlines() if line.startswith("httpbin-")] == [
            ["httpbin-0", "2/2"], ["httpbin-1", "2/2"]]
        admin = CURL.format(url="http://httpbin.foo:8000/get", extra='-H "x-token: admin"')
        code, out, err = bash(mesh, admin)
        assert out.splitlines() == ["200"], err
