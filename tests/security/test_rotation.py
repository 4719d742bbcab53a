"""Certificate rotation: half-TTL schedule, checks on the CA's answer, atomic context swap,
and renewal over HTTP from a real signing endpoint (``POST /api/v1/ca/sign``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshkit.control.ca import ROOT_KEY_FILE, CaError, CertificateAuthority, SigningService
from meshkit.proxy.tls import CertificateError, CertificateManager
from meshkit.proxy.tls.ca_client import CaClient, CertificateFetchError
from meshkit.proxy.tls.renewal import keep_rotated, renew
from meshkit.proxy.tls.x509 import LocalCertificateManager, build_csr, generate_key
from meshkit.proxy.xds import ConfigState

from .conftest import ALICE, BOB, InboundSidecar, Issue, ask, peer_serial
from .test_e2e_static_tls import snapshot as static_snapshot


def test_rotation_is_due_at_half_the_ttl(issue: Issue) -> None:
    manager = issue(ALICE, ttl=timedelta(hours=1))
    bundle = manager.current
    assert bundle is not None
    start = bundle.installed_at
    assert not manager.needs_rotation(start + 29 * 60)
    assert manager.needs_rotation(start + 31 * 60)
    assert 29 * 60 < manager.seconds_until_rotation(start) <= 30 * 60 + 1
    assert manager.seconds_until_rotation(start + 3600) == 0.0
    view = bundle.admin_view()
    assert view["identity"] == ALICE and view["serial"] == f"{bundle.serial:x}"


def _forge(ca_dir: Path, csr_pem: str, identity: str, *, hours: float = 1.0) -> str:
    """Sign with the CA's key directly (bypassing its checks) to produce answers a real CA never gives."""
    key = serialization.load_pem_private_key((ca_dir / ROOT_KEY_FILE).read_bytes(), password=None)
    root = CertificateAuthority.open(ca_dir).root_certificate
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(now - timedelta(hours=2)).not_valid_after(now + timedelta(hours=hours))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("checker", ["cryptography", "ssl"])
def test_rotate_checks_the_answer(
    ca: CertificateAuthority, other_ca: CertificateAuthority, checker: str
) -> None:
    """The same refusals, whether checked in-process with cryptography (``rotate``) or with ssl
    alone as the running sidecar does (``install_verified``)."""
    manager = LocalCertificateManager(ALICE)
    install = manager.rotate if checker == "cryptography" else manager.install_verified
    with pytest.raises(CertificateError, match="call new_csr"):
        install("x", ca.root_pem)

    manager.new_csr()
    someone_else = ca.sign_csr(build_csr(generate_key(), ALICE), ALICE)
    with pytest.raises(CertificateError, match="not for the key of our CSR"):
        install(someone_else, ca.root_pem)

    csr = manager.new_csr()
    with pytest.raises(CertificateError, match=rf"names \['{BOB}'\], expected \[{ALICE}\]"):
        install(_forge(ca.directory, csr, BOB), ca.root_pem)
    with pytest.raises(CertificateError, match="already expired"):
        install(_forge(ca.directory, csr, ALICE, hours=-1), ca.root_pem)
    with pytest.raises(CertificateError, match="does not chain to the root bundle"):
        install(other_ca.sign_csr(csr, ALICE), ca.root_pem)
    with pytest.raises(CertificateError, match="not PEM"):
        install("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", ca.root_pem)
    assert manager.current is None  # nothing half-installed

    bundle = install(ca.sign_csr(csr, ALICE), ca.root_pem)
    assert manager.current is bundle and bundle.identity == ALICE


async def test_rotation_swaps_contexts_for_new_connections_only(
    ca: CertificateAuthority, issue: Issue
) -> None:
    alice, bob = issue(ALICE), issue(BOB)
    async with InboundSidecar(bob) as server:
        old_reader, old_writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=alice.client_context
        )
        first_alice = alice.current.serial  # type: ignore[union-attr]
        assert await ask(old_reader, old_writer) == f"mutual_tls {ALICE} {first_alice:x}"
        old_server_serial = peer_serial(old_writer)
        assert old_server_serial == bob.current.serial  # type: ignore[union-attr]

        for manager, identity in ((alice, ALICE), (bob, BOB)):
            manager.rotate(ca.sign_csr(manager.new_csr(), identity), ca.root_pem)
        assert alice.current.serial != first_alice  # type: ignore[union-attr]

        # The connection opened before the rotation keeps working with the old certificates.
        assert await ask(old_reader, old_writer) == f"mutual_tls {ALICE} {first_alice:x}"
        assert peer_serial(old_writer) == old_server_serial

        # A new connection uses the new certificates on both ends.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
        assert await ask(reader, writer) == f"mutual_tls {ALICE} {alice.current.serial:x}"  # type: ignore[union-attr]
        assert peer_serial(writer) == bob.current.serial != old_server_serial  # type: ignore[union-attr]
        writer.close()
        old_writer.close()


# --------------------------------------------------------------------------- over HTTP


def _sign_app(service: SigningService) -> web.Application:
    """The endpoint as the control plane's API is expected to expose it."""

    async def sign(request: web.Request) -> web.Response:
        try:
            result = await service.sign(await request.json())
        except CaError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.json_response(result.to_dict())

    app = web.Application()
    app.router.add_post("/api/v1/ca/sign", sign)
    return app


