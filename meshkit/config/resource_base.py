"""The machinery every meshkit resource model shares: durations, the base model, the envelope.

`Duration`/`DurationStr` (Istio's Go-syntax durations, ``.ms`` in milliseconds), `IstioModel`
(camelCase aliases, extra fields forbidden, ``unsupported_fields``/``unsupported_values``),
`WorkloadSelector` (Istio's shared ``selector`` type), and the resource envelope `ObjectMeta` and
`Resource` (``apiVersion``/``kind``/``metadata``/``spec``, ``to_dict``) that every kind extends.

It must not define a kind or know any kind's fields (those are `virtual_service`,
`destination_rule`, `security`, `tracing` and the other kind modules), nor import any other meshkit
module: every model module imports this one. Importers use `meshkit.config.resources`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# ---------------------------------------------------------------------------------------------
# Durations ("7s", "500ms", "1m30s", "1.5s") exposed as milliseconds
# ---------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6}


class Duration(str):
    """A duration written as Istio writes it (Go syntax); ``.ms`` is the value in milliseconds."""

    __slots__ = ()

    @property
    def ms(self) -> int:
        return parse_duration_ms(self)


def parse_duration_ms(text: str) -> int:
    """``"1.5s"`` -> 1500. Raises ValueError with the accepted syntax on anything else."""
    value = text.strip()
    total = 0.0
    position = 0
    for part in _DURATION_PART.finditer(value):
        if part.start() != position:
            break
        total += float(part.group(1)) * _UNIT_MS[part.group(2)]
        position = part.end()
    if not value or position != len(value):
        raise ValueError(f'invalid duration "{text}" (expected e.g. "7s", "500ms", "1.5s", "1m", "1h")')
    return round(total)


def _to_duration(value: str) -> Duration:
    parse_duration_ms(value)
    return Duration(value)


DurationStr = Annotated[str, AfterValidator(_to_duration)]


# ---------------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------------


class IstioModel(BaseModel):
    """Base of every spec model: camelCase aliases, extra fields forbidden."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    # real Istio fields (by their YAML name) that meshkit does not implement
    unsupported_fields: ClassVar[frozenset[str]] = frozenset()
    # field alias -> Istio enum values meshkit does not implement
    unsupported_values: ClassVar[dict[str, frozenset[str]]] = {}



class WorkloadSelector(IstioModel):
    match_labels: dict[str, str] | None = None


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


class ObjectMeta(IstioModel):
    unsupported_fields = frozenset(
        {"uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "managedFields",
         "generateName", "finalizers", "ownerReferences", "selfLink", "deletionGracePeriodSeconds"}
    )

    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


_DUMP: dict[str, Any] = {"mode": "json", "by_alias": True, "exclude_none": True}  # to_dict's settings
DUMP_SPLIT_ABOVE = 64  # models in a spec list above which `Resource.to_dict` dumps them one by one


class Resource(IstioModel):
    """Common envelope: ``apiVersion``, ``kind``, ``metadata``, ``spec``."""

    unsupported_fields = frozenset({"status"})
    group: ClassVar[str]
    versions: ClassVar[tuple[str, ...]]

    # empty: the first accepted version (handy when a resource is built in Python)
    api_version: str = Field(default="", validate_default=True)
    kind: str
    metadata: ObjectMeta
    spec: Any

    @classmethod
    def accepted_api_versions(cls) -> list[str]:
        return [f"{cls.group}/{version}" for version in cls.versions]

    @field_validator("api_version")
    @classmethod
    def _accepted_api_version(cls, value: str) -> str:
        accepted = cls.accepted_api_versions()
        if not value:
            return accepted[0]
        if value not in accepted:
            listed = ", ".join(accepted)
            raise ValueError(f'"{value}" is not accepted for kind {cls.__name__} (accepted: {listed})')
        return value

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.metadata.namespace}/{self.metadata.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.metadata.namespace, self.metadata.name)

    def to_dict(self) -> dict[str, Any]:
        """The Istio-shaped document (camelCase, unset fields omitted); ``load_resources`` accepts it.

        A ``spec`` list of more than `DUMP_SPLIT_ABOVE` models (a large VirtualService's ``http``)
        is dumped one member at a time: one ``model_dump`` call holds the GIL until it returns
        (25-60 ms for a 1 MB VirtualService, the event loop of the control plane waiting when the
        change is prepared on its thread). Same dict, same key order (tests check)."""
        spec = self.spec
        if not isinstance(spec, BaseModel):
            return self.model_dump(**_DUMP)
        fields = type(spec).model_fields
        long = {name for name in fields if isinstance(value := getattr(spec, name), list)
                and len(value) > DUMP_SPLIT_ABOVE and all(isinstance(item, BaseModel) for item in value)}
        if not long:
            return self.model_dump(**_DUMP)
        doc = self.model_dump(**_DUMP, exclude={"spec": long})
        rest = doc["spec"]
        spec_doc: dict[str, Any] = {}
        for name, info in fields.items():
            alias = info.serialization_alias or info.alias or name
            if name in long:
                spec_doc[alias] = [item.model_dump(**_DUMP) for item in getattr(spec, name)]
            elif alias in rest:
                spec_doc[alias] = rest[alias]
        doc["spec"] = spec_doc
        return doc
