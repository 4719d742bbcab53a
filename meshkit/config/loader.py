"""Istio YAML / JSON (or already-parsed dicts) -> typed resources, with every problem reported.

``load_resources`` accepts multi-document YAML, JSON, a ``kind: List`` with ``items``, a
dict or a list of dicts; it dispatches on ``apiVersion`` + ``kind`` to the models in
`resources` and raises `ConfigError` carrying one `Message` per problem (all of them,
not just the first), each naming the resource and the field path.
``load_files`` does the same for files and directories.

Loader message codes: MK0001-MK0009 (their meanings: `meshkit.config.codes`).

YAML aliases are bounded before anything is built from them: at most `MAX_ALIASES` alias
references per input (counted on the event stream, so a document full of them stops at the
first one too many) and `MAX_EXPANDED_NODES` nodes once every alias is expanded (a "billion
laughs" document of a few hundred bytes would otherwise expand to gigabytes); at most
`MAX_DOCUMENTS` documents per input.

Kubernetes kinds the local mesh does not model (HorizontalPodAutoscaler, Role...; a Secret
whose type is not ``kubernetes.io/tls`` or ``Opaque``) are never a reason to refuse a file:
each is left out of the result with an MK0009 warning, appended to the ``warnings`` list the
caller passes (the CLI prints them, the control plane returns them with the apply's result).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from meshkit.config import codes
from meshkit.config.kinds import (
    IGNORED_KUBERNETES_KINDS,
    KINDS_BY_GROUP,
    RESOURCE_KINDS,
    UNSUPPORTED_ISTIO_KINDS,
)
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.resources import IstioModel, Resource
from meshkit.config.secrets import is_tls_secret

MAX_ALIASES = 100  # Istio config rarely uses anchors; a few dozen is plenty
MAX_EXPANDED_NODES = 1_000_000  # about 10 MB of YAML once aliases are expanded
MAX_DOCUMENTS = 5000  # YAML documents in one input

FILE_SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's safe loader when built in (about 10x faster), the pure-Python one otherwise
_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SafeLoader(_BASE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, refusing duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_line:
                    problem = f"duplicate key {key!r} (first at line {first_line[key]})"
                    raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base constructor reports it
                break
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


def load_resources(
    source: str | bytes | dict[str, Any] | list[dict[str, Any]], *, origin: str = "<input>",
    warnings: list[Message] | None = None,
) -> list[Resource]:
    """Parse and validate ``source``; raise `ConfigError` listing every problem found.

    Documents of an ignored Kubernetes kind are left out; their MK0009 warnings go to ``warnings``.
    """
    documents = _documents(source, origin)
    resources: list[Resource] = []
    messages: list[Message] = []
    for number, document in documents:
        where = f"{origin} document {number}"
        if (isinstance(document, dict) and document.get("kind") in IGNORED_KUBERNETES_KINDS
                # ConfigMaps (Istio's mesh config, mounted files) and TLS/Opaque Secrets are modelled
                and document.get("kind") != "ConfigMap" and not is_tls_secret(document)):
            if warnings is not None:
                warnings.append(_ignored(document, where))
            continue
        resource, problems = _load_document(document, where)
        messages.extend(problems)
        if resource is not None:
            resources.append(resource)
    if messages:
        raise ConfigError(messages)
    return resources


def _ignored(document: dict[str, Any], where: str) -> Message:
    kind = document["kind"]
    text = (f"kind {kind} is not modelled by the local mesh: ignored (nothing applied for it); "
            "the rest of the input is applied")
    return Message(codes.MK0009, Severity.WARNING, _label(document, where), "kind", text)


def load_files(paths: Iterable[str | Path], warnings: list[Message] | None = None) -> list[Resource]:
    """Load files; a directory contributes its *.yaml, *.yml and *.json files (sorted, not recursive).

    Messages about a named resource are prefixed with the file (``"vs.yaml: VirtualService/default/x"``).
    """
    resources: list[Resource] = []
    messages: list[Message] = []
    for path in _expand(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            text = f"cannot read file: {error}"
            messages.append(Message(codes.MK0002, Severity.ERROR, str(path), "", text))
            continue
        try:
            resources.extend(load_resources(text, origin=str(path), warnings=warnings))
        except ConfigError as error:
            for message in error.messages:
                where = message.resource
                if not where.startswith(str(path)):
                    where = f"{path}: {where}"
                messages.append(Message(message.code, message.severity, where, message.field, message.text))
    if messages:
        raise ConfigError(messages)
    return resources


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            expanded.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES))
        else:
            expanded.append(path)
    return expanded


# ---------------------------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------------------------


Source = str | bytes | dict[str, Any] | list[dict[str, Any]]


def _documents(source: Source, origin: str) -> list[tuple[int, Any]]:
    """(1-based document number, parsed document) pairs; empty documents skipped, Lists expanded."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(
                [Message(codes.MK0001, Severity.ERROR, origin, "", f"input is not UTF-8: {error}")]
            ) from None
    if isinstance(source, str):
        try:
            parsed: list[Any] = _load_bounded(source, origin)
        except yaml.YAMLError as error:
            raise ConfigError([_syntax_message(error, origin)]) from None
    elif isinstance(source, dict):
        parsed = [source]
    elif isinstance(source, list):
        parsed = list(source)
    else:
        raise ConfigError(
            [Message(codes.MK0002, Severity.ERROR, origin, "",
                     f"expected YAML/JSON text, a dict or a list of dicts, got {type(source).__name__}")]
        )
    documents: list[tuple[int, Any]] = []
    for number, document in enumerate(parsed, start=1):
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List" and "items" in document:
            items = document["items"] or []
            documents.extend((number, item) for item in (items if isinstance(items, list) else [items]))
        else:
            documents.append((number, document))
    return documents


