"""Keys and certificate times without the modules a sidecar should not load (issue 19, RSS).

``tls.contexts.load_pem_chain`` loads a chain and key held in memory: from memfd files on Linux
(no ``tempfile``, the key never on a disk), from a private temporary directory elsewhere; both
ways load the same pair and refuse a key that is not the leaf's. ``tls.verify.cert_time_to_seconds``
reads validity times as ``ssl.cert_time_to_seconds`` does, without ``time.strptime``.
``tests/e2e/test_sidecar_modules.py`` checks that a running sidecar loads none of those modules.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from meshkit.proxy.tls import contexts
from meshkit.proxy.tls.verify import cert_time_to_seconds
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.proxy.conftest import ROOT

CA, CA_KEY = issue_ca()
CERT, KEY = issue_server(["shop.example.com"], CA, CA_KEY)
OTHER_KEY = issue_server(["shop.example.com"], CA, CA_KEY)[1]


def _handshake_name(context: ssl.SSLContext) -> str:
    """The served certificate's DNS name, through a handshake in memory."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=pem(CA))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname="shop.example.com")
    server = context.wrap_bio(to_server, to_client, server_side=True)
    pending = [client, server]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
    assert not pending
    cert = client.getpeercert()
    return str(dict(cert["subjectAltName"])["DNS"])


@pytest.mark.parametrize("in_memory", [True, False], ids=["memfd", "temporary-directory"])
def test_a_pair_loads_from_memory_either_way(in_memory: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if in_memory:
        assert contexts._in_memory_files(), "this Linux has memfd_create and /proc: the memfd way runs"
    else:
        monkeypatch.setattr(contexts, "_in_memory_files", lambda: False)
    before = set(os.listdir("/proc/self/fd"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    contexts.load_pem_chain(context, pem(CERT), key_pem(KEY))
    assert _handshake_name(context) == "shop.example.com"
    assert set(os.listdir("/proc/self/fd")) == before  # the memory files are closed again
    with pytest.raises(ssl.SSLError):  # a key that is not the leaf's
        contexts.load_pem_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), pem(CERT), key_pem(OTHER_KEY))


def test_build_contexts_loads_no_tempfile() -> None:
    code = (
        "import sys\n"
        "from meshkit.proxy.tls.contexts import build_contexts\n"
        "from meshkit.proxy.tls.verify import cert_time_to_seconds\n"
        f"build_contexts({pem(CERT)!r}, {key_pem(KEY)!r}, {pem(CA)!r})\n"
        "cert_time_to_seconds('May  9 00:00:00 2027 GMT')\n"
        "print(sorted(m for m in ('tempfile', 'shutil', 'bz2', 'lzma', '_strptime', 'calendar') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_certificate_times_read_as_ssl_reads_them() -> None:
    start = datetime(1970, 1, 1, tzinfo=UTC)
    moments = [start + timedelta(seconds=s) for s in range(0, 4_000_000_000, 7_777_777)]
    moments += [datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]
    for moment in moments:
        for text in (moment.strftime("%b %d %H:%M:%S %Y GMT"),  # zero-padded day
                     f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S %Y} GMT"):  # as OpenSSL prints it
            assert cert_time_to_seconds(text) == ssl.cert_time_to_seconds(text), text
    lower = "may  9 00:00:00 2027 GMT"
    assert cert_time_to_seconds(lower) == ssl.cert_time_to_seconds(lower)


@pytest.mark.parametrize("text", ["", "Mai  9 00:00:00 2027 GMT", "May  9 00:00:00 2027 UTC",
                                  "May 32 00:00:00 2027 GMT", "May  9 24:00:00 2027 GMT",
                                  "May  9 00:00 2027 GMT", "May  9 00:00:00 GMT"])
def test_a_bad_certificate_time_is_a_value_error_naming_it(text: str) -> None:
    with pytest.raises(ValueError) as ours:
        cert_time_to_seconds(text)
    assert repr(text) in str(ours.value)
    with pytest.raises(ValueError):  # ssl refuses it as well
        ssl.cert_time_to_seconds(text)
