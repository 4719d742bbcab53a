"""Mutual TLS origination with certificate *files*: Istio's ``sidecar.istio.io/userVolume`` annotations.

Before ``credentialName``, Istio users mounted the client certificate into the proxy's container with the
pod annotations ``sidecar.istio.io/userVolume`` / ``userVolumeMount`` and named the files in the
DestinationRule (``clientCertificate``, ``privateKey``, ``caCertificates``). The local mesh's proxies have no
container: the files are the keys of the mounted Secret, as for the nginx stand-in's own volumes. The
mutual TLS nginx and the certificates are those of Istio's "Egress TLS Origination" task
(`test_egress_mutual_tls_origination`); the annotations are patched onto sleep's Deployment in the form
Istio documents (a JSON list of volumes and mounts). Every byte stays on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import CLI_TIMEOUT, cli_env
from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.test_egress_mutual_tls_origination import (
    BEFORE_YOU_BEGIN,
    CERTIFICATES,
    CLIENT_CREDENTIAL,
    CURL,
    MUTUAL_TLS_SERVER,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the task's own openssl is not installed")

DESTINATION_RULE = """
meshkit apply -f - <<EOF
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
spec:
  workloadSelector:
    matchLabels:
      app: sleep
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        clientCertificate: /etc/client-credential/tls.crt
        privateKey: /etc/client-credential/tls.key
        caCertificates: /etc/client-credential/ca.crt
        sni: my-nginx.mesh-external.svc.cluster.local
EOF
"""

ANNOTATIONS = """
meshkit patch deployment sleep -p '{"spec":{"template":{"metadata":{"annotations":{
  "sidecar.istio.io/userVolume":"[{\\"name\\":\\"client-credential\\", \\"secret\\":{\\"secretName\\":\\"client-credential\\"}}]",
  "sidecar.istio.io/userVolumeMount":"[{\\"name\\":\\"client-credential\\", \\"mountPath\\":\\"/etc/client-credential\\", \\"readonly\\":true}]"}}}}}'
"""  # noqa: E501

NOT_MOUNTABLE = """meshkit patch deployment sleep -p '{"spec":{"template":{"metadata":{"annotations":{
  "sidecar.istio.io/userVolume":"[{\\"name\\":\\"client-credential\\", \\"emptyDir\\":{}}]"}}}}}'
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("user-volumes"), ["none"], spare=3) as running:
        yield running


def bash(mesh: RunningMesh, script: str, cwd: Path) -> tuple[int, str, str]:
    prelude = f'meshkit() {{ "{sys.executable}" -m meshkit.cli "$@"; }}\n'
    done = subprocess.run(["bash", "-c", prelude + script], env=cli_env(mesh.home, mesh.base), cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT * 4, check=False)
    return done.returncode, done.stdout, done.stderr


def ok(mesh: RunningMesh, script: str, cwd: Path) -> str:
    code, out, err = bash(mesh, "set -e\n" + script, cwd)
    assert code == 0, out + err
    return out


def test_the_proxy_reads_the_client_certificate_files_of_its_user_volumes(mesh: RunningMesh,
                                                                          tmp_path: Path) -> None:
    ok(mesh, BEFORE_YOU_BEGIN + CERTIFICATES + MUTUAL_TLS_SERVER + CLIENT_CREDENTIAL + DESTINATION_RULE,
       tmp_path)
    mesh.wait_synced()
    # the files are not mounted yet: the proxy has no client certificate, nginx refuses the handshake
    _, out, err = bash(mesh, CURL, tmp_path)
    assert out.startswith("upstream connect error or disconnect/reset before headers"), out + err

    ok(mesh, ANNOTATIONS, tmp_path)
    mesh.wait_synced()
    _, out, err = bash(mesh, CURL, tmp_path)
    assert out.startswith("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>"), out + err
    _, out, err = bash(mesh, "meshkit logs my-nginx-0.mesh-external", tmp_path)
    assert '"GET / HTTP/1.1" 200 615' in out + err, out + err

    # a volume the local mesh cannot mount is refused by name, and the working one stays
    code, out, err = bash(mesh, NOT_MOUNTABLE, tmp_path)
    assert code != 0, out
    assert "MK0308" in err and "only secret (secret.secretName) and configMap" in err, err
    _, out, _ = bash(mesh, CURL, tmp_path)
    assert out.startswith("<!DOCTYPE html>"), out
