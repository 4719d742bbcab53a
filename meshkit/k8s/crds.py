"""CustomResourceDefinitions for the Istio kinds meshkit implements, generated from the pydantic models.

``python -m meshkit.k8s.crds > operator/deploy/base/crds.yaml`` writes them; a test fails when
the committed file drifts from the models. The schemas are *structural* (what Kubernetes
requires): no ``$ref`` (definitions are inlined), every node typed, no ``anyOf`` of types
(``X | None`` becomes an optional ``X``), no defaults (the API server stores what the user
wrote). ``x-kubernetes-preserve-unknown-fields`` is set only on objects whose model lists Istio
fields meshkit does not implement: the API server then keeps such a field and the admission
webhook rejects it with meshkit's "is not supported by meshkit" message instead of pruning it
silently.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import yaml

from meshkit.config.kinds import ISTIO_KINDS as RESOURCE_KINDS
from meshkit.config.resources import IstioModel, Resource

# keywords a structural schema may carry, copied through as they are
_COPIED = ("description", "enum", "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum",
           "exclusiveMinimum", "exclusiveMaximum", "pattern", "format")
# pydantic keywords that carry no meaning for Kubernetes
_DROPPED = ("title", "default", "additionalProperties", "const", "examples")

SHORT_NAMES = {"VirtualService": ["vs"], "DestinationRule": ["dr"], "PeerAuthentication": ["pa"],
               "AuthorizationPolicy": ["ap"], "EnvoyFilter": ["ef"], "RequestAuthentication": ["ra"]}
STORAGE_VERSION = "v1"


class SchemaError(ValueError):
    """A model uses a construct that has no structural-schema equivalent here."""


@functools.cache
def _models_by_name() -> dict[str, type[IstioModel]]:
    found: dict[str, type[IstioModel]] = {}
    pending: list[type[IstioModel]] = [IstioModel]
    while pending:
        model = pending.pop()
        found[model.__name__] = model
        pending.extend(model.__subclasses__())
    return found


def structural(schema: dict[str, Any], definitions: dict[str, Any], where: str = "spec") -> dict[str, Any]:
    """One pydantic JSON-schema node -> a structural OpenAPI v3 node (recursively, refs inlined)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        inlined = structural(definitions[name], definitions, where)
        if "description" in schema:
            inlined["description"] = schema["description"]
        return inlined
    if "anyOf" in schema:
        members = [m for m in schema["anyOf"] if m.get("type") != "null"]
        if len(members) != 1:
            raise SchemaError(f"{where}: a union of several types has no structural form: {schema['anyOf']}")
        merged = {**{k: v for k, v in schema.items() if k != "anyOf"}, **members[0]}
        return structural(merged, definitions, where)
    kind = schema.get("type")
    if kind is None:
        # `Any`: the one place a free-form value is needed
        return {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {"type": kind}
    for key in _COPIED:
        if key in schema:
            out[key] = schema[key]
    unknown = set(schema) - set(_COPIED) - set(_DROPPED) - {"type", "properties", "required", "items",
                                                             "additionalProperties", "propertyNames"}
    if unknown:
        raise SchemaError(f"{where}: JSON-schema keywords {sorted(unknown)} have no structural mapping")
    if kind == "array":
        out["items"] = structural(schema.get("items", {}), definitions, f"{where}[]")
    elif kind == "object":
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if properties is not None:
            out["properties"] = {
                name: structural(value, definitions, f"{where}.{name}") for name, value in properties.items()
            }
            if schema.get("required"):
                out["required"] = list(schema["required"])
            model = _models_by_name().get(str(schema.get("title", "")))
            if model is not None and model.unsupported_fields:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(extra, dict):
            out["additionalProperties"] = structural(extra, definitions, f"{where}.*")
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def spec_schema(resource: type[Resource]) -> dict[str, Any]:
    """The structural schema of ``resource``'s ``spec``."""
    full = resource.model_json_schema(by_alias=True)
    definitions = full.get("$defs", {})
    return structural(full["properties"]["spec"], definitions, f"{resource.__name__}.spec")


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Written by the meshkit operator (meshkit.k8s.status).",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
        "validationMessages": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "level": {"type": "string"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


def crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition for one Istio kind: every version served, ``v1`` stored."""
    kind = resource.__name__
    schema = {
        "type": "object",
        "properties": {"spec": spec_schema(resource), "status": STATUS_SCHEMA},
    }
    if "spec" in resource.model_json_schema(by_alias=True).get("required", []):
        schema["required"] = ["spec"]
    group_category = resource.group.replace(".", "-")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural(kind)}.{resource.group}",
            "labels": {"app.kubernetes.io/part-of": "meshkit", "app.kubernetes.io/component": "crds"},
        },
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural(kind),
                "singular": kind.lower(),
                "shortNames": SHORT_NAMES.get(kind, []),
                "categories": ["istio-io", group_category],
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    # v1 where Istio has it; EnvoyFilter only exists as v1alpha3
                    "storage": version == (STORAGE_VERSION if STORAGE_VERSION in resource.versions
                                           else resource.versions[0]),
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string",
                         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
                for version in resource.versions
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(model) for model in RESOURCE_KINDS.values()]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-documents out in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    """The multi-document YAML committed as ``operator/deploy/base/crds.yaml``."""
    header = "# Generated by `python -m meshkit.k8s.crds` from meshkit/config/resources.py; do not edit.\n"
    body = yaml.dump_all(
        all_crds(), Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=110
    )
    return header + body


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
