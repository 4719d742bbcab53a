"""A gateway's HTTPS server certificates: the snapshot's ``gateway_tls.servers`` checked and loaded.

``gateway_tls.servers[]`` = ``{"gateway", "server", "port", "hosts", "credential", "cert_pem",
"key_pem"}``: one entry per HTTPS server of a Gateway selecting this proxy, with the certificate
chain and key of the TLS Secret its ``credentialName`` names (docs/snapshot.md).
``server_certificates()`` checks them and loads each pair into a server ``SSLContext`` once (a pair
that does not load NACKs the snapshot, naming the entry); unchanged pairs keep the previous
snapshot's context. ``tls.serving`` serves them.

It must not do: accept connections (``serving``), or anything but the standard library.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.proxy.sni import name_matches
from meshkit.proxy.tls.contexts import load_pem_chain


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """One HTTPS server of the snapshot: the hosts it answers for and its loaded certificate."""

    hosts: tuple[str, ...]
    context: ssl.SSLContext
    pair: tuple[str, str]  # (cert_pem, key_pem): the context's key for reuse

    def covers(self, name: str | None) -> bool:
        """Does one of the server's hosts answer for the SNI ``name`` (``*`` also for no name)?"""
        return any(pattern == "*" or (name is not None and name_matches(pattern, name))
                   for pattern in self.hosts)


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS server context with this certificate chain and key (ssl.SSLError when they do not load)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_pem_chain(context, cert_pem, key_pem)
    return context


def server_certificates(section: Any, previous: Sequence[ServerCertificate] = ()) -> list[ServerCertificate]:
    """The snapshot's ``gateway_tls`` checked and loaded (ValueError naming the key)."""
    if section is None:
        return []
    if not isinstance(section, dict) or not isinstance(section.get("servers"), list):
        raise ValueError(f"gateway_tls: expected {{\"servers\": [...]}} or null, got {section!r}")
    known = {c.pair: c.context for c in previous}
    loaded: list[ServerCertificate] = []
    for index, server in enumerate(section["servers"]):
        where = f"gateway_tls.servers[{index}]"
        if not isinstance(server, dict):
            raise ValueError(f"{where}: expected an object, got {server!r}")
        hosts = server.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ValueError(f"{where}.hosts: expected a list of host names, got {hosts!r}")
        cert_pem, key_pem = server.get("cert_pem"), server.get("key_pem")
        if not isinstance(cert_pem, str) or "BEGIN CERTIFICATE" not in cert_pem:
            raise ValueError(f"{where}.cert_pem: expected a PEM certificate chain")
        if not isinstance(key_pem, str) or "PRIVATE KEY" not in key_pem:
            raise ValueError(f"{where}.key_pem: expected a PEM private key")
        pair = (cert_pem, key_pem)
        context = known.get(pair)
        if context is None:
            try:
                context = known[pair] = server_context(cert_pem, key_pem)
            except (ssl.SSLError, OSError) as exc:
                credential = server.get("credential")
                raise ValueError(f"{where}: the certificate and key of Secret {credential!r} do not load: "
                                 f"{exc}") from None
        loaded.append(ServerCertificate(tuple(h.lower() for h in hosts), context, pair))
    return loaded
