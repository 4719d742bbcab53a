"""Mutual TLS for the sidecar: certificates, ``ssl`` contexts, peer SPIFFE ids, renewal.

What it is for: the sidecar's workload certificate (bootstrap from the control plane's CA and
rotation at half its lifetime, or files with ``--tls-dir``), the ``ssl.SSLContext``s built from
it, PeerAuthentication on the inbound listener and the peer check on the outbound side.

Inside (each module's docstring says more; import-linter keeps these layers, top to bottom)::

    sidecar | static | inbound | csr_helper   what proxy.main / admin use; the helper process;
      | serving                                a gateway's HTTPS listener (certificate by SNI)
    renewal                                  one renewal, and the half-life loop
    ca_client | csr_client                   POST /api/v1/ca/sign; run the key/CSR helper
    x509                                     cryptography: keys, CSRs, checks (helper, tests)
    manager                                  the current certificate, swapped atomically
    verify                                   the CA's answer checked with ``ssl`` alone
    contexts | sniff                         SSLContexts and peer ids; TLS-or-plaintext peek
    originate | servercerts                  TLS origination (SIMPLE clusters); a gateway's HTTPS certificates
    certinfo                                 plain data and ``CertificateError``

The rest of the sidecar imports the names below from ``meshkit.proxy.tls``, and the three
entry points by module (``tls.sidecar.SidecarCertificates``, ``tls.static.StaticCertificates``,
``tls.inbound.MtlsAcceptor``), which ``proxy.main`` loads only for a sidecar that does mTLS.
This module imports no asyncio: the helper process (a subpackage, so it runs this first) stays
quick to start.

What it must not do: import ``cryptography`` anywhere but ``x509``, which only the short-lived
helper process ``python -m meshkit.proxy.tls.csr_helper`` imports (plus tests and tools): it
costs ~10 MiB of RSS in every process that loads it (import-linter checks the imports,
tests/security/test_sidecar_no_cryptography.py the running process).
"""

from meshkit.proxy.tls.certinfo import CHAIN_FILE, KEY_FILE, ROOT_FILE, CertificateError, CertificateInfo
from meshkit.proxy.tls.contexts import (
    PeerIdentityError,
    build_contexts,
    check_peer_identity,
    identity_from_decoded,
    peer_identity,
)
from meshkit.proxy.tls.manager import CertificateBundle, CertificateManager

__all__ = [
    "CHAIN_FILE",
    "KEY_FILE",
    "ROOT_FILE",
    "CertificateBundle",
    "CertificateError",
    "CertificateInfo",
    "CertificateManager",
    "PeerIdentityError",
    "build_contexts",
    "check_peer_identity",
    "identity_from_decoded",
    "peer_identity",
]
