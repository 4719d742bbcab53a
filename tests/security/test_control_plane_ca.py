"""The sidecar's certificate client against the REAL control plane (meshkit.control.server) on 127.0.0.1."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from meshkit.control.server import run_control_plane
from meshkit.proxy.tls import CertificateManager
from meshkit.proxy.tls.ca_client import CaClient, CertificateFetchError
from meshkit.proxy.tls.renewal import renew
from meshkit.proxy.tls.x509 import build_csr, generate_key

from .conftest import ALICE, BOB, InboundSidecar, ask


async def test_sidecars_get_certificates_from_the_control_plane_and_talk_mtls(tmp_path: Path) -> None:
    running = await run_control_plane(
        "127.0.0.1", 0, tmp_path, record_address=False, ca_ttl=timedelta(hours=1)
    )
    async with running:
        tokens = running.control_plane.tokens
        alice, bob = CertificateManager(ALICE), CertificateManager(BOB)
        async with asyncio.timeout(20):
            await renew(alice, CaClient(running.url, tokens.issue_token(ALICE)))
            bob_token = tokens.issue_token(BOB)
            await renew(bob, CaClient(running.url, bob_token))

            # Bob's token cannot get Alice's identity, whatever the CSR says.
            with pytest.raises(CertificateFetchError, match=f"authenticated as {BOB}") as err:
                await CaClient(running.url, bob_token).sign(build_csr(generate_key(), ALICE))
            assert err.value.status == 403

            async with InboundSidecar(bob) as server:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", server.port, ssl=alice.client_context
                )
                assert (await ask(reader, writer)).startswith(f"mutual_tls {ALICE} ")
                writer.close()

    assert alice.current is not None
    lifetime = alice.current.not_after - alice.current.installed_at
    assert 3500 < lifetime <= 3600 + 5  # the control plane's configured TTL reached the sidecar
    # The root survives a control-plane restart: old certificates stay valid.
    again = await run_control_plane("127.0.0.1", 0, tmp_path, record_address=False)
    async with again:
        assert again.control_plane.signer is not None
        assert again.control_plane.signer.root_pem == alice.current.root_pem


async def test_a_token_file_is_read_again_before_every_csr(tmp_path: Path) -> None:
    """Kubernetes rotates projected service-account tokens: the sidecar must not cache the first one."""
    from meshkit.proxy.tls.sidecar import SidecarCertificates  # noqa: PLC0415

    running = await run_control_plane("127.0.0.1", 0, tmp_path, record_address=False)
    async with running:
        token_file = tmp_path / "token"
        token_file.write_text("stale-token-that-the-ca-never-issued\n")
        certificates = SidecarCertificates(running.url, token_file.read_text(), str(token_file))
        certificates.manager = CertificateManager(ALICE)
        async with asyncio.timeout(20):
            with pytest.raises(CertificateFetchError) as refused:
                await certificates._renew_once()
            assert refused.value.status == 401
            token_file.write_text(running.control_plane.tokens.issue_token(ALICE) + "\n")
            await certificates._renew_once()
    assert certificates.ready and certificates.rotations == 1


async def test_a_token_revoked_in_the_file_stops_working_while_the_control_plane_runs(tmp_path: Path) -> None:
    """The runtime revokes a removed instance's token in the token file (another process): the
    running CA must refuse it from then on, even a token it loaded when it started (a control
    plane restarted under running sidecars), and keep accepting the tokens still in the file."""
    from meshkit.control.ca import TOKENS_FILE, BootstrapTokens  # noqa: PLC0415

    path = tmp_path / "ca" / TOKENS_FILE
    runtime = BootstrapTokens.open(path)  # as `meshkit up` / `meshkit scale` open it
    kept, removed = runtime.issue_token(ALICE), runtime.issue_token(ALICE)
    running = await run_control_plane("127.0.0.1", 0, tmp_path, record_address=False)
    async with running:
        late = BootstrapTokens.open(path).issue_token(BOB)  # issued after the start
        async with asyncio.timeout(20):
            for token, who in ((kept, ALICE), (removed, ALICE), (late, BOB)):
                await CaClient(running.url, token).sign(build_csr(generate_key(), who))
            assert BootstrapTokens.open(path).revoke_digests(
                [BootstrapTokens.digest(removed), BootstrapTokens.digest(late)]) == 2
            for token, who in ((removed, ALICE), (late, BOB)):
                with pytest.raises(CertificateFetchError) as refused:
                    await CaClient(running.url, token).sign(build_csr(generate_key(), who))
                assert refused.value.status == 401
            await CaClient(running.url, kept).sign(build_csr(generate_key(), ALICE))
