"""Admission and status checks for Istio resources read from the Kubernetes API (plain dicts in).

Objects from the API server carry server-set metadata (uid, resourceVersion, managedFields,
...) and maybe a status; `as_istio_document` keeps what meshkit's loader reads. Then:

* `admission_messages`: what the validating webhook answers, for ONE incoming object: the
  loader's messages plus the analyzer's findings on that object alone. Findings that need
  other resources to be judged (a subset defined by a DestinationRule that may be applied a
  moment later, two VirtualServices for one host, ...) are left to the status, as Istio does:
  rejecting them would make the order of ``kubectl apply`` matter.
* `status_messages`: every finding about one object analysed together with the other Istio
  resources the operator knows of in the cluster; it feeds ``status`` (`meshkit.k8s.status`).
* `rejection_text`: the message the API server shows when it rejects, one line per error,
  formatted exactly as meshkit's CLI prints messages (``str(Message)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshkit.config import codes
from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.resources import Resource

# analyzer codes whose verdict depends on resources other than the one being admitted
CROSS_RESOURCE_CODES = frozenset({codes.MK0101, codes.MK0104, codes.MK0105, codes.MK0109, codes.MK0114})
_KEPT_METADATA = ("name", "namespace", "labels", "annotations")


def as_istio_document(obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """``apiVersion``, ``kind``, ``metadata`` (name, namespace, labels, annotations) and ``spec``."""
    metadata = obj.get("metadata") or {}
    kept = {key: metadata[key] for key in _KEPT_METADATA if metadata.get(key) is not None}
    if "name" not in kept and metadata.get("generateName"):
        kept["name"] = str(metadata["generateName"]) + "<generated>"
    if "namespace" not in kept and namespace:
        kept["namespace"] = namespace
    document: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept
    }
    if "spec" in obj:
        document["spec"] = obj["spec"]
    return document


def load_one(obj: dict[str, Any], namespace: str | None = None) -> tuple[Resource | None, list[Message]]:
    """The typed resource, or None and the loader's messages."""
    try:
        resources = load_resources(as_istio_document(obj, namespace))
    except ConfigError as error:
        return None, list(error.messages)
    return resources[0], []


def admission_messages(obj: dict[str, Any], namespace: str | None = None) -> list[Message]:
    """Loader messages, else the analyzer's findings on ``obj`` alone (cross-resource ones left out)."""
    resource, problems = load_one(obj, namespace)
    if resource is None:
        return problems
    return [m for m in analyze([resource]) if m.code not in CROSS_RESOURCE_CODES]


def status_messages(obj: dict[str, Any], others: Iterable[dict[str, Any]]) -> list[Message]:
    """Every finding about ``obj`` when analysed with ``others`` (objects that do not load are skipped)."""
    resource, problems = load_one(obj)
    if resource is None:
        return problems
    context: list[Resource] = []
    for other in others:
        loaded, _ = load_one(other)
        if loaded is not None and loaded.key != resource.key:
            context.append(loaded)
    return [m for m in analyze([resource, *context]) if m.resource == resource.ref]


def errors(messages: Iterable[Message]) -> list[Message]:
    return [m for m in messages if m.severity == Severity.ERROR]


def rejection_text(messages: Iterable[Message]) -> str:
    """One line per error, as the CLI prints them (``Error [MK0102] (VirtualService/ns/name field) text``)."""
    return "\n".join(str(m) for m in errors(messages))
