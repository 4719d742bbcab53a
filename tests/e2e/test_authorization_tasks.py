"""Istio's "Authorization" tasks "HTTP Traffic" and "JWT Token" on a real local mesh, verbatim.

From a mesh with no apps (``meshkit up --app none``), Bookinfo is ``bookinfo.yaml`` +
``bookinfo-gateway.yaml`` (tests/config/istio_samples, unchanged). The HTTP Traffic task's five
policies are applied one by one as the task's heredocs (``meshkit apply -f - <<EOF``); where the task
looks at the page in a browser, the test reads ``/productpage`` through the ingress gateway and also
runs the getting-started's in-mesh check (``kubectl exec ... -c ratings -- curl -sS
productpage:9080/productpage``) as ``meshkit exec`` with the same words after ``--``.

The JWT Token and Dry Run tasks run in namespace ``foo`` (httpbin.yaml and curl.yaml ``-n foo``), with the
task's RequestAuthentication (its ``jwksUri`` on raw.githubusercontent.com, served from the copy of
Istio's sample JWKS that meshkit ships, since classrooms are offline) and Istio's demo tokens
(tests/security/istio_jwt, the files the task downloads).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import SAMPLES, RunningMesh, start_mesh

JWT_SAMPLES = Path(__file__).resolve().parents[1] / "security" / "istio_jwt"
ACCESS_DENIED = "RBAC: access denied"
DETAILS_ERROR = "Error fetching product details"
REVIEWS_ERROR = "Error fetching product reviews"
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
PAGE_LOADS = 12  # reloads per check (each reviews version is likely among them, not certain: LEAST_REQUEST)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("authz-tasks"), ["none"], spare=10) as running:
        yield running


def bash(mesh: RunningMesh, script: str) -> tuple[int, str, str]:
    """Run ``script`` in bash with ``meshkit`` as this test's CLI (same MESHKIT_HOME and ports)."""
    prelude = f'meshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\ncd "{SAMPLES}"\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def apply(mesh: RunningMesh, yaml_text: str) -> str:
    code, out, err = bash(mesh, f"meshkit apply -f - <<EOF\n{yaml_text}EOF\n")
    assert code == 0, out + err
    mesh.wait_synced()
    return out


def page(mesh: RunningMesh) -> tuple[int, str]:
    """``http://$GATEWAY_URL/productpage`` as the browser of the task loads it."""
    try:
        with urllib.request.urlopen(f"{mesh.ingress}/productpage", timeout=30) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def pages(mesh: RunningMesh) -> list[tuple[int, str]]:
    return [page(mesh) for _ in range(PAGE_LOADS)]


# inside the mesh, the getting-started's check (kubectl exec "$(kubectl get pod -l app=ratings ...)")
INSIDE = "meshkit exec deploy/ratings-v1 -c ratings -- curl -sS productpage:9080/productpage"


def inside(mesh: RunningMesh) -> str:
    code, out, err = bash(mesh, INSIDE)
    assert code == 0, out + err
    return out


ALLOW_NOTHING = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  {}
"""
PRODUCTPAGE_VIEWER = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "productpage-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""
VIEWER = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "{app}-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-{caller}"]
    to:
    - operation:
        methods: ["GET"]
"""


def test_http_traffic_on_bookinfo(mesh: RunningMesh) -> None:
    code, out, err = bash(mesh, "meshkit apply -f bookinfo.yaml && meshkit apply -f bookinfo-gateway.yaml")
    assert code == 0, out + err
    mesh.wait_synced()
    status, html = page(mesh)
    assert status == 200 and "Book Details" in html, html[:500]

    # allow-nothing in default: the page answers 403 "RBAC: access denied", through the ingress and inside
    apply(mesh, ALLOW_NOTHING)
    assert page(mesh) == (403, ACCESS_DENIED)
    assert inside(mesh) == ACCESS_DENIED

    # productpage-viewer: the page loads, but details and reviews are denied to it
    apply(mesh, PRODUCTPAGE_VIEWER)
    for status, html in pages(mesh):
        assert status == 200 and DETAILS_ERROR in html and REVIEWS_ERROR in html, html[:800]
    html = inside(mesh)
    assert DETAILS_ERROR in html and REVIEWS_ERROR in html

    # details-viewer: details show, reviews still an error
    apply(mesh, VIEWER.format(app="details", caller="productpage"))
    for status, html in pages(mesh):
        assert status == 200 and "Book Details" in html and REVIEWS_ERROR in html, html[:800]
        assert DETAILS_ERROR not in html

    # reviews-viewer: reviews show; v2 and v3 cannot reach ratings ("Ratings service is currently
    # unavailable")
    apply(mesh, VIEWER.format(app="reviews", caller="productpage"))
    versions: set[str] = set()
    # Istio's default balancing (LEAST_REQUEST) picks among equals at random: 12 loads miss one
    # version about 1 time in 40, so load until each has served a page (at most 60 loads)
    for _ in range(60):
        status, html = page(mesh)
        assert status == 200 and "Book Reviews" in html and REVIEWS_ERROR not in html, html[:800]
        version = html.split('data-version="', 1)[1].split('"', 1)[0]
        versions.add(version)
        assert (RATINGS_UNAVAILABLE in html) == (version != "v1"), html
        assert "data-stars" not in html
        if versions == {"v1", "v2", "v3"}:
            break
    assert versions == {"v1", "v2", "v3"}

    # ratings-viewer: black (v2) and red (v3) stars
    apply(mesh, VIEWER.format(app="ratings", caller="reviews"))
    colours: set[str] = set()
    for status, html in pages(mesh):
        assert status == 200 and RATINGS_UNAVAILABLE not in html, html[:800]
        colours |= {part.split('"', 1)[0] for part in html.split('data-color="')[1:]}
    assert colours == {"black", "red"}
    assert "Book Reviews" in inside(mesh)

    # clean up as the task does
    code, out, err = bash(mesh, """
set -e
meshkit delete authorizationpolicy allow-nothing
meshkit delete authorizationpolicy productpage-viewer
meshkit delete authorizationpolicy details-viewer
meshkit delete authorizationpolicy reviews-viewer
meshkit delete authorizationpolicy ratings-viewer
""")
    assert code == 0, out + err
    mesh.wait_synced()
    assert page(mesh)[0] == 200


