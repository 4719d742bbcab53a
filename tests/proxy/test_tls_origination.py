"""TLS origination through the real sidecar: a cluster with ``tls.mode: SIMPLE`` is reached over TLS.

The app sends plain HTTP to ``edition.cnn.com`` through its sidecar; the sidecar opens real TLS to an
HTTPS server on 127.0.0.1 whose certificate (for edition.cnn.com) a CA of the test signed, sends the
cluster's SNI and checks the certificate against the snapshot's ``egress.ca_pem``. A wrong CA, a
name the certificate does not carry, or ``subjectAltNames`` it does not match fail the connection
(503 ``UF``), as Envoy does.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit.proxy.snapshot import Snapshot, SnapshotError
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.proxy.conftest import StartProxy, cluster, make_snapshot

HOST = "edition.cnn.com"


class TlsServer:
    """An HTTPS echo on 127.0.0.1 that records the SNI each handshake sent."""

    def __init__(self, tmp: Path) -> None:
        ca, ca_key = issue_ca("test stand-in CA")
        cert, key = issue_server([HOST, "www.google.com"], ca, ca_key)
        (tmp / "cert.pem").write_text(pem(cert) + pem(ca))
        (tmp / "key.pem").write_text(key_pem(key))
        self.ca_pem = pem(ca)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda _obj, name, _ctx: self.server_names.append(name)  # type: ignore[assignment,func-returns-value]
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"secure": request.secure, "host": request.host, "path": request.path})

        app = web.Application()
        app.router.add_get("/{tail:.*}", echo)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    server = TlsServer(tmp_path)
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def _snapshot(server: TlsServer, tls: dict[str, Any] | None, ca_pem: str | None) -> dict[str, Any]:
    snap = make_snapshot(1)
    target = {"address": "127.0.0.1", "port": server.port, "instance": HOST, "workload": HOST,
              "version": None, "labels": {}, "identity": None, "has_sidecar": False, "healthy": True}
    snap["clusters"][f"{HOST}|"] = cluster(HOST, "", [target], port=80, tls=tls)
    snap["outbound"]["virtual_hosts"].append({
        "name": f"{HOST}:80", "service": HOST, "domains": [HOST, f"{HOST}:80"], "port": 80,
        "routes": [{"name": "default", "match": [], "route": [{"cluster": f"{HOST}|", "weight": 100}]}],
    })
    snap["egress"] = {"hosts": {}, "real_dns": False, **({"ca_pem": ca_pem} if ca_pem else {})}
    return snap


def _simple(**extra: Any) -> dict[str, Any]:
    return {"mode": "SIMPLE", "server_identities": [], "sni": HOST, **extra}


async def _get(proxy: Any, path: str = "/politics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{HOST}{path}", proxy=f"http://127.0.0.1:{proxy.ports['outbound']}") as resp:
        return resp.status, await resp.text()


async def test_the_sidecar_originates_tls_with_sni_and_the_stand_in_ca(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(tls_server, _simple(), tls_server.ca_pem))
    status, body = await _get(proxy)
    assert status == 200, body
    assert '"secure": true' in body and f'"host": "{HOST}"' in body  # the app's Host, over TLS
    assert tls_server.server_names == [HOST]
    # the connection is pooled: a second request needs no second handshake
    assert (await _get(proxy))[0] == 200
    assert tls_server.server_names == [HOST]


async def test_plain_http_to_the_tls_port_without_origination_fails(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(tls_server, None, tls_server.ca_pem))
    status, _ = await _get(proxy)
    assert status != 200  # what the task shows before the DestinationRule: HTTP to a TLS port


async def test_a_certificate_from_another_ca_is_refused(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    other, _ = issue_ca("another CA")
    proxy = await start_proxy(_snapshot(tls_server, _simple(), pem(other)))
    status, body = await _get(proxy)
    assert status == 503, body
    assert "certificate verify failed" in body


async def test_the_certificate_must_name_the_sni_or_the_subject_alt_names(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(tls_server, _simple(sni="api.cnn.com"), tls_server.ca_pem))
    status, body = await _get(proxy)
    assert status == 503 and "api.cnn.com" in body, body
    assert tls_server.server_names == ["api.cnn.com"]


async def test_subject_alt_names_replace_the_sni_check(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    names = _simple(sni="api.cnn.com", subject_alt_names=["www.google.com"])
    ok = await start_proxy(_snapshot(tls_server, names, tls_server.ca_pem))
    assert (await _get(ok))[0] == 200
    wrong = await start_proxy(_snapshot(tls_server, _simple(subject_alt_names=["bad.example.com"]),
                                        tls_server.ca_pem))
    status, body = await _get(wrong)
    assert status == 503 and "bad.example.com" in body, body


async def test_insecure_skip_verify_accepts_any_certificate(
        tls_server: TlsServer, start_proxy: StartProxy) -> None:
    other, _ = issue_ca("another CA")
    proxy = await start_proxy(_snapshot(tls_server, _simple(insecure_skip_verify=True), pem(other)))
    assert (await _get(proxy))[0] == 200


@pytest.mark.parametrize(("tls", "ca_pem", "where"), [
    ({"mode": "SIMPLE", "server_identities": []}, None, f"clusters.{HOST}|.tls.sni"),
    (_simple(subject_alt_names="x"), None, f"clusters.{HOST}|.tls.subject_alt_names"),
    (_simple(insecure_skip_verify="yes"), None, f"clusters.{HOST}|.tls.insecure_skip_verify"),
    (_simple(), "not a certificate", "egress.ca_pem"),
    ({"mode": "MUTUAL_X", "server_identities": []}, None, f"clusters.{HOST}|.tls.mode"),
    (_simple(mode="MUTUAL", client_cert_pem="not PEM"), None, f"clusters.{HOST}|.tls.client_cert_pem"),
])
def test_bad_origination_settings_are_refused_by_key(
        tls: dict[str, Any], ca_pem: str | None, where: str) -> None:
    server = TlsServer.__new__(TlsServer)
    server.port = 1
    doc = _snapshot(server, tls, None)
    if ca_pem is not None:
        doc["egress"]["ca_pem"] = ca_pem
    with pytest.raises(SnapshotError, match=f"^{where.replace('|', '[|]')}"):
        Snapshot.from_json(doc)
