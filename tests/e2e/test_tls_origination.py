"""Istio's "Egress TLS Origination" task on the real local mesh, against the external stand-ins.

The mesh runs `clients` (sleep, in the mesh) and `external` (stand-ins for edition.cnn.com and the
others, outside the mesh, serving HTTP and HTTPS with their own CA). The YAML is the task's,
unchanged (tests/config/istio_samples/egress-tls-origination*.yaml); ``kubectl exec sleep -- curl
http://edition.cnn.com/politics`` is sleep's ``/fetch``, which goes through its sidecar and, like
``curl`` without ``-L``, reports the first answer. Like the real site, the stand-in answers plain
HTTP with ``301`` to ``https://``; once the DestinationRule says ``tls.mode: SIMPLE``, the sidecar
opens real TLS to the stand-in's HTTPS port (SNI, certificate checked against the stand-ins' CA)
and the same command gets ``200`` at once. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.runtime import catalog
from tests.e2e.mesh import RunningMesh, sample, start_mesh
from tests.e2e.traffic import get_one, istio_requests

SERVICE_ENTRY = sample("egress-tls-origination-serviceentry.yaml")
ORIGINATION = sample("egress-tls-origination.yaml")
SOURCE = {"reporter": "source"}


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("origination"), ["clients", "external"]) as mesh:
        yield mesh


async def _curl(mesh: RunningMesh, url: str) -> dict[str, Any]:
    """``kubectl exec sleep -- curl -sS -o /dev/null -D - URL``: sleep's request through its sidecar."""
    sleep = mesh.workload("sleep-v1-0")
    fetched = await get_one(f"http://127.0.0.1:{sleep['app_port']}/fetch?url={url}")
    assert fetched.status == 200, fetched.body
    answer: dict[str, Any] = fetched.json()
    return answer


async def _https_get(port: int, host: str, path: str, ca_file: str) -> tuple[str, str]:
    """A client outside the mesh that trusts the stand-ins' CA (``curl --cacert ca.pem --resolve``)."""
    context = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = (await asyncio.wait_for(reader.read(), 30)).decode()
    finally:
        writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return head, body


async def test_the_stand_ins_serve_https_with_their_own_ca(egress: RunningMesh) -> None:
    port = egress.workload("external-v1-0")["app_port"] + catalog.EXTERNAL_TLS_DELTA
    ca_file = str(egress.home / "external-tls" / "ca.pem")
    head, body = await _https_get(port, "edition.cnn.com", "/politics", ca_file)
    assert head.startswith("HTTP/1.1 200") and "x-standin-scheme: https" in head.lower(), head
    assert "edition.cnn.com" in body
    # the certificate names the stand-in hosts only, and a client without the CA refuses it
    with pytest.raises(ssl.SSLCertVerificationError):
        await _https_get(port, "api.example.com", "/", ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname="edition.cnn.com")
        writer.close()


async def test_the_sidecar_originates_tls_for_edition_cnn_com(egress: RunningMesh) -> None:
    sleep = egress.workload("sleep-v1-0")
    with egress.rules(*SERVICE_ENTRY):
        # "Configuring access to an external service": HTTP gets the site's redirect to HTTPS
        first = await _curl(egress, "http://edition.cnn.com/politics")
        assert first["status"] == 301, first
        assert first["headers"]["Location"] == "https://edition.cnn.com/politics"
    with egress.rules(*ORIGINATION):
        before = istio_requests(sleep["admin_port"], destination_service_name="edition.cnn.com",
                                response_code="200", **SOURCE)
        # "TLS origination for egress traffic": the same command gets 200 at once, over TLS
        answer = await _curl(egress, "http://edition.cnn.com/politics")
        assert answer["status"] == 200, answer
        assert answer["headers"]["x-standin-scheme"] == "https"
        assert "edition.cnn.com" in answer["body"]
        after = istio_requests(sleep["admin_port"], destination_service_name="edition.cnn.com",
                               response_code="200", **SOURCE)
        assert after - before == 1
    # "Cleanup": back to the plain HTTP passthrough (ALLOW_ANY) and its redirect
    assert (await _curl(egress, "http://edition.cnn.com/politics"))["status"] == 301
