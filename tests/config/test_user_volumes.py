"""``sidecar.istio.io/userVolume`` / ``userVolumeMount``: the proxy's mounted Secret and ConfigMap files, and
a DestinationRule's ``clientCertificate``/``privateKey``/``caCertificates`` read from them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.user_volumes import proxy_files
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.bookinfo import bookinfo_registry, node_for

_CA, _CA_KEY = issue_ca("example.com")
_CERT, _KEY = issue_server(["client.example.com"], _CA, _CA_KEY)
CERT, KEY, CA = pem(_CERT), key_pem(_KEY), pem(_CA)

LIST_FORM = ('[{"name":"client-credential", "secret":{"secretName":"client-credential"}}]',
             '[{"name":"client-credential", "mountPath":"/etc/client-credential", "readonly":true}]')
MAP_FORM = ('{"client-credential": {"secret": {"secretName": "client-credential"}}}',
            '{"client-credential": {"mountPath": "/etc/client-credential/"}}')


def deployment(volumes: str, mounts: str) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: productpage-v1}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  template:
    metadata:
      labels: {{app: productpage, version: v1}}
      annotations:
        sidecar.istio.io/userVolume: {json.dumps(volumes)}
        sidecar.istio.io/userVolumeMount: {json.dumps(mounts)}
    spec:
      containers: [{{name: productpage, image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.2}}]
"""


SECRET = f"""apiVersion: v1
kind: Secret
metadata: {{name: client-credential}}
stringData:
  tls.crt: {json.dumps(CERT)}
  tls.key: {json.dumps(KEY)}
  ca.crt: {json.dumps(CA)}
"""

RULE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-mtls}
spec:
  host: ratings
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: /etc/client-credential/tls.crt
      privateKey: /etc/client-credential/tls.key
      caCertificates: /etc/client-credential/ca.crt
      sni: ratings.example.com
"""


@pytest.mark.parametrize("form", [LIST_FORM, MAP_FORM], ids=["list", "map"])
def test_the_mounted_secret_s_keys_are_the_proxy_s_files(form: tuple[str, str]) -> None:
    resources = load_resources(deployment(*form) + "---\n" + SECRET)
    files = proxy_files(resources, "productpage-v1", "default")
    assert (files("/etc/client-credential/tls.crt"), files("/etc/client-credential/ca.crt")) == (CERT, CA)
    assert files("/etc/client-credential/missing") is None and files("/etc/other/tls.crt") is None
    assert proxy_files(resources, "reviews-v1", "default")("/etc/client-credential/tls.crt") is None


def test_the_destination_rule_s_files_give_the_cluster_its_client_certificate() -> None:
    resources = load_resources(deployment(*LIST_FORM) + "---\n" + SECRET + "---\n" + RULE)
    doc: dict[str, Any] = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    tls = doc["clusters"]["ratings.default|"]["tls"]
    assert tls["mode"] == "MUTUAL"
    assert (tls["client_cert_pem"], tls["client_key_pem"], tls["ca_pem"]) == (CERT, KEY, CA)
    assert tls["credential"] == "/etc/client-credential/tls.crt"
    Snapshot.from_json(doc)  # the proxy loads the pair
    # another workload mounts nothing: no client certificate (Envoy's cluster would not warm: 503)
    other = compile_snapshot(resources, bookinfo_registry(), node_for("reviews", "v1"))
    assert other["clusters"]["ratings.default|"]["tls"]["client_cert_pem"] is None


@pytest.mark.parametrize(("form", "text"), [
    (("not json", LIST_FORM[1]), "sidecar.istio.io/userVolume: not JSON"),
    (('[{"name":"client-credential", "emptyDir":{}}]', LIST_FORM[1]),
     "volume 'client-credential' is emptyDir"),
    ((LIST_FORM[0], '[{"name":"other", "mountPath":"/etc/x"}]'), "mount 'other' names no volume"),
    ((LIST_FORM[0], '[{"name":"client-credential", "mountPath":"etc"}]'), "needs an absolute mountPath"),
    (('"x"', LIST_FORM[1]), "expected a JSON list of objects or a map by name"),
])
def test_a_volume_the_local_mesh_cannot_mount_is_named(form: tuple[str, str], text: str) -> None:
    [message] = [m for m in analyze(load_resources(deployment(*form))) if m.code == "MK0308"]
    assert text in message.text and message.field == "spec.template.metadata.annotations", message.text
    assert message.resource == "Deployment/default/productpage-v1"
