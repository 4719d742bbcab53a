"""The key/CSR helper process (``python -m meshkit.proxy.tls.csr_helper``), its client, and the
``ssl``-only check of the CA's answer (``tls.verify``) that the running sidecar uses instead of
``cryptography``.

Real processes and a real CA. A helper that cannot start, dies or prints nonsense is a
``CsrHelperError`` (a ``CertificateError``, so the renewal loops retry it) and never outlives
its call.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from pathlib import Path

import pytest

from meshkit.control.ca import CertificateAuthority
from meshkit.proxy.tls import CertificateError, CertificateManager
from meshkit.proxy.tls.csr_client import CsrHelperError, make_key_and_csr
from meshkit.proxy.tls.verify import verify_issued
from meshkit.proxy.tls.x509 import build_csr, check_issued, generate_key, key_pem

from .conftest import ALICE, BOB, InboundSidecar, ask

LIMIT = 30.0  # seconds for one helper run: generous for a busy 2-core machine


async def _wait_gone(pid: int) -> bool:
    """True once the process has exited and been reaped (bounded: ~5 s)."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


async def _issue_via_helper(ca: CertificateAuthority, identity: str) -> CertificateManager:
    """What the sidecar does: key + CSR from the helper, the CA signs, ``install_verified`` checks."""
    async with asyncio.timeout(LIMIT):
        key, csr = await make_key_and_csr(identity)
    manager = CertificateManager(identity)
    manager.expect_key(key)
    manager.install_verified(ca.sign_csr(csr, identity), ca.root_pem)
    return manager


async def test_helper_key_and_ssl_checked_certificate_do_mutual_tls(ca: CertificateAuthority) -> None:
    alice, bob = await _issue_via_helper(ca, ALICE), await _issue_via_helper(ca, BOB)
    bundle = alice.current
    assert bundle is not None and bundle.identity == ALICE
    assert [c.spiffe_id for c in bundle.chain] == [ALICE] and bundle.root[0].spiffe_id is None
    async with InboundSidecar(bob) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=alice.client_context)
        assert await ask(reader, writer) == f"mutual_tls {ALICE} {bundle.serial:x}"
        writer.close()


def test_ssl_reads_what_cryptography_reads(ca: CertificateAuthority) -> None:
    """The admin page must not change: ssl's view of the chain and root equals cryptography's."""
    key = generate_key()
    chain = ca.sign_csr(build_csr(key, ALICE), ALICE)
    now = time.time()
    by_ssl, server, client = verify_issued(key_pem(key), chain, ca.root_pem, ALICE, now)
    by_cryptography = check_issued(key_pem(key), chain, ca.root_pem, ALICE, now)
    assert by_ssl == by_cryptography
    assert by_ssl.root[0].subject == "CN=meshkit root CA,O=cluster.local"
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED


def test_ssl_check_takes_the_identity_from_the_certificate_when_asked(ca: CertificateAuthority) -> None:
    key = generate_key()
    chain = ca.sign_csr(build_csr(key, BOB), BOB)
    issued, _, _ = verify_issued(key_pem(key), chain, ca.root_pem, None, time.time())
    assert issued.identity == BOB


async def test_helper_runs_once_and_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    wrapper = ("import os, runpy, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
               "sys.argv = sys.argv[1:]; "
               "runpy.run_module('meshkit.proxy.tls.csr_helper', run_name='__main__')")
    async with asyncio.timeout(LIMIT):
        key, csr = await make_key_and_csr(ALICE, [sys.executable, "-c", wrapper, str(pidfile)])
    assert "PRIVATE KEY" in key and "CERTIFICATE REQUEST" in csr
    assert await _wait_gone(int(pidfile.read_text()))


async def test_a_hung_helper_is_killed_when_the_call_times_out(tmp_path: Path) -> None:
    pidfile = tmp_path / "helper.pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(3.0):
            await make_key_and_csr(ALICE, [sys.executable, "-c", code, str(pidfile)])
    assert await _wait_gone(int(pidfile.read_text())), "the hung helper survived the call"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([sys.executable, "-c", "import sys; sys.exit(3)"], r"exited \(3\): no message"),
        ([sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(1)"],
         r"exited \(1\): boom"),
        ([sys.executable, "-c", "print('hello')"], "expected a JSON object"),
        ([sys.executable, "-c", "print('{}')"], "lacks 'key' or 'csr'"),
        (["/nonexistent/meshkit-python"], "cannot start the CSR helper"),
        ([sys.executable, "-m", "meshkit.proxy.tls.csr_helper", "extra"], r"exited \(2\): usage"),
    ],
)
async def test_a_broken_helper_is_a_csr_helper_error(command: list[str], message: str) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(CsrHelperError, match=message):
            await make_key_and_csr(ALICE, command)
    assert issubclass(CsrHelperError, CertificateError)  # what the renewal loops retry


async def test_the_helper_does_not_get_the_ca_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_CA_TOKEN", "secret-token")
    show = ("import json, os; "
            "print(json.dumps({'key': os.environ.get('MESHKIT_CA_TOKEN', 'absent'), 'csr': 'x'}))")
    async with asyncio.timeout(LIMIT):
        key, _ = await make_key_and_csr(ALICE, [sys.executable, "-c", show])
    assert key == "absent"
