"""The HTTPS half of `meshkit.runtime.curl`: the TLS connection a pod's curl opens for an ``https://`` URL.

A pod's curl, with its sidecar as ``HTTPS_PROXY``, sends ``CONNECT host:443 HTTP/1.1`` to the sidecar's
outbound port, and once the sidecar answers ``200`` does its own TLS handshake through that tunnel
(SNI = the URL's host) and checks the certificate; without a proxy (``legacy``, loopback URLs) it
does the same handshake straight to the server. This module does those steps on a blocking socket
and says what failed in curl's own words, so `meshkit.runtime.exec_command` can map them to curl's
exit codes: ``SSL certificate problem: ...`` (60), ``OpenSSL SSL_connect: ...`` / ``SSL connect
error ...`` (35), ``CONNECT tunnel failed, response N`` and ``Proxy CONNECT aborted`` (56). A refused
connection or a timeout is left to the caller as the ``OSError`` it is (7, 28).

Trust, as a pod's CA bundle: the system's default CAs (for meshes with ``--real-dns``) plus the
external stand-ins' CA, ``<MESHKIT_HOME>/external-tls/ca.pem`` (`meshkit.runtime.standin_tls`), which
stands in for the public CAs that sign the real hosts. ``--cacert FILE`` replaces that bundle, as it
does for curl; ``-k`` turns verification off.

It must not: route anything (which address to dial is `meshkit.runtime.curl`'s decision), print, or
make certificates.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

from meshkit.runtime.standin_tls import DIRECTORY as STANDIN_DIRECTORY

MAX_PROXY_HEAD = 16 * 1024  # bytes of the proxy's answer to CONNECT we read before giving up on it
NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class TlsFailure(Exception):
    """The tunnel or the handshake failed; the text is curl's message for it."""


def standin_ca(home: Path) -> Path:
    """The external stand-ins' CA certificate in the state dir ``home`` (it may not exist yet)."""
    return home / STANDIN_DIRECTORY / "ca.pem"


def client_context(home: Path, *, insecure: bool = False, cacert: str | None = None) -> ssl.SSLContext:
    """The TLS client context of a pod's curl: system CAs + the stand-ins' CA, or ``cacert`` alone.

    Raises ``ValueError`` when ``cacert`` cannot be read (curl's exit 77).
    """
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cacert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile=cacert)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"error setting certificate verify locations: CAfile: {cacert} "
                             f"({error})") from None
    else:
        context = ssl.create_default_context()
        standin = standin_ca(home)
        with contextlib.suppress(OSError, ssl.SSLError):  # no stand-ins yet: the system CAs alone
            context.load_verify_locations(cafile=str(standin))
    context.set_alpn_protocols(["http/1.1"])
    return context


def authority(host: str, port: int) -> str:
    """``host:port`` as CONNECT and Host write it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_tunnel(sock: socket.socket, target: str) -> None:
    """``CONNECT target HTTP/1.1`` on ``sock`` (connected to the proxy); returns once the proxy said 200.

    Anything after the proxy's answer is the server's, so the answer is read byte by byte up to its
    blank line (it is a few dozen bytes, once per request).
    """
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        try:
            byte = sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            byte = b""
        if not byte:
            raise TlsFailure("Proxy CONNECT aborted")
        head += byte
        if len(head) > MAX_PROXY_HEAD:
            raise TlsFailure("CONNECT tunnel failed, response too large")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    code = parts[1] if len(parts) > 1 and parts[0].startswith("HTTP/") else ""
    if code != "200":
        raise TlsFailure(f"CONNECT tunnel failed, response {code or repr(status_line)}")


def handshake(sock: socket.socket, context: ssl.SSLContext, server_name: str, where: str) -> ssl.SSLSocket:
    """TLS over ``sock`` with SNI ``server_name``; ``where`` (``host:port``) is for the messages.

    On failure ``sock`` is closed and `TlsFailure` says why, as curl would; a timeout stays a
    ``TimeoutError``.
    """
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except ssl.SSLCertVerificationError as error:
        sock.close()
        if error.verify_code in NAME_MISMATCH:  # curl checks the name itself, with its own words
            raise TlsFailure(f"SSL: no alternative certificate subject name matches target host name "
                             f"'{server_name}'") from None
        raise TlsFailure(f"SSL certificate problem: {error.verify_message}") from None
    except TimeoutError:
        sock.close()
        raise
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ConnectionError) as error:
        sock.close()  # the peer closed (or reset) the connection during the handshake
        raise TlsFailure(f"OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to {where}") from error
    except ssl.SSLError as error:
        sock.close()
        raise TlsFailure(f"SSL connect error in connection to {where}: {error.reason or error}") from None
