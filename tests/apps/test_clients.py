"""The client workloads: ``sleep`` fetches through its sidecar, ``legacy`` always directly."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.apps.forward_proxy import ForwardProxy
from tests.apps.processes import AppProcesses, RunningApp

HTTPBIN_HOST = "httpbin:8000"


@pytest.fixture(scope="module")
def httpbin(processes: AppProcesses, proxy: ForwardProxy) -> RunningApp:
    running = processes.launch("httpbin")
    proxy.routes[HTTPBIN_HOST] = running.port
    return running


@pytest.fixture(scope="module")
def sleep(processes: AppProcesses, proxy: ForwardProxy) -> RunningApp:
    return processes.launch("sleep", env={"HTTP_PROXY": proxy.url})


@pytest.fixture(scope="module")
def legacy(processes: AppProcesses, proxy: ForwardProxy) -> RunningApp:
    # HTTP_PROXY is set on purpose: the out-of-mesh client must ignore it.
    return processes.launch("legacy", env={"HTTP_PROXY": proxy.url})


async def _fetch(client: RunningApp, **query: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(f"{client.url}/fetch", params=query) as answer:
        return answer.status, await answer.json()


async def test_sleep_fetches_services_through_its_sidecar(
    sleep: RunningApp, httpbin: RunningApp, proxy: ForwardProxy
) -> None:
    status, report = await _fetch(sleep, url=f"http://{HTTPBIN_HOST}/headers", header="x-lesson: mtls-1")
    assert status == 200
    assert report["status"] == 200 and report["error"] is None
    assert report["via"] == proxy.url
    inner = report["json"]
    assert isinstance(inner, dict) and inner["podname"] == "httpbin-v1-0"
    assert inner["headers"]["x-lesson"] == "mtls-1"  # type: ignore[index]
    assert report["podname"] == "sleep-v1-0"
    (hop,) = [s for s in proxy.seen(host=HTTPBIN_HOST) if s.headers.get("x-lesson") == "mtls-1"]
    assert hop.path == "/headers"


async def test_sleep_reports_the_inner_status_not_its_own(sleep: RunningApp, httpbin: RunningApp) -> None:
    status, report = await _fetch(sleep, url=f"http://{HTTPBIN_HOST}/status/503", method="GET")
    assert status == 200 and report["status"] == 503
    status, report = await _fetch(sleep, url="http://nowhere:8000/", timeout="5")
    assert status == 200 and report["status"] == 502, "the stand-in sidecar has no route to nowhere:8000"


async def test_legacy_connects_directly(legacy: RunningApp, httpbin: RunningApp, proxy: ForwardProxy) -> None:
    before = len(proxy.seen())
    status, report = await _fetch(legacy, url=f"{httpbin.url}/get?from=legacy", method="POST", body="hi")
    assert status == 200 and report["via"] == "direct"
    assert report["status"] == 405  # /get is GET-only: the inner answer is reported as is
    status, report = await _fetch(legacy, url=f"{httpbin.url}/anything", method="POST", body="hi")
    assert report["status"] == 200
    assert isinstance(report["json"], dict) and report["json"]["data"] == "hi"
    assert len(proxy.seen()) == before


async def test_legacy_reports_a_refused_connection(legacy: RunningApp) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    status, report = await _fetch(legacy, url=f"http://127.0.0.1:{port}/", timeout="5")
    assert status == 200 and report["status"] is None
    assert str(report["error"]).startswith("connection failed")


def _self_signed(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strict-inbound")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
async def tls_only_port() -> AsyncIterator[int]:
    """A server that speaks only TLS, like a sidecar inbound in STRICT mTLS mode."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    with tempfile.TemporaryDirectory() as directory:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_self_signed(Path(directory)))
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()


async def test_legacy_plaintext_to_a_tls_only_port_is_refused(legacy: RunningApp, tls_only_port: int) -> None:
    status, report = await _fetch(legacy, url=f"http://127.0.0.1:{tls_only_port}/", timeout="5")
    assert status == 200
    assert report["status"] is None, report
    assert str(report["error"]).startswith("connection closed by the server"), report


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "'url' is required"),
        ({"url": "ftp://x/"}, "'url'"),
        ({"url": "/relative"}, "'url'"),
        ({"url": "http://httpbin:8000/", "header": "no-colon"}, "'header'"),
        ({"url": "http://httpbin:8000/", "method": "BREW"}, "'method'"),
        ({"url": "http://httpbin:8000/", "timeout": "0"}, "'timeout'"),
    ],
)
async def test_fetch_rejects_bad_input_naming_the_field(
    sleep: RunningApp, query: dict[str, str], field: str
) -> None:
    status, body = await _fetch(sleep, **query)
    assert status == 400 and field in str(body["error"]) and "/fetch" in str(body["error"])
