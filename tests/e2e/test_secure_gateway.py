"""Istio's "Secure Gateways" task on the real local mesh: an HTTPS ingress from a TLS Secret.

The mesh runs httpbin; the test makes the task's certificates (a root for ``example.com`` and a
certificate for ``httpbin.example.com``, with ``cryptography`` where the task uses openssl), applies
the Secret as ``kubectl create -n istio-system secret tls httpbin-credential --key=... --cert=...``
writes it, then the task's Gateway and VirtualService unchanged (tests/config/test_gateway_tls.py),
and calls ``curl --resolve httpbin.example.com:PORT:127.0.0.1 --cacert example.com.crt
https://httpbin.example.com:PORT/status/418`` with real TLS. Then the task's rotation (delete the
Secret, create one from new certificates: the new chain works, the old one fails), and a Gateway
naming a Secret that does not exist (a named error; nothing applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from meshkit.control.client import ApiError
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.test_gateway_tls import GATEWAY_YAML, VIRTUAL_SERVICE_YAML, tls_secret
from tests.e2e.mesh import RunningMesh, start_mesh

HOST = "httpbin.example.com"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("secure-gateway"), ["httpbin"]) as running:
        yield running


def _certificates() -> tuple[str, str, str]:
    """(example.com.crt, httpbin.example.com.crt, httpbin.example.com.key) as the task makes them."""
    root, root_key = issue_ca("example.com")
    cert, key = issue_server([HOST], root, root_key)
    return pem(root), pem(cert), key_pem(key)


def _docs(text: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(text) if d]


async def _curl(mesh: RunningMesh, ca_pem: str, path: str = "/status/418") -> str:
    """``curl -HHost:httpbin.example.com --resolve ... --cacert example.com.crt https://...``: the head."""
    port = urlsplit(str(mesh.status["ingress_https"])).port
    context = ssl.create_default_context(cadata=ca_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=HOST)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        raw = (await asyncio.wait_for(reader.read(), 30)).decode(errors="replace")
    finally:
        writer.close()
    return raw


async def test_the_secure_gateways_task(mesh: RunningMesh) -> None:
    client = mesh.client
    root, cert, key = _certificates()
    client.apply(_docs(tls_secret(cert=cert, key=key)))
    client.apply(_docs(GATEWAY_YAML) + _docs(VIRTUAL_SERVICE_YAML))
    mesh.wait_synced()
    answer = await _curl(mesh, root)
    assert answer.startswith("HTTP/1.1 418 I'm a Teapot"), answer
    assert "x-envoy-upstream-service-time" in answer.lower()  # through the gateway's routing
    # a client that trusts another root refuses the gateway's certificate
    other_root, _, _ = _certificates()
    with pytest.raises(ssl.SSLCertVerificationError):
        await _curl(mesh, other_root)

    # rotation: delete the Secret, create it again from new certificates
    client.delete("Secret", "httpbin-credential", "istio-system")
    new_root, new_cert, new_key = _certificates()
    client.apply(_docs(tls_secret(cert=new_cert, key=new_key)))
    mesh.wait_synced()
    assert (await _curl(mesh, new_root)).startswith("HTTP/1.1 418")
    with pytest.raises(ssl.SSLCertVerificationError):  # "the attempt now fails" with the old chain
        await _curl(mesh, root)


async def test_a_gateway_naming_a_missing_secret_is_refused_and_nothing_changes(mesh: RunningMesh) -> None:
    client = mesh.client
    revision = client.history()["revision"]
    missing = GATEWAY_YAML.replace("name: mygateway", "name: other-gateway").replace(
        "credentialName: httpbin-credential", "credentialName: no-such-credential")
    with pytest.raises(ApiError) as refused:
        client.apply(_docs(missing))
    [message] = [m for m in refused.value.messages if m["code"] == "MK0404"]
    assert message["resource"] == "Gateway/default/other-gateway"
    assert message["field"] == "spec.servers[0].tls.credentialName"
    assert "no-such-credential" in message["message"]
    assert client.history()["revision"] == revision


async def test_the_secure_gateways_task_gateway_api_tab(mesh: RunningMesh) -> None:
    """The task's "Gateway API" tab: the Gateway in istio-system with an HTTPS listener whose
    certificateRefs names the Secret, the HTTPRoute in default (tests/config/test_gateway_tls.py)."""
    from tests.config.test_gateway_tls import HTTP_ROUTE_YAML, KUBE_GATEWAY_YAML  # noqa: PLC0415

    client = mesh.client
    for kind, name in (("VirtualService", "httpbin"), ("Gateway", "mygateway")):
        with contextlib.suppress(ApiError):  # the Istio-API tab's rules, if the test above left them
            client.delete(kind, name, "default")
    root, cert, key = _certificates()
    with contextlib.suppress(ApiError):
        client.delete("Secret", "httpbin-credential", "istio-system")
    client.apply(_docs(tls_secret(cert=cert, key=key)))
    client.apply(_docs(KUBE_GATEWAY_YAML) + _docs(HTTP_ROUTE_YAML))
    mesh.wait_synced()
    answer = await _curl(mesh, root)
    assert answer.startswith("HTTP/1.1 418 I'm a Teapot"), answer
    assert (await _curl(mesh, root, "/headers")).startswith("HTTP/1.1 404"), "only /status and /delay route"
    other_root, _, _ = _certificates()
    with pytest.raises(ssl.SSLCertVerificationError):
        await _curl(mesh, other_root)
