"""Secrets: the certificates an HTTPS Gateway's ``credentialName`` names, and files a Deployment mounts.

Istio's ingress reads a Kubernetes Secret in the gateway workload's namespace (``istio-system``
for the ingress gateway): ``kubectl create -n istio-system secret tls httpbin-credential --key=...
--cert=...`` makes one of type ``kubernetes.io/tls`` with ``tls.crt``/``tls.key``; Istio also takes
a generic Secret with ``cert``/``key`` (``kubectl create secret generic ... --from-file=cert=...``).
``data`` is base64 (what kubectl writes), ``stringData`` plain text; both may be mixed, as in
Kubernetes. Secrets of type ``kubernetes.io/tls`` and ``Opaque`` (``kubectl create secret
generic``) are modelled: a DestinationRule's ``credentialName`` reads ``tls.crt``/``tls.key``/
``ca.crt`` (mutual TLS origination), and a Deployment may mount any of them as files
(`meshkit.config.volumes`). Other types (docker config, service-account tokens...) are still left
out with the loader's MK0009 warning (``is_tls_secret``).

The certificate and key are checked to be PEM of the right kind when loaded (a named error per
key); whether they match is the gateway proxy's check (it NACKs a snapshot whose pair does not).
Data only: no files, no sockets.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import field_validator, model_validator

from meshkit.config.resources import Resource
from meshkit.config.workloads import CoreResource

TLS_TYPE = "kubernetes.io/tls"
# (certificate key, private key key) in the order Istio looks for them
KEY_PAIRS = (("tls.crt", "tls.key"), ("cert", "key"))
CA_KEYS = ("ca.crt", "cacert")


def _keys(document: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    for section in ("data", "stringData"):
        value = document.get(section)
        if isinstance(value, dict):
            keys.update(str(k) for k in value)
    return keys


MODELLED_TYPES = (None, "Opaque", TLS_TYPE)


def is_tls_secret(document: Mapping[str, Any]) -> bool:
    """Is this Secret document one the local mesh models (type kubernetes.io/tls or Opaque)?"""
    if document.get("kind") != "Secret":
        return False
    keys = _keys(document)
    return document.get("type") in MODELLED_TYPES or any(c in keys and k in keys for c, k in KEY_PAIRS)


class Secret(CoreResource):
    """A Secret of type ``kubernetes.io/tls`` (a certificate pair) or ``Opaque`` (any files)."""

    kind: Literal["Secret"] = "Secret"
    type: str | None = None
    data: dict[str, str] | None = None
    string_data: dict[str, str] | None = None
    immutable: bool | None = None
    spec: None = None

    @field_validator("data")
    @classmethod
    def _base64(cls, data: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (data or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"data.{key}: not base64 (kubectl writes base64; use stringData "
                                 "for plain text)") from None
        return data

    @model_validator(mode="after")
    def _a_certificate_and_its_key(self) -> Secret:
        values = self.values()
        pair = next(((c, k) for c, k in KEY_PAIRS if c in values and k in values), None)
        if pair is None and self.type == TLS_TYPE:
            raise ValueError("a TLS Secret needs tls.crt and tls.key (type kubernetes.io/tls) "
                             "or cert and key")
        if pair is None:
            return self
        cert, key = pair
        if "-----BEGIN CERTIFICATE-----" not in values[cert]:
            raise ValueError(f"{cert}: not a PEM certificate")
        if "PRIVATE KEY-----" not in values[key]:
            raise ValueError(f"{key}: not a PEM private key")
        return self

    def values(self) -> dict[str, str]:
        """Every key's text: ``data`` decoded, then ``stringData`` over it (as the API server merges)."""
        found = {k: base64.b64decode(v).decode("utf-8", errors="replace")
                 for k, v in (self.data or {}).items()}
        found.update(self.string_data or {})
        return found

    def certificate_pair(self) -> tuple[str, str]:
        """(certificate chain PEM, private key PEM)."""
        values = self.values()
        for cert, key in KEY_PAIRS:
            if cert in values and key in values:
                return values[cert], values[key]
        raise ValueError("no certificate pair")  # the validator made sure there is one


    def has_pair(self) -> bool:
        values = self.values()
        return any(c in values and k in values for c, k in KEY_PAIRS)

    def ca_certificate(self) -> str | None:
        """``ca.crt`` (or ``cacert``): the CA a mutual-TLS client checks its server with."""
        values = self.values()
        return next((values[k] for k in CA_KEYS if k in values), None)


def find_secret(resources: Sequence[Resource], name: str, namespaces: Sequence[str]) -> Secret | None:
    """The TLS Secret ``name`` (one with a certificate pair) in the first of ``namespaces`` that has one."""
    secrets = {(r.metadata.namespace, r.metadata.name): r for r in resources
               if isinstance(r, Secret) and r.has_pair()}
    for namespace in namespaces:
        found = secrets.get((namespace, name))
        if found is not None:
            return found
    return None


def credential_pairs(resources: Sequence[Resource]) -> Callable[[str, Sequence[str]], tuple[str, str] | None]:
    """``find(name, namespaces)`` -> the (certificate, key) PEM pair of that TLS Secret, or None."""
    def find(name: str, namespaces: Sequence[str]) -> tuple[str, str] | None:
        secret = find_secret(resources, name, namespaces)
        return secret.certificate_pair() if secret is not None else None
    return find