@contextlib.asynccontextmanager
async def _control_plane(service: SigningService) -> AsyncIterator[str]:
    runner = web.AppRunner(_sign_app(service))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_renew_over_http_and_refusals(tmp_path: Path) -> None:
    service, tokens = SigningService.open_local(tmp_path / "ca")
    token = tokens.issue_token(ALICE)
    async with _control_plane(service) as url:
        manager = CertificateManager(ALICE)
        async with asyncio.timeout(10):
            bundle = await renew(manager, CaClient(url, token))
        assert bundle.identity == ALICE and bundle.root_pem == service.ca.root_pem

        async with asyncio.timeout(10):
            with pytest.raises(CertificateFetchError, match="unknown or revoked token") as unknown:
                await CaClient(url, "stolen?").sign(build_csr(generate_key(), ALICE))
            assert unknown.value.status == 401
            with pytest.raises(CertificateFetchError, match=f"caller is authenticated as {ALICE}") as other:
                await CaClient(url, token).sign(build_csr(generate_key(), BOB))
            assert other.value.status == 403

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with pytest.raises(CertificateFetchError, match="cannot reach the CA") as down:
        async with asyncio.timeout(10):
            await CaClient(f"http://127.0.0.1:{dead}", token).sign(build_csr(generate_key(), ALICE))
    assert down.value.status == 0
    with pytest.raises(CertificateFetchError, match="must be http"):
        await CaClient("ftp://x", token).sign("csr")


async def test_keep_rotated_renews_at_half_ttl_and_survives_an_outage(tmp_path: Path) -> None:
    """2 s certificates: renewed about every second; a CA outage is retried, not fatal."""
    service, tokens = SigningService.open_local(tmp_path / "ca", ttl=timedelta(seconds=2))
    token = tokens.issue_token(ALICE)
    async with _control_plane(service) as url:
        manager = CertificateManager(ALICE)
        calls: list[str] = []
        outage = asyncio.Event()

        async def renew_once() -> None:
            calls.append("try")
            if outage.is_set():
                raise CertificateFetchError("CA is down (test)")
            await renew(manager, CaClient(url, token))

        stop = asyncio.Event()
        loop = keep_rotated(manager, renew_once, stop=stop, retry_min=0.05, retry_max=0.2)
        task = asyncio.create_task(loop)
        serials: set[int] = set()
        deadline = time.monotonic() + 15
        while len(serials) < 3 and time.monotonic() < deadline:
            if manager.current is not None:
                serials.add(manager.current.serial)
            await asyncio.sleep(0.05)
        assert len(serials) >= 3, f"only {len(serials)} certificates in 15 s"

        outage.set()
        tries_before = len(calls)
        held = manager.current
        await asyncio.sleep(2.5)  # past the rotation point: it keeps retrying, keeps the old cert
        assert len(calls) >= tries_before + 2
        assert manager.current is held
        outage.clear()
        for _ in range(200):  # up to 10 s
            if manager.current is not held:
                break
            await asyncio.sleep(0.05)
        assert manager.current is not held
        stop.set()
        async with asyncio.timeout(5):
            await task


FLAKY_HELPER = """
import os, runpy, sys
from pathlib import Path
state = Path(sys.argv[1])
if state.read_text() == "broken":
    sys.stderr.write("CSR helper broken on purpose (test)\\n")
    sys.exit(1)
sys.argv = sys.argv[1:]
runpy.run_module("meshkit.proxy.tls.csr_helper", run_name="__main__")
"""


async def test_a_failing_csr_helper_is_retried_and_the_certificate_keeps_serving(tmp_path: Path) -> None:
    """The sidecar's own renewal path (``SidecarCertificates``) with a helper that fails at will."""
    from meshkit.proxy.tls.sidecar import SidecarCertificates  # noqa: PLC0415

    service, tokens = SigningService.open_local(tmp_path / "ca", ttl=timedelta(seconds=3))
    state = tmp_path / "helper-state"
    state.write_text("broken")
    helper = [sys.executable, "-c", FLAKY_HELPER, str(state)]
    async with _control_plane(service) as url:
        certificates = SidecarCertificates(url, tokens.issue_token(ALICE), csr_helper=helper)
        stop = asyncio.Event()
        config = ConfigState()
        assert config.apply(static_snapshot("ratings", ALICE, app_port=1)) is None
        task = asyncio.create_task(certificates.run(config, stop))
        try:
            for _ in range(100):  # up to 5 s: the first tries fail, and are retried
                if certificates.last_error is not None:
                    break
                await asyncio.sleep(0.05)
            assert not certificates.ready and "broken on purpose" in (certificates.last_error or "")
            assert not task.done()
            state.write_text("ok")
            async with asyncio.timeout(20):
                await certificates.ready_event.wait()
            held = certificates.manager.current if certificates.manager else None
            assert held is not None
            state.write_text("broken")
            await asyncio.sleep(2.5)  # past the rotation point (1.5 s): retried, the old one serves
            assert certificates.manager is not None and certificates.manager.current is held
            assert "broken on purpose" in (certificates.last_error or "") and not task.done()
            assert certificates.server_context is held.server_context
            state.write_text("ok")
            for _ in range(200):  # up to 10 s
                if certificates.manager.current is not held:
                    break
                await asyncio.sleep(0.05)
            assert certificates.manager.current is not held and certificates.last_error is None
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task



async def test_keep_rotated_survives_an_unexpected_error(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one renewal (here a RuntimeError) is logged with its traceback and retried: the
    loop must not end, or the certificate would silently expire."""
    manager = LocalCertificateManager(ALICE)
    calls: list[int] = []

    async def renew_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug (test)")
        manager.rotate(ca.sign_csr(manager.new_csr(), ALICE), ca.root_pem)

    stop = asyncio.Event()
    task = asyncio.create_task(keep_rotated(manager, renew_once, stop=stop, retry_min=0.01, retry_max=0.05))
    try:
        for _ in range(200):  # up to 10 s
            if manager.current is not None:
                break
            await asyncio.sleep(0.05)
        assert manager.current is not None and len(calls) >= 2 and not task.done()
        assert any("failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task
