"""The sidecar's side of the key/CSR helper process (``csr_helper``): run it, read its answer.

``await make_key_and_csr(identity)`` starts ``python -m meshkit.proxy.tls.csr_helper IDENTITY``
with this interpreter and returns its ``KeyAndCsr`` (PEM strings). Bound it with
``asyncio.timeout``: when the call is cancelled or times out the helper is killed, so it
never outlives the call.

Every failure of the helper (cannot start, dies, prints something that is not its answer) is
a ``CsrHelperError``, a ``CertificateError``: the renewal loops log it, back off and retry
while the current certificate keeps serving.

It must not do: X.509 work (this process has no ``cryptography``; the helper does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from meshkit.proxy.tls.certinfo import CertificateError

HELPER_MODULE = "meshkit.proxy.tls.csr_helper"
SECRET_ENV = ("MESHKIT_CA_TOKEN",)  # the helper needs no token: it never talks to the CA
MAX_OUTPUT = 1 << 20


class CsrHelperError(CertificateError):
    """The key/CSR helper process failed (could not start, died, or printed no usable answer)."""


class KeyAndCsr(NamedTuple):
    key_pem: str
    csr_pem: str


def helper_command() -> list[str]:
    """The helper's command line without the identity: this interpreter, ``-m HELPER_MODULE``."""
    return [sys.executable, "-m", HELPER_MODULE]


def _answer(stdout: bytes) -> KeyAndCsr:
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CsrHelperError(f"CSR helper: expected a JSON object, got {stdout[:120]!r}")
    key, csr = doc.get("key"), doc.get("csr")
    if not isinstance(key, str) or not isinstance(csr, str):
        raise CsrHelperError("CSR helper: its answer lacks 'key' or 'csr'")
    return KeyAndCsr(key, csr)


async def make_key_and_csr(identity: str, command: Sequence[str] | None = None) -> KeyAndCsr:
    """Run the helper for ``identity`` (``command`` replaces ``helper_command()``, for tests)."""
    argv = [*(command if command is not None else helper_command()), identity]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=MAX_OUTPUT,
            env={name: value for name, value in os.environ.items() if name not in SECRET_ENV},
        )
    except OSError as exc:
        raise CsrHelperError(f"cannot start the CSR helper {argv[0]}: {exc}") from exc
    try:
        stdout, stderr = await proc.communicate()
    except OSError as exc:
        raise CsrHelperError(f"CSR helper {argv[0]}: cannot read its answer: {exc}") from exc
    finally:  # cancelled or timed out: do not leave it running
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()  # reaped at once after SIGKILL
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise CsrHelperError(f"CSR helper exited ({proc.returncode}): {lines[-1] if lines else 'no message'}")
    return _answer(stdout)
