"""Istio's "Ingress Gateway" authorization task (security/authorization/authz-ingress) on a real local
mesh: httpbin in ``foo`` behind ``httpbin-gateway.yaml``, then IP-based allow and deny lists on the
ingress gateway, applied as the task's heredocs in ``istio-system``.

On the local mesh the client reaches the ingress straight from 127.0.0.1 (the task's "no load
balancer" case), so ``ipBlocks`` see 127.0.0.1; ``remoteIpBlocks`` see the original client taken from
``X-Forwarded-For`` once the mesh config trusts proxies in front of the gateway
(``defaultConfig.gatewayTopology.numTrustedProxies``), as for a gateway behind an HTTP load balancer.
Behind a TCP proxy load balancer (the task's PROXY protocol section, ``gatewayTopology.proxyProtocol``)
the load balancer's part is played by curl's ``--haproxy-protocol`` and by a v2 header sent by the
test; the gateway's pod annotation ``proxy.istio.io/config`` sets the same topology for it alone.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import urllib.error
import urllib.parse
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


def _v2_request(mesh: RunningMesh, client: str, path: str = "/headers") -> int:
    """What a load balancer sending PROXY protocol v2 (AWS NLB's) forwards for ``client``: status."""
    host, port = urllib.parse.urlsplit(mesh.status["ingress"]).netloc.split(":")
    body = (socket.inet_pton(socket.AF_INET, client) + socket.inet_pton(socket.AF_INET, host)
            + struct.pack("!HH", 40000, int(port)))
    header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body)) + body
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(header + f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        for _ in range(1000):  # bounded: until the gateway closes
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1]) if answer else 0


HAS_CURL_HAPROXY = shutil.which("curl") is not None and "--haproxy-protocol" in subprocess.run(
    ["curl", "--help", "all"], capture_output=True, text=True, check=False).stdout


@pytest.mark.skipif(not HAS_CURL_HAPROXY, reason="needs curl with --haproxy-protocol (curl >= 7.60)")
def test_remote_ip_blocks_behind_a_proxy_protocol_load_balancer(mesh: RunningMesh) -> None:
    """The task's "TCP/UDP Proxy Load Balancer" section: the IstioOperator's
    ``meshConfig.defaultConfig.gatewayTopology.proxyProtocol: {}``, then ``remoteIpBlocks``. The load
    balancer's part is played by curl's own ``--haproxy-protocol`` (a v1 header carrying curl's
    address), and by a v2 header for a client elsewhere (5.6.7.8)."""
    task_operator = {"accessLogEncoding": "JSON", "accessLogFile": "/dev/stdout",
                     "defaultConfig": {"gatewayTopology": {"proxyProtocol": {}}}}
    apply(mesh, yaml.safe_dump(mesh_config_map(task_operator)))
    ingress = urllib.parse.urlsplit(mesh.status["ingress"])
    env = f"INGRESS_HOST={ingress.hostname}\nINGRESS_PORT={ingress.port}\n"
    code, out, err = bash(mesh, env + """
curl "$INGRESS_HOST:$INGRESS_PORT"/headers -s -o /dev/null -w "%{http_code}\\n"
curl --haproxy-protocol "$INGRESS_HOST:$INGRESS_PORT"/headers -s -o /dev/null -w "%{http_code}\\n"
CLIENT_IP=$(curl --haproxy-protocol "$INGRESS_HOST":"$INGRESS_PORT"/ip -s | grep "origin" | cut -d'"' -f 4)
echo "$CLIENT_IP"
""")
    assert code == 0, out + err
    # no PROXY header: the gateway closes the connection unanswered (curl: 000); through the load
    # balancer: 200
    assert out.split() == ["000", "200", "127.0.0.1"], out + err
    client_ip = out.split()[2]
    check = (env + 'curl --haproxy-protocol "$INGRESS_HOST:$INGRESS_PORT"/headers -s -o /dev/null '
             '-w "%{http_code}\\n"')

    apply(mesh, policy("ALLOW", "remoteIpBlocks", '"1.2.3.4", "5.6.7.0/24"'))
    assert bash(mesh, check)[1].split() == ["403"]
    assert _v2_request(mesh, "5.6.7.8") == 200  # another client behind the load balancer
    apply(mesh, policy("ALLOW", "remoteIpBlocks", f'"1.2.3.4", "5.6.7.0/24", "{client_ip}"'))
    assert bash(mesh, check)[1].split() == ["200"]
    apply(mesh, policy("DENY", "remoteIpBlocks", f'"{client_ip}"'))
    assert bash(mesh, check)[1].split() == ["403"]
    assert _v2_request(mesh, "5.6.7.8") == 200
    # ipBlocks keep judging the connection's own peer (the load balancer): Envoy's direct_remote_ip
    apply(mesh, policy("DENY", "ipBlocks", f'"{client_ip}"'))
    assert _v2_request(mesh, "5.6.7.8") == 403
    # the same from a pod: meshkit exec ... -- curl --haproxy-protocol --haproxy-clientip (curl 8.2)
    _, out, err = bash(mesh, env + policy_heredoc("ALLOW", "remoteIpBlocks", '"5.6.7.0/24"') + """
meshkit exec deploy/httpbin -n foo -- curl -s --haproxy-protocol --haproxy-clientip 5.6.7.8 \\
  "http://$INGRESS_HOST:$INGRESS_PORT/headers" -o /dev/null -w "%{http_code}\\n"
meshkit exec deploy/httpbin -n foo -- curl -s --haproxy-protocol \\
  "http://$INGRESS_HOST:$INGRESS_PORT/headers" -o /dev/null -w "%{http_code}\\n"
""")
    assert out.split()[-2:] == ["200", "403"], out + err
    # proxyProtocol off again (Istio's default): plain clients are served
    apply(mesh, yaml.safe_dump(mesh_config_map({"accessLogFile": "/dev/stdout"})))
    apply(mesh, policy("ALLOW", "remoteIpBlocks", f'"{client_ip}"'))
    assert curl(mesh, "/headers")[0] == 200