def _load_bounded(text: str, origin: str) -> list[Any]:
    """``yaml.load_all`` that checks each composed document's aliases before constructing it."""
    if "*" in text:  # an alias is possible: count them on the event stream first, stopping early
        _count_aliases(text, origin)
    loader = _SafeLoader(text)
    documents: list[Any] = []
    aliases = 0
    try:
        while loader.check_node():
            if len(documents) >= MAX_DOCUMENTS:
                why = f"more than {MAX_DOCUMENTS} YAML documents in one input; apply them in parts"
                raise ConfigError([Message(codes.MK0008, Severity.ERROR, origin, "", why)])
            node = loader.get_node()
            aliases += _check_expansion(node, origin, aliases)
            documents.append(loader.construct_document(node))
    finally:
        loader.dispose()
    return documents


def _count_aliases(text: str, origin: str) -> None:
    count = 0
    for event in yaml.parse(text, Loader=_BASE_LOADER):
        if isinstance(event, yaml.AliasEvent):
            count += 1
            if count > MAX_ALIASES:
                mark = event.start_mark
                where = f"line {mark.line + 1}" if mark is not None else "the input"
                raise ConfigError([Message(codes.MK0008, Severity.ERROR, origin, "",
                                           f"more than {MAX_ALIASES} alias references (*name), the last at "
                                           f"{where}; refused (limit of the config loader)")])


def _check_expansion(root: yaml.Node, origin: str, aliases_before: int) -> int:
    """The alias references under ``root``; raise ConfigError (MK0008) past a bound.

    Iterative and linear in the composed nodes: a node seen again is an alias, and its expanded
    size is memoized, so a bomb is measured without being expanded.
    """
    sizes: dict[int, int] = {}
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_EXPANDED_NODES:
                _too_large(origin, node, f"expands to more than {MAX_EXPANDED_NODES} nodes once its "
                                         "aliases are expanded")
            continue
        if key in sizes:
            aliases += 1
            if aliases_before + aliases > MAX_ALIASES:
                _too_large(origin, node, f"has more than {MAX_ALIASES} alias references (*name)")
            continue
        sizes[key] = 0  # in progress: a reference back to it (a recursive alias) counts as small
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return aliases


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _too_large(origin: str, node: yaml.Node, what: str) -> None:
    mark = node.start_mark
    text = f"the YAML document at line {mark.line + 1} {what}; refused (limit of the config loader)"
    raise ConfigError([Message(codes.MK0008, Severity.ERROR, origin, "", text)])


def _syntax_message(error: yaml.YAMLError, origin: str) -> Message:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {problem}" if context else problem
    if mark is not None:
        text = f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {detail}"
    else:
        text = f"YAML syntax error: {detail}"
    return Message(codes.MK0001, Severity.ERROR, origin, "", text)


def _label(document: dict[str, Any], fallback: str) -> str:
    metadata = document.get("metadata")
    kind = document.get("kind")
    if isinstance(metadata, dict) and isinstance(metadata.get("name"), str) and isinstance(kind, str):
        namespace = metadata.get("namespace")
        namespace = namespace if isinstance(namespace, str) and namespace else "default"
        return f"{kind}/{namespace}/{metadata['name']}"
    return fallback


