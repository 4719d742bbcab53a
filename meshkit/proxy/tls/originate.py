"""TLS origination: a cluster whose DestinationRule says ``tls.mode: SIMPLE`` is reached over TLS.

Istio's "Egress TLS Origination": the app sends plain HTTP to ``edition.cnn.com:80``; its sidecar
connects to the endpoint (port 443) with TLS, sends the SNI of the cluster (the DestinationRule's
``tls.sni``, else the host) and verifies the server's certificate as Envoy does with Istio's
defaults: signed by a trusted CA and naming the SNI host (or one of ``subjectAltNames``), unless
``insecureSkipVerify``. Trusted CAs: the snapshot's ``egress.ca_pem`` (the local mesh's external
stand-in CA), plus the system's CAs when ``egress.real_dns`` is on (real hosts), or when there is
no stand-in CA at all.

Snapshot: ``clusters.<name>.tls`` = ``{"mode": "SIMPLE", "sni": ..., "subject_alt_names": [...],
"insecure_skip_verify": false}`` (docs/snapshot.md). ``originations()`` checks those fields
(``ValueError`` naming the key) and builds one client ``SSLContext`` per trust setting, reused
from the previous snapshot when unchanged (building one that loads the system CAs costs ms).

It must not do: mutual TLS with workload certificates (``contexts``), serving TLS, or anything
but the standard library.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Origination:
    """How to open a TLS connection for one cluster."""

    sni: str
    context: ssl.SSLContext
    subject_alt_names: frozenset[str]
    trust: tuple[str | None, bool, bool, bool]  # (ca_pem, system CAs, verify, check hostname)
    # the pool key's TLS part (built once, read per request): connections with another SNI or trust
    # are never shared
    pool_tag: str = field(init=False)

    def __post_init__(self) -> None:
        names = ",".join(sorted(self.subject_alt_names))
        object.__setattr__(self, "pool_tag", f"simple:{self.sni}:{hash(self.trust)}:{names}")


class OriginationError(ssl.SSLError):
    """The server's certificate names none of the cluster's ``subject_alt_names``."""


def client_context(ca_pem: str | None, system: bool, verify: bool, hostname: bool = True) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_pem`` (and the system CAs with ``system``); without
    ``hostname`` the chain is verified and the name left to ``check_names``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.check_hostname = hostname
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if system:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


def originations(clusters: Any, egress: Any, previous: Mapping[str, Origination] | None = None
                 ) -> dict[str, Origination]:
    """The SIMPLE clusters of a snapshot's ``clusters``, each with its client context."""
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
        if not isinstance(tls, dict) or tls.get("mode") != "SIMPLE":
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
        trust = (ca_pem, real_dns or not ca_pem, not skip, not skip and not names)
        context = contexts.get(trust)
        if context is None:
            try:
                context = contexts[trust] = client_context(*trust)
            except ssl.SSLError as exc:
                raise ValueError(f"egress.ca_pem: not a usable CA certificate: {exc}") from None
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