def policy_heredoc(action: str, field: str, blocks: str) -> str:
    return f"meshkit apply -f - <<EOF\n{policy(action, field, blocks)}EOF\nsleep 1\n"


INGRESS_DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  template:
    metadata:
      labels:
        app: istio-ingressgateway
        istio: ingressgateway
      annotations:
        "proxy.istio.io/config": '{"gatewayTopology" : { "numTrustedProxies": 1 } }'
    spec:
      containers:
      - name: istio-proxy
        image: docker.io/istio/proxyv2:1.24.0
"""


# the annotation of the doc, put on the installed gateway as a learner would (kubectl patch's form)
PATCH_COMMAND = (
    "meshkit patch deployment istio-ingressgateway -n istio-system -p "
    """'{"spec":{"template":{"metadata":{"annotations":{"proxy.istio.io/config":"""
    """"{\\"gatewayTopology\\" : { \\"numTrustedProxies\\": 1 } }"}}}}}'\n"""
)


def test_the_gateway_pod_annotation_sets_its_topology(mesh: RunningMesh) -> None:
    """Istio's "Configuring Gateway Network Topology": ``proxy.istio.io/config`` on the ingress
    gateway's pod template overrides the mesh-wide ``defaultConfig`` for that proxy."""
    apply(mesh, yaml.safe_dump(mesh_config_map({})))  # numTrustedProxies 0 mesh-wide
    apply(mesh, policy("ALLOW", "remoteIpBlocks", '"5.6.7.0/24"'))
    behind_lb = {"X-Forwarded-For": "5.6.7.8"}
    assert curl(mesh, "/headers", behind_lb) == (403, ACCESS_DENIED)
    # kubectl patch deployment istio-ingressgateway -n istio-system -p '...' (the doc's annotation)
    code, out, err = bash(mesh, PATCH_COMMAND)
    assert code == 0 and "deployment/istio-ingressgateway patched" in out, out + err
    mesh.wait_synced()
    assert curl(mesh, "/headers", behind_lb)[0] == 200  # the annotation trusts one hop
    assert curl(mesh, "/headers", {"X-Forwarded-For": "5.6.7.8, 9.9.9.9"}) == (403, ACCESS_DENIED)
    code, out, err = bash(mesh, "meshkit delete deployment istio-ingressgateway -n istio-system")
    assert code == 0, out + err
    mesh.wait_synced()
    assert curl(mesh, "/headers", behind_lb) == (403, ACCESS_DENIED)
    # the same annotation in an applied Deployment; a bad one is refused by name, nothing applied
    apply(mesh, INGRESS_DEPLOYMENT)
    assert curl(mesh, "/headers", behind_lb)[0] == 200
    code, out, err = bash(mesh, "meshkit get deployments -n istio-system")
    assert code == 0 and "istio-ingressgateway" in out and "1/1" in out, out + err  # the running gateway
    bad = INGRESS_DEPLOYMENT.replace('"numTrustedProxies": 1', '"numTrustedProxies": 1,,')
    code, out, err = bash(mesh, f"meshkit apply -f - <<EOF\n{bad}EOF\n")
    assert code != 0 and "MK0306" in out + err and "proxy.istio.io/config" in out + err, out + err
    assert "<stdin>" in out + err or "line" in out + err, out + err
    assert curl(mesh, "/headers", behind_lb)[0] == 200  # the previous state holds
    code, out, err = bash(mesh, "meshkit delete deployment istio-ingressgateway -n istio-system")
    assert code == 0, out + err
    mesh.wait_synced()