def _load_document(document: Any, fallback: str) -> tuple[Resource | None, list[Message]]:
    if not isinstance(document, dict):
        text = f"expected a mapping with apiVersion, kind, metadata and spec, got {type(document).__name__}"
        return None, [Message(codes.MK0002, Severity.ERROR, fallback, "", text)]
    resource_label = _label(document, fallback)
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        text = "kind: required field is missing"
        return None, [Message(codes.MK0006, Severity.ERROR, resource_label, "kind", text)]
    model = RESOURCE_KINDS.get(kind)
    group = api_version.partition("/")[0] if isinstance(api_version, str) else ""
    model = KINDS_BY_GROUP.get((kind, group), model)  # Gateway API's Gateway, not Istio's
    if model is None:
        supported = ", ".join(sorted(RESOURCE_KINDS))
        reason = "is not supported by meshkit" if kind in UNSUPPORTED_ISTIO_KINDS else "is not a known kind"
        text = f"kind {kind} {reason} (supported: {supported})"
        return None, [Message(codes.MK0003, Severity.ERROR, resource_label, "kind", text)]
    accepted = model.accepted_api_versions()
    if api_version not in accepted:
        shown = "missing" if api_version is None else f'"{api_version}"'
        text = f"apiVersion {shown} is not accepted for kind {kind} (accepted: {', '.join(accepted)})"
        return None, [Message(codes.MK0003, Severity.ERROR, resource_label, "apiVersion", text)]
    metadata = document.get("metadata")
    if isinstance(metadata, dict) and "creationTimestamp" in metadata and not metadata["creationTimestamp"]:
        # what `kubectl create ... --dry-run=client -o yaml` writes: no timestamp, nothing to refuse
        document = {**document, "metadata": {k: v for k, v in metadata.items() if k != "creationTimestamp"}}
    try:
        return model.model_validate(document), []
    except ValidationError as error:
        return None, [_message(model, item, resource_label) for item in error.errors()]


# ---------------------------------------------------------------------------------------------
# pydantic errors -> messages
# ---------------------------------------------------------------------------------------------


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(model: type[BaseModel], error: Any, resource_label: str) -> Message:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    path = _path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        name = str(loc[-1])
        if owner is not None and name in owner.unsupported_fields:
            text = f"{path} is not supported by meshkit"
            return Message(codes.MK0004, Severity.ERROR, resource_label, path, text)
        return Message(codes.MK0005, Severity.ERROR, resource_label, path, f"{path}: unknown field")
    if kind == "missing":
        text = f"{path}: required field is missing"
        return Message(codes.MK0006, Severity.ERROR, resource_label, path, text)
    if kind == "literal_error":
        owner = _model_at(model, loc[:-1])
        value = error.get("input")
        expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        if owner is not None and value in owner.unsupported_values.get(str(loc[-1]), frozenset()):
            text = f"{path}: {value} is not supported by meshkit (supported: {expected})"
            return Message(codes.MK0004, Severity.ERROR, resource_label, path, text)
        return Message(codes.MK0007, Severity.ERROR, resource_label, path,
                       f"{path}: {value!r} is not one of {expected}")
    if kind == "value_error":
        reason = str(error["msg"]).removeprefix("Value error, ")
        return Message(codes.MK0007, Severity.ERROR, resource_label, path, f"{path}: {reason}")
    if kind == "too_short":
        return Message(codes.MK0007, Severity.ERROR, resource_label, path, f"{path}: must not be empty")
    expected_type = _EXPECTED.get(kind)
    reason = f"expected {expected_type}" if expected_type else f"{error['msg'][:1].lower()}{error['msg'][1:]}"
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type
        path = _path(loc[:-1])
        reason = f"the key must be {expected_type}" if expected_type else f"invalid key: {reason}"
    text = f"{path}: {reason} (got {_short(error.get('input'))})"
    return Message(codes.MK0007, Severity.ERROR, resource_label, path, text)


_EXPECTED = {
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list", "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[IstioModel] | None:
    """The model class that owns the value at ``loc`` (walking field annotations), or None."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_by_alias(current, str(part))
            if field is None:
                return None
            current = field
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin is list and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            else:
                return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, IstioModel):
        return current
    return None


def _field_by_alias(model: type[BaseModel], name: str) -> Any:
    for field_name, info in model.model_fields.items():
        if name in (info.alias, field_name):
            return info.annotation
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip ``X | None`` and ``Annotated[X, ...]`` down to X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
