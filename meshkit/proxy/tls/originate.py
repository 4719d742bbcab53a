"""TLS origination: a cluster whose DestinationRule says ``tls.mode: SIMPLE`` or ``MUTUAL`` is reached
over TLS.

Istio's "Egress TLS Origination": the app sends plain HTTP to ``edition.cnn.com:80``; its sidecar
connects to the endpoint (port 443) with TLS, sends the SNI of the cluster (the DestinationRule's
``tls.sni``, else the host) and verifies the server's certificate as Envoy does with Istio's
defaults: signed by a trusted CA and naming the SNI host (or one of ``subjectAltNames``), unless
``insecureSkipVerify``. Trusted CAs: the snapshot's ``egress.ca_pem`` (the local mesh's external
stand-in CA), plus the system's CAs when ``egress.real_dns`` is on (real hosts), or when there is
no stand-in CA at all.

``MUTUAL`` (Istio's "Mutual TLS origination for egress traffic") also presents a client certificate:
the snapshot carries the PEMs of the DestinationRule's ``credentialName`` Secret (``client_cert_pem``,
``client_key_pem``; compiled from the Secret in the client's namespace) and its ``ca.crt``
(``ca_pem``), which then is the only CA the server's certificate is checked against. A credential
the control plane did not find (PEMs null) makes a context without a client certificate, whose
server check falls back to SIMPLE's CAs: the connection fails (Envoy's 503 "upstream connect
error") or the server refuses a client without a certificate.

Snapshot: ``clusters.<name>.tls`` = ``{"mode": "SIMPLE", "sni": ..., "subject_alt_names": [...],
"insecure_skip_verify": false}`` plus, for MUTUAL, ``credential``, ``client_cert_pem``,
``client_key_pem`` and ``ca_pem`` (docs/snapshot.md). ``originations()`` checks those fields
(``ValueError`` naming the key) and builds one client ``SSLContext`` per trust setting, reused
from the previous snapshot when unchanged (building one that loads the system CAs costs ms).

It must not do: mutual TLS with workload certificates (``contexts``), serving TLS, or anything
but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Origination:
    """How to open a TLS connection for one cluster."""

    sni: str
    context: ssl.SSLContext
    subject_alt_names: frozenset[str]
    # (ca_pem, system CAs, verify, check hostname, client cert PEM, client key PEM)
    trust: tuple[str | None, bool, bool, bool, str | None, str | None]
    # the pool key's TLS part (built once, read per request): connections with another SNI or trust
    # are never shared
    pool_tag: str = field(init=False)

    def __post_init__(self) -> None:
        names = ",".join(sorted(self.subject_alt_names))
        object.__setattr__(self, "pool_tag", f"simple:{self.sni}:{hash(self.trust)}:{names}")


class OriginationError(ssl.SSLError):
    """The server's certificate names none of the cluster's ``subject_alt_names``."""


def client_context(ca_pem: str | None, system: bool, verify: bool, hostname: bool = True, *,
                   cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_pem`` (and the system CAs with ``system``); without
    ``hostname`` the chain is verified and the name left to ``check_names``; with ``cert_pem`` and
    ``key_pem`` it presents that client certificate (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.check_hostname = hostname
    if cert_pem and key_pem:
        _load_client_certificate(context, cert_pem, key_pem)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if system:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` reads files only: the PEMs go through an owner-only file removed at once."""
    fd, path = tempfile.mkstemp(prefix="meshkit-client-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{key_pem.strip()}\n{cert_pem.strip()}\n")
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _pem(tls: Mapping[str, Any], key: str, where: str, marker: str) -> str | None:
    value = tls.get(key)
    if value is not None and (not isinstance(value, str) or marker not in value):
        raise ValueError(f"{where}.{key}: expected PEM ({marker}) or null")
    return value


def originations(clusters: Any, egress: Any, previous: Mapping[str, Origination] | None = None
                 ) -> dict[str, Origination]:
    """The SIMPLE and MUTUAL clusters of a snapshot's ``clusters``, each with its client context."""
    ca_pem: str | None = None
    real_dns = False
    if isinstance(egress, dict):
        ca_pem = egress.get("ca_pem")
        real_dns = egress.get("real_dns") is True
        if ca_pem is not None and (not isinstance(ca_pem, str) or "BEGIN CERTIFICATE" not in ca_pem):
            raise ValueError("egress.ca_pem: expected a PEM certificate or null")
    contexts = {o.trust: o.context for o in (previous or {}).values()}
    found: dict[str, Origination] = {}
    for name, spec in (clusters or {}).items():
        tls = spec.get("tls") if isinstance(spec, dict) else None
        if not isinstance(tls, dict) or tls.get("mode") not in ("SIMPLE", "MUTUAL"):
            continue
        where = f"clusters.{name}.tls"
        sni = tls.get("sni")
        if not isinstance(sni, str) or not sni:
            raise ValueError(f"{where}.sni: expected the server name to send, got {sni!r}")
        names = tls.get("subject_alt_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{where}.subject_alt_names: expected a list of names, got {names!r}")
        skip = tls.get("insecure_skip_verify", False)
        if not isinstance(skip, bool):
            raise ValueError(f"{where}.insecure_skip_verify: expected true or false, got {skip!r}")
        if skip:
            names = []
        cert, key = None, None
        # MUTUAL's ca.crt, or a caCertificates file; else the stand-ins' CA
        ca = _pem(tls, "ca_pem", where, "BEGIN CERTIFICATE") or ca_pem
        if tls.get("mode") == "MUTUAL":
            cert = _pem(tls, "client_cert_pem", where, "BEGIN CERTIFICATE")
            key = _pem(tls, "client_key_pem", where, "PRIVATE KEY")
        trust = (ca, (real_dns or not ca) and ca is ca_pem, not skip, not skip and not names, cert, key)
        context = contexts.get(trust)
        if context is None:
            try:
                context = contexts[trust] = client_context(*trust[:4], cert_pem=cert, key_pem=key)
            except ssl.SSLError as exc:
                raise ValueError(f"{where}: not a usable CA or client certificate: {exc}") from None
        found[name] = Origination(sni, context, frozenset(names), trust)
    return found


def check_names(ssl_object: Any, names: frozenset[str]) -> None:
    """Envoy's ``match_subject_alt_names``: the server's certificate must name one of ``names``."""
    if not names:
        return
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    offered = {value.lower() for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "DNS"}
    if not offered & {n.lower() for n in names}:
        raise OriginationError(
            f"certificate names {sorted(offered)}, none of subjectAltNames {sorted(names)}")
