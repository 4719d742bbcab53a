"""A gateway's HTTPS listener through the real proxy: the certificate is chosen by SNI among the
snapshot's ``gateway_tls.servers``, requests are routed like those of the HTTP listener.

Certificates come from a test CA (real X.509, real TLS on 127.0.0.1); the client trusts only that
CA, as ``curl --cacert example.com.crt --resolve httpbin.example.com:PORT:127.0.0.1`` does.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from pathlib import Path
from typing import Any

import pytest

from meshkit.proxy.snapshot import Snapshot, SnapshotError
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot

HOST = "httpbin.example.com"


def _pair(hosts: list[str]) -> tuple[str, str, str]:
    """(CA PEM, certificate PEM, key PEM) for ``hosts``."""
    ca, ca_key = issue_ca("example.com")
    cert, key = issue_server(hosts, ca, ca_key)
    return pem(ca), pem(cert), key_pem(key)


def _snapshot(echo_port: int, servers: list[dict[str, Any]]) -> dict[str, Any]:
    snap = make_snapshot(echo_port)
    snap["node"].update({"id": "ingress-0.istio-system", "kind": "gateway", "namespace": "istio-system"})
    snap["outbound"]["virtual_hosts"] = [{
        "name": HOST, "service": None, "domains": [HOST], "port": None,
        "routes": [{"name": "default", "match": [], "route": [{"cluster": "reviews|", "weight": 100}]}],
    }]
    snap["gateway_tls"] = {"servers": servers}
    return snap


def _server(cert: str, key: str, hosts: list[str], credential: str = "httpbin-credential") -> dict[str, Any]:
    return {"gateway": "default/mygateway", "server": 0, "port": 443, "hosts": hosts,
            "credential": credential, "cert_pem": cert, "key_pem": key}


async def _https(port: int, sni: str, ca_pem: str, path: str = "/headers") -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cadata=ca_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        raw = (await asyncio.wait_for(reader.read(), 10)).decode()
    finally:
        writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return int(head.split()[1]), (json.loads(body) if body.startswith("{") else {})


async def test_https_with_the_certificate_the_sni_selects(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    ca, cert, key = _pair([HOST])
    other_ca, other_cert, other_key = _pair(["helloworld-v1.example.com"])
    servers = [_server(cert, key, [HOST]), _server(other_cert, other_key, ["*.example.com"], "hello")]
    proxy = await start_proxy(_snapshot(echo_app.port, servers), "--kind", "gateway", "--https-port", "0")
    port = proxy.ports["https"]
    status, body = await _https(port, HOST, ca)
    assert status == 200, body
    headers = dict(body["headers"])
    assert headers["x-forwarded-proto"] == "https" and headers["host"] == HOST
    # another name under *.example.com gets the other server's certificate (and no route: 404 NR)
    status, _ = await _https(port, "helloworld-v1.example.com", other_ca)
    assert status == 404
    # the httpbin certificate is not trusted by the other CA
    with pytest.raises(ssl.SSLCertVerificationError):
        await _https(port, HOST, other_ca)


async def test_an_unknown_sni_or_no_server_fails_the_handshake(
        echo_app: EchoApp, start_proxy: StartProxy) -> None:
    ca, cert, key = _pair([HOST])
    proxy = await start_proxy(_snapshot(echo_app.port, [_server(cert, key, [HOST])]),
                              "--kind", "gateway", "--https-port", "0")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # alert or reset: no server for the name
        await _https(proxy.ports["https"], "other.example.org", ca)
    bare = await start_proxy(_snapshot(echo_app.port, []), "--kind", "gateway", "--https-port", "0")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # alert or reset: no server for the name
        await _https(bare.ports["https"], HOST, ca)


def test_the_https_port_is_for_gateways_only(tmp_path: Path) -> None:
    from meshkit.proxy.main import parse_args  # noqa: PLC0415

    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "x.json"), "--https-port", "0"])


@pytest.mark.parametrize(("change", "where"), [
    ({"hosts": []}, "gateway_tls.servers[0].hosts"),
    ({"cert_pem": "nope"}, "gateway_tls.servers[0].cert_pem"),
    ({"key_pem": None}, "gateway_tls.servers[0].key_pem"),
])
def test_bad_servers_are_refused_by_key(change: dict[str, Any], where: str) -> None:
    _, cert, key = _pair([HOST])
    doc = _snapshot(1, [{**_server(cert, key, [HOST]), **change}])
    with pytest.raises(SnapshotError, match=f"^{re.escape(where)}"):
        Snapshot.from_json(doc)


def test_a_certificate_and_a_key_that_do_not_match_are_refused() -> None:
    _, cert, _ = _pair([HOST])
    _, _, other_key = _pair([HOST])
    doc = _snapshot(1, [_server(cert, other_key, [HOST])])
    with pytest.raises(SnapshotError, match="httpbin-credential"):
        Snapshot.from_json(doc)