REQUEST_AUTHENTICATION = """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: "jwt-example"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json"
"""
REQUIRE_JWT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
"""
REQUIRE_GROUP = REQUIRE_JWT + """    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"""
# kubectl exec "$(kubectl get pod -l app=curl -n foo -o jsonpath={.items..metadata.name})" -c curl -n foo \
#   -- curl "http://httpbin.foo:8000/headers" -sS -o /dev/null -H "Authorization: Bearer $TOKEN" \
#   -w "%{http_code}\n"
EXEC = ('meshkit exec deploy/curl -c curl -n foo -- curl "http://httpbin.foo:8000/headers" -sS -o /dev/null '
        '{header} -w "%{{http_code}}\\n"')


@pytest.fixture(scope="module")
def foo(mesh: RunningMesh) -> RunningMesh:
    """The tasks' namespace foo with httpbin and curl, each with its sidecar."""
    code, out, err = bash(mesh, """
set -e
meshkit create ns foo
meshkit apply -f <(meshkit kube-inject -f httpbin.yaml) -n foo
meshkit apply -f <(meshkit kube-inject -f curl.yaml) -n foo
""")
    assert code == 0, out + err
    mesh.wait_synced()
    return mesh


def test_jwt_token_in_namespace_foo(foo: RunningMesh) -> None:
    mesh = foo
    code, out, err = bash(mesh, EXEC.format(header=""))
    assert out.splitlines() == ["200"], out + err

    apply(mesh, REQUEST_AUTHENTICATION)
    invalid = EXEC.format(header='-H "Authorization: Bearer invalidToken"')
    assert bash(mesh, invalid)[1].splitlines() == ["401"]
    assert bash(mesh, EXEC.format(header=""))[1].splitlines() == ["200"]  # no token: allowed

    apply(mesh, REQUIRE_JWT)
    token = f'TOKEN=$(cat "{JWT_SAMPLES / "demo.jwt"}")\n'
    with_token = EXEC.format(header='-H "Authorization: Bearer $TOKEN"')
    code, out, err = bash(mesh, token + with_token)
    assert out.splitlines() == ["200"], out + err
    assert bash(mesh, EXEC.format(header=""))[1].splitlines() == ["403"]

    apply(mesh, REQUIRE_GROUP)
    group = f'TOKEN_GROUP=$(cat "{JWT_SAMPLES / "groups-scope.jwt"}")\n'
    code, out, err = bash(mesh, group + EXEC.format(header='-H "Authorization: Bearer $TOKEN_GROUP"'))
    assert out.splitlines() == ["200"], out + err
    code, out, err = bash(mesh, token + with_token)
    assert out.splitlines() == ["403"], out + err

    code, out, err = bash(mesh, "meshkit delete authorizationpolicy require-jwt -n foo\n"
                                "meshkit delete requestauthentication jwt-example -n foo\n")
    assert code == 0, out + err


DRY_RUN_DENY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""
DRY_RUN_LOOP = ('for i in {1..5}; do meshkit exec deploy/curl -c curl -n foo -- '
                'curl http://httpbin.foo:8000/headers -H "X-B3-Sampled: 1" -s -o /dev/null '
                '-w "%{http_code}\\n"; done')


def test_dry_run_in_namespace_foo(foo: RunningMesh) -> None:
    """Istio's "Dry Run" task: the annotated DENY policy is not enforced; the sidecar logs the result."""
    mesh = foo
    code, out, err = bash(mesh, f"meshkit apply -n foo -f - <<EOF\n{DRY_RUN_DENY}EOF\n")
    assert code == 0 and "AuthorizationPolicy/foo/deny-path-headers created" in out, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, DRY_RUN_LOOP)
    assert out.splitlines() == ["200"] * 5, out + err
    # kubectl logs "$(kubectl -n foo -l app=httpbin get pods ...)" -c istio-proxy -n foo \
    #   | grep "shadow denied"
    code, out, err = bash(mesh, 'meshkit logs httpbin-0.foo --sidecar --tail 0 | grep "shadow denied"')
    shadow = [line for line in out.splitlines()
              if line.endswith("shadow denied, matched policy ns[foo]-policy[deny-path-headers]-rule[0]")]
    assert len(shadow) == 5, out + err

    # without the annotation the same policy is enforced: 403
    enforced = DRY_RUN_DENY.replace('  annotations:\n    "istio.io/dry-run": "true"\n', "")
    code, out, err = bash(mesh, f"meshkit apply -n foo -f - <<EOF\n{enforced}EOF\n")
    assert code == 0 and "configured" in out, out + err
    mesh.wait_synced()
    code, out, err = bash(mesh, DRY_RUN_LOOP.replace("{1..5}", "{1..2}"))
    assert out.splitlines() == ["403"] * 2, out + err
    code, out, err = bash(mesh, "meshkit delete authorizationpolicy deny-path-headers -n foo")
    assert code == 0, out + err
