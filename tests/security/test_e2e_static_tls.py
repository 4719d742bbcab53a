"""Two real sidecars (in this process, real sockets) with mTLS from certificate files (``--tls-dir``):
the static mode benchmarks use. Traffic is mutual TLS with the client's identity at the server;
a server whose SPIFFE id is not the expected one is refused (503); bad files stop the start.
Also the mTLS parts of the snapshot (NACK on a bad cluster ``tls``) and the ``--cert-ttl`` syntax.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from meshkit.control.ca import CaError, CertificateAuthority, parse_ttl
from meshkit.proxy.main import Proxy, parse_args
from meshkit.proxy.tls import CHAIN_FILE, KEY_FILE, ROOT_FILE
from meshkit.proxy.tls.x509 import build_csr, generate_key
from meshkit.proxy.xds import ConfigState

SERVER = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
CLIENT = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
TIMEOUT = aiohttp.ClientTimeout(total=15)


def write_tls_dir(ca: CertificateAuthority, identity: str, directory: Path) -> Path:
    key = generate_key()
    directory.mkdir(parents=True)
    (directory / CHAIN_FILE).write_text(ca.sign_csr(build_csr(key, identity), identity))
    (directory / KEY_FILE).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / ROOT_FILE).write_text(ca.root_pem)
    return directory


def snapshot(node: str, identity: str, app_port: int, *, upstream_port: int | None = None,
             expect: list[str] | None = None) -> dict[str, Any]:
    clusters: dict[str, Any] = {}
    vhosts: list[dict[str, Any]] = []
    if upstream_port is not None:
        clusters["reviews|"] = {
            "service": "reviews", "subset": "", "port": 9080, "lb": "ROUND_ROBIN",
            "endpoints": [{"address": "127.0.0.1", "port": upstream_port, "instance": "reviews-v1-0",
                           "workload": "reviews-v1", "version": "v1",
                           "labels": {"app": "reviews", "version": "v1"}, "identity": SERVER,
                           "has_sidecar": True, "healthy": True}],
            "connection_pool": None, "outlier_detection": None,
            "tls": {"mode": "ISTIO_MUTUAL", "server_identities": expect if expect is not None else [SERVER]},
        }
        vhosts.append({"name": "reviews.default.svc.cluster.local:9080", "service": "reviews",
                       "domains": ["reviews", "reviews:9080"], "port": 9080,
                       "routes": [{"name": "default", "match": [],
                                   "route": [{"cluster": "reviews|", "weight": 100}]}]})
    return {
        "schema": 1, "version": f"{node}-{len(json.dumps(expect))}", "revision": 1,
        "node": {"id": f"{node}-v1-0.default", "workload": f"{node}-v1", "instance": f"{node}-v1-0",
                 "namespace": "default", "service": node, "version": "v1",
                 "labels": {"app": node, "version": "v1"}, "identity": identity, "kind": "sidecar"},
        "outbound": {"virtual_hosts": vhosts},
        "clusters": clusters,
        "inbound": {"app": {"address": "127.0.0.1", "port": app_port}, "service_port": 9080,
                    "mtls": {"mode": "STRICT", "port_level": {}},
                    "authz": {"deny": [], "allow": [], "audit": []}, "rate_limit": None},
        "trust": None,
    }


Start = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[Proxy] = []

    async def run(doc: dict[str, Any], tls_dir: Path) -> Proxy:
        path = tmp_path / f"snapshot-{len(started)}.json"
        path.write_text(json.dumps(doc))
        proxy = Proxy(parse_args(["--config", str(path), "--outbound-port", "0", "--inbound-port", "0",
                                  "--admin-port", "0", "--drain-seconds", "0.2", "--tls-dir", str(tls_dir)]))
        await proxy.start()
        started.append(proxy)
        return proxy

    yield run
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def app_port() -> AsyncIterator[int]:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def _get(proxy_port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get("http://reviews:9080/x", proxy=f"http://127.0.0.1:{proxy_port}") as resp:
        return resp.status, await resp.text()


async def _admin(proxy: Proxy, page: str) -> str:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get(f"http://127.0.0.1:{proxy.ports['admin']}{page}") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_static_certificates_give_mutual_tls(tmp_path: Path, start: Start, app_port: int) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    server = await start(snapshot("reviews", SERVER, app_port), write_tls_dir(ca, SERVER, tmp_path / "s"))
    client_dir = write_tls_dir(ca, CLIENT, tmp_path / "c")
    client = await start(snapshot("productpage", CLIENT, app_port, upstream_port=server.ports["inbound"]),
                         client_dir)
    assert await _get(client.ports["outbound"]) == (200, "hello")
    text = await _admin(server, "/stats/prometheus")
    series = [s for f in text_string_to_metric_families(text) if f.name == "istio_requests"
              for s in f.samples if s.name.endswith("_total")]
    assert [(s.labels["source_principal"], s.labels["connection_security_policy"]) for s in series] == [
        (CLIENT, "mutual_tls")]
    certs = json.loads(await _admin(client, "/certs"))
    assert certs["identity"] == CLIENT and certs["ready"]
    assert json.loads(await _admin(client, "/stats"))["upstream"]["cx_mtls_total"] == 1

    # A client expecting another identity refuses this server (Envoy: UF), and says so in /stats.
    wary = await start(snapshot("productpage", CLIENT, app_port, upstream_port=server.ports["inbound"],
                                expect=["spiffe://cluster.local/ns/default/sa/someone-else"]), client_dir)
    status, _ = await _get(wary.ports["outbound"])
    assert status == 503
    assert json.loads(await _admin(wary, "/stats"))["upstream"]["cx_peer_identity_fail"] >= 1


async def test_bad_tls_dir_stops_the_start(tmp_path: Path, start: Start, app_port: int) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"cert-chain\.pem"):
        await start(snapshot("reviews", SERVER, app_port), empty)
    ca, other = CertificateAuthority.open(tmp_path / "ca"), CertificateAuthority.open(tmp_path / "other")
    mixed = write_tls_dir(ca, SERVER, tmp_path / "mixed")
    (mixed / ROOT_FILE).write_text(other.root_pem)  # a chain that does not lead to the given root
    with pytest.raises(SystemExit, match="does not chain to the root"):
        await start(snapshot("reviews", SERVER, app_port), mixed)


@pytest.mark.parametrize(("tls", "reason"), [
    ({"mode": "PERMISSIVE"},  # a PeerAuthentication mode, not a client TLS mode
     "clusters.reviews|.tls.mode: expected DISABLE, ISTIO_MUTUAL, SIMPLE or MUTUAL, got 'PERMISSIVE'"),
    ({"mode": "ISTIO_MUTUAL", "server_identities": "x"}, "clusters.reviews|.tls.server_identities: expected"),
    ({"mode": "MUTUAL"}, "clusters.reviews|.tls.sni: expected the server name to send, got None"),
])
def test_snapshot_with_a_bad_cluster_tls_is_nacked(tls: dict[str, Any], reason: str) -> None:
    doc = snapshot("productpage", CLIENT, 1, upstream_port=2)
    doc["clusters"]["reviews|"]["tls"] = tls
    state = ConfigState()
    assert (state.apply(doc) or "").startswith(reason)
    assert state.current is None


def test_snapshot_carries_the_inbound_mode_and_upstream_identities() -> None:
    doc = snapshot("productpage", CLIENT, 1, upstream_port=2)
    doc["inbound"]["mtls"] = {"mode": "PERMISSIVE", "port_level": {"9080": "DISABLE"}}
    state = ConfigState()
    assert state.apply(doc) is None and state.current is not None
    assert state.current.mtls_mode == "DISABLE"
    assert state.current.upstream_tls == {"reviews|": frozenset({SERVER})}


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("4", 4), ("5m", 300), ("24h", 86400), ("7d", 604800), ("1.5s", 1.5)])
def test_cert_ttl_syntax(text: str, seconds: float) -> None:
    assert parse_ttl(text).total_seconds() == seconds


@pytest.mark.parametrize(("text", "message"), [("2x", "expected a duration"), ("", "expected a duration"),
                                               ("0s", "between 1s and 90d"), ("91d", "between 1s and 90d")])
def test_cert_ttl_errors_name_the_option(text: str, message: str) -> None:
    with pytest.raises(CaError, match=message) as caught:
        parse_ttl(text)
    assert str(caught.value).startswith(f"--cert-ttl {text!r}")
