"""The ``ssl.SSLContext``s of mutual TLS, and the peer's SPIFFE id after a handshake.

* ``build_contexts(cert_chain_pem, key_pem, root_pem)`` makes the (server, client) pair: both
  require and verify the peer's certificate against the root bundle. SPIFFE ids are URI SANs,
  not DNS names, so hostname checking is off and the caller checks the peer's identity itself
  after the handshake;
* ``peer_identity`` / ``check_peer_identity`` do that check, once per connection, from the
  standard library's decode of the verified certificate (``SSLObject.getpeercert()``);
* ``load_pem_chain(context, cert_chain_pem, key_pem)`` loads a certificate chain and key held in
  memory (``ssl`` reads them only from files): on Linux from anonymous memory files
  (``memfd_create``, read back through ``/proc/self/fd``), so the key never touches a disk and the
  sidecar does not import ``tempfile`` (with ``shutil``, ``bz2`` and ``lzma``: about 0.5 MiB of RSS
  in every sidecar); elsewhere from a private temporary directory.

The standard library's ``ssl`` does everything here.

It must not do: hold state, open sockets, or import ``cryptography`` (the running sidecar never
loads it; that is ``x509``, for the helper process, tests and tools).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Collection
from typing import Any

from meshkit.proxy.tls.certinfo import CertificateError


class PeerIdentityError(ConnectionError):
    """The peer completed the TLS handshake but is not one of the identities we expected."""


# --------------------------------------------------------------------------- identities


def identity_from_decoded(cert: dict[str, Any]) -> str | None:
    """The SPIFFE id in a certificate decoded by ``ssl`` (``getpeercert()``); None for none or several."""
    spiffe = [
        value for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and value.startswith("spiffe://")
    ]
    return spiffe[0] if len(spiffe) == 1 else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer's SPIFFE id after a handshake (``transport.get_extra_info('ssl_object')``).

    ``getpeercert()`` decodes the certificate only when the handshake verified it (our contexts
    always require that), so an unverified certificate has no identity.
    """
    if ssl_object is None:
        return None
    decoded = ssl_object.getpeercert()
    return identity_from_decoded(decoded) if decoded else None


def check_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, allowed: Collection[str]) -> str:
    """Return the peer's SPIFFE id, or raise ``PeerIdentityError`` naming what was expected.

    The outbound side calls this with the cluster's ``tls.server_identities``.
    """
    identity = peer_identity(ssl_object)
    if identity is None or identity not in allowed:
        raise PeerIdentityError(
            f"peer presented identity {identity or '(none)'}, expected one of {sorted(allowed)}"
        )
    return identity


# --------------------------------------------------------------------------- contexts


def _in_memory_files() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def load_pem_chain(context: ssl.SSLContext, cert_chain_pem: str, key_pem: str) -> None:
    """``context.load_cert_chain`` from PEM text (ssl.SSLError when they do not load or match)."""
    if _in_memory_files():
        fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("meshkit-cert", "meshkit-key")]
        try:
            for fd, text in zip(fds, (cert_chain_pem, key_pem), strict=True):
                os.write(fd, text.encode())
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile  # noqa: PLC0415 (no memfd_create: not Linux)

    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as directory:  # 0700: only this process
        cert_file, key_file = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert_file, cert_chain_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        context.load_cert_chain(cert_file, key_file)


def _context(server_side: bool, root_pem: str, cert_chain_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not server_side:
        ctx.check_hostname = False  # SPIFFE ids are URI SANs: verified by check_peer_identity
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the bundle is the anchor, even an intermediate
    ctx.load_verify_locations(cadata=root_pem)
    load_pem_chain(ctx, cert_chain_pem, key_pem)  # also checks that the key matches the leaf
    return ctx


def build_contexts(cert_chain_pem: str, key_pem: str, root_pem: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS, the key loaded from memory (``load_pem_chain``)."""
    try:
        server = _context(True, root_pem, cert_chain_pem, key_pem)
        client = _context(False, root_pem, cert_chain_pem, key_pem)
    except ssl.SSLError as exc:
        raise CertificateError(f"cannot build TLS contexts: {exc}") from exc
    return server, client
