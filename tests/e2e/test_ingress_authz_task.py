"""Istio's "Ingress Gateway" authorization task (security/authorization/authz-ingress) on a real local
mesh: httpbin in ``foo`` behind ``httpbin-gateway.yaml``, then IP-based allow and deny lists on the
ingress gateway, applied as the task's heredocs in ``istio-system``.

On the local mesh the client reaches the ingress straight from 127.0.0.1 (the task's "no load
balancer" case), so ``ipBlocks`` see 127.0.0.1; ``remoteIpBlocks`` see the original client taken from
``X-Forwarded-For`` once the mesh config trusts proxies in front of the gateway
(``defaultConfig.gatewayTopology.numTrustedProxies``), as for a gateway behind an HTTP load balancer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from meshkit.config.meshconfig import mesh_config_map
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.test_authorization_tasks import ACCESS_DENIED, apply, bash


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("authz-ingress"), ["none"], spare=4) as running:
        yield running


def curl(mesh: RunningMesh, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """``curl "$INGRESS_HOST:$INGRESS_PORT"/PATH -s``: status and body."""
    request = urllib.request.Request(f"{mesh.status['ingress']}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def policy(action: str, field: str, blocks: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: {action}
  rules:
  - from:
    - source:
        {field}: [{blocks}]
"""


def test_ip_based_allow_and_deny_lists_at_the_ingress(mesh: RunningMesh) -> None:
    code, out, err = bash(mesh, """set -e
meshkit create namespace foo
meshkit label namespace foo istio-injection=enabled
meshkit apply -f httpbin.yaml -n foo
meshkit apply -f httpbin-gateway.yaml -n foo
""")
    assert code == 0, out + err
    mesh.wait_synced()
    assert curl(mesh, "/headers")[0] == 200
    # CLIENT_IP=$(curl "$INGRESS_HOST":"$INGRESS_PORT"/ip -s | grep "origin" | cut -d'"' -f 4)
    client_ip = json.loads(curl(mesh, "/ip")[1])["origin"]
    assert client_ip == "127.0.0.1"

    apply(mesh, policy("ALLOW", "ipBlocks", '"1.2.3.4", "5.6.7.0/24"'))
    assert curl(mesh, "/headers") == (403, ACCESS_DENIED)
    apply(mesh, policy("ALLOW", "ipBlocks", f'"1.2.3.4", "5.6.7.0/24", "{client_ip}"'))
    assert curl(mesh, "/headers")[0] == 200
    apply(mesh, policy("DENY", "ipBlocks", f'"{client_ip}"'))
    assert curl(mesh, "/headers") == (403, ACCESS_DENIED)


def test_remote_ip_blocks_trust_x_forwarded_for_as_far_as_the_mesh_config_says(mesh: RunningMesh) -> None:
    """Behind an HTTP load balancer the client's address arrives in X-Forwarded-For: ``remoteIpBlocks``
    judge it once ``numTrustedProxies`` says how many hops to trust; with none trusted a client cannot
    pick its own address by sending the header."""
    behind_lb = {"X-Forwarded-For": "5.6.7.8"}
    apply(mesh, policy("ALLOW", "remoteIpBlocks", '"5.6.7.0/24"'))
    assert curl(mesh, "/headers", behind_lb) == (403, ACCESS_DENIED)  # 0 trusted: remote.ip is 127.0.0.1
    trust_one = {"defaultConfig": {"gatewayTopology": {"numTrustedProxies": 1}}}
    apply(mesh, yaml.safe_dump(mesh_config_map(trust_one)))
    assert curl(mesh, "/headers", behind_lb)[0] == 200  # the load balancer's entry: 5.6.7.8
    assert curl(mesh, "/headers", {"X-Forwarded-For": "5.6.7.8, 9.9.9.9"}) == (403, ACCESS_DENIED)
    assert curl(mesh, "/headers") == (403, ACCESS_DENIED)  # no header: the connection's address
    apply(mesh, policy("DENY", "remoteIpBlocks", '"5.6.7.8"'))
    assert curl(mesh, "/headers", behind_lb) == (403, ACCESS_DENIED)
    assert curl(mesh, "/headers")[0] == 200
