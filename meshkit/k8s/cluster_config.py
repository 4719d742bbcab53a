"""`ClusterClient`: the control-plane client (`ControlClient`) of a mesh that runs on Kubernetes.

On a cluster the Istio objects in the API server are the config (the control plane only mirrors
them, `meshkit.k8s.control_plane`), so this client keeps `ControlClient`'s interface — the one
`meshkit.lab.Mesh` and the ``meshkit`` CLI call — and changes where each call goes:

* **writes** (``apply``, ``delete``, ``delete_documents``) go to the Kubernetes API
  (`meshkit.k8s.client`): the input is loaded and analysed first, together with the
  cluster's current Istio objects, exactly as the local store does, so a bad rule is refused
  with the field named and nothing is written. Then each object is created, or merge-patched
  to equal the input (its ``spec``; labels and annotations given are set, others kept — the
  operator's own annotations live there). A refusal by the API server (admission webhook,
  RBAC, schema) is shown verbatim, with what was already written: Kubernetes has no
  multi-object transactions. Objects are written in their stored version (``v1``) — the
  served versions share one schema. The answer has the store's shape (results, warnings) and
  the control plane's revision once it has mirrored the change (bounded wait, else a warning);
* **reads of config** (``get``) and ``analyze`` use the cluster's objects (the source of
  truth), ``analyze`` with the registry the control plane built from the cluster when it can;
* **reads of the mesh** (``proxy_status``, ``history``, ``revision``, telemetry through
  ``request``) go to the control plane, ``meshkit-control`` in ``meshkit-system``, through the
  API server's service proxy (same credentials, no local port, no subprocess) — or, given
  ``control_url``, through a ``kubectl port-forward`` (`meshkit.k8s.port_forward`);
* ``rollback`` is refused: the cluster is the source of truth, restore with git and kubectl.
  ``history`` stays: it is the control plane's record of what it mirrored.

Errors are the control client's: `ApiError` (refused, with messages) and `ControlUnreachable`.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import yaml

from meshkit.config import codes
from meshkit.config.analyze import analyze as analyze_resources
from meshkit.config.api_kinds import GATEWAY_API_GROUP
from meshkit.config.httproutes import with_status
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import RegistryView
from meshkit.config.resources import Resource
from meshkit.control.auth import ADMIN_SECRET, ADMIN_SECRET_KEY, TOKEN_HEADER
from meshkit.control.client import ApiError, ControlClient, ControlUnreachable
from meshkit.control.kinds import resolve_kind
from meshkit.control.registry import parse_endpoint, parse_service
from meshkit.control.store import duplicate_messages
from meshkit.k8s import names
from meshkit.k8s.api import KubeApiError, ResourceType
from meshkit.k8s.client import KubeClient, namespaced_collection, object_path, service_proxy_path
from meshkit.k8s.sources import ISTIO_TYPES, STORE_KINDS, istio_resource

T = TypeVar("T")
CONTROL_PORT_NAME = "http-control"  # the Service port name (operator/deploy/base/control.yaml)
MIRROR_WAIT_S = 10.0
POLL_S = 0.05
ROLLBACK_ADVICE = ("rollback is not available on Kubernetes: the Istio objects in the cluster are the "
                   "config (the source of truth). Restore an earlier version with git and "
                   "`kubectl apply -f FILE`; `meshkit history` shows what the control plane mirrored.")

Key = tuple[str, str, str]  # (kind, namespace, name), as Resource.key
# by the store's kind (Resource.key[0]): Gateway API's Gateway is Gateway.gateway.networking.k8s.io
# Kubernetes' own kinds the client writes as they are: the cluster acts on them (a NetworkPolicy is its
# CNI's to enforce), the control plane does not mirror them (an apply does not wait for it)
NATIVE_TYPES: dict[str, ResourceType] = {
    "NetworkPolicy": ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")}
TYPES: dict[str, ResourceType] = {**{STORE_KINDS[t]: t for t in ISTIO_TYPES}, **NATIVE_TYPES}
KIND_OF: dict[ResourceType, str] = {t: kind for kind, t in TYPES.items()}  # STORE_KINDS, and the native ones


class ClusterClient(ControlClient):
    """A `ControlClient` whose config lives in a cluster; ``label`` names it in messages (the context)."""

    def __init__(self, kube: KubeClient, *, label: str, namespace: str = names.SYSTEM_NAMESPACE,
                 service: str = names.CONTROL_SERVICE, port_name: str = CONTROL_PORT_NAME,
                 timeout: float = 15.0, mirror_wait_s: float = MIRROR_WAIT_S,
                 control_url: str | None = None, on_close: Callable[[], None] | None = None) -> None:
        # The control plane's admin token, from the Secret it publishes (RBAC decides who may read
        # it), goes in X-Meshkit-Token: the API server's service proxy drops Authorization.
        self._secret_path = f"/api/v1/namespaces/{namespace}/secrets/{ADMIN_SECRET}"
        self._admin_token: str | None = None
        if control_url is not None:  # reads through a port-forward (meshkit.k8s.port_forward)
            super().__init__(control_url, timeout=timeout, headers=self._token_header)
        else:  # reads through the API server's service proxy, with the cluster's credentials
            super().__init__(kube.server + service_proxy_path(namespace, service, port_name), timeout=timeout,
                             ssl_context=kube.ssl_context(),
                             headers=lambda: {**kube.headers(), **self._token_header()})
        self._on_close = on_close
        self.kube = kube
        self.label = label
        self.control_service = f"{namespace}/{service}"
        self.mirror_wait_s = mirror_wait_s
        self._raw: dict[Key, dict[str, Any]] = {}  # the objects as last listed (patches start from them)

    def __repr__(self) -> str:
        return f"ClusterClient({self.label}: {self.kube.server})"

    def _token_header(self) -> dict[str, str]:
        if self._admin_token is None:
            try:
                secret = self.kube.get(self._secret_path) or {}
            except KubeApiError:
                secret = {}
            encoded = (secret.get("data") or {}).get(ADMIN_SECRET_KEY)
            self._admin_token = base64.b64decode(encoded).decode().strip() if isinstance(encoded, str) else ""
        return {TOKEN_HEADER: self._admin_token} if self._admin_token else {}

    def close(self) -> None:
        """Stop what the reads go through (a port-forward); the service proxy needs nothing."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    # -- the control plane, through the service proxy ---------------------------------------------

    def request(self, method: str, path: str, *, body: bytes | None = None, json_body: Any = None,
                content_type: str = "application/json", query: dict[str, Any] | None = None) -> Any:
        try:
            try:
                return super().request(method, path, body=body, json_body=json_body,
                                       content_type=content_type, query=query)
            except ApiError as error:
                if error.status != 401:
                    raise
                self._admin_token = None  # the control plane restarted with a new token: read it again
                return super().request(method, path, body=body, json_body=json_body,
                                       content_type=content_type, query=query)
        except ApiError as error:
            if error.messages or not error.error.startswith(f"HTTP {error.status}"):
                raise  # the control plane's own refusal
            reason = (f"the API server of {self.label} could not reach the service {self.control_service} "
                      f"(HTTP {error.status}); is meshkit deployed? kubectl -n meshkit-system get pods")
            raise ControlUnreachable(self.url, reason) from None

    def rollback(self, number: int) -> Any:
        raise ApiError(409, ROLLBACK_ADVICE, [_message(codes.MK0951, "<cluster>", ROLLBACK_ADVICE)])

    # -- config, from and to the Kubernetes API ---------------------------------------------------

    def apply(self, documents: list[dict[str, Any]], *, expect_revision: int | None = None) -> Any:
        if expect_revision is not None:
            text = "expect_revision: not available on Kubernetes (the API server orders the writes)"
            raise ApiError(400, text, [_message(codes.MK0951, "request", text, "expect_revision")])
        incoming = _load(documents)
        for resource in incoming:
            self._kinds(resource.key[0])
        duplicates = duplicate_messages(incoming)
        if duplicates:
            raise _refusal(400, duplicates)
        current = self._cluster_objects()
        messages = analyze_resources(_merged(current, incoming), self._registry())
        if any(m.severity == Severity.ERROR for m in messages):
            raise _refusal(400, messages)
        actions: list[tuple[str, str]] = []
        for resource in incoming:
            existing = current.get(resource.key)
            try:
                actions.append((resource.ref, self._write(resource, existing)))
            except KubeApiError as error:
                raise self._write_refused(resource.ref, error, actions) from None
        expected = {r.key: r.to_dict() for r, (_, action) in zip(incoming, actions, strict=True)
                    if action != "unchanged" and r.key[0] not in NATIVE_TYPES}
        return self._answer(actions, expected, [m for m in messages if m.severity != Severity.ERROR])

    def get(self, kind: str | None = None, name: str | None = None, namespace: str | None = None,
            output: str = "json") -> Any:
        if output not in ("json", "yaml"):
            raise ApiError(400, f"format: expected yaml or json, got {output!r}", [])
        kinds = self._kinds(kind)
        if name is not None:
            if len(kinds) != 1:
                raise ApiError(400, "a resource name needs a kind (not 'all')", [])
            resource_type = TYPES[kinds[0]]
            obj = self._kube(lambda: self.kube.get(object_path(resource_type, namespace or "default", name)))
            if obj is None:
                ref = f"{kinds[0]}/{namespace or 'default'}/{name}"
                raise ApiError(404, f"{ref} not found", [_message(codes.MK0902, ref, f"{ref} not found")])
            found = [(resource_type, obj)]
        else:
            found = [(TYPES[k], obj) for k in kinds
                     for obj in self._kube(functools.partial(self.kube.list, TYPES[k], namespace),
                                           missing=TYPES[k])]
        items = sorted((_item(t, obj) for t, obj in found), key=lambda item: item["ref"])
        if output == "yaml":
            documents = [item["resource"] for item in items]
            if any(str(doc.get("apiVersion") or "").startswith(f"{GATEWAY_API_GROUP}/") for doc in documents):
                documents = self._with_status(found, documents)
            return yaml.safe_dump_all(documents, sort_keys=False)
        return {"items": items}

    def _with_status(self, found: list[tuple[ResourceType, dict[str, Any]]],
                     documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Gateway API objects with their ``status``: the one a controller wrote on the object, else the
        one meshkit computes from the cluster's config and the control plane's registry (as locally)."""
        written = {}
        for resource_type, obj in found:
            metadata = obj.get("metadata") or {}
            key = (KIND_OF[resource_type], str(metadata.get("namespace") or "default"),
                   str(metadata.get("name") or ""))
            written[key] = obj.get("status")
        everything = [resource for resource, _ in self._cluster_objects().values() if resource is not None]
        by_key = {resource.key: resource for resource in everything}
        view = self._registry() or RegistryView()
        out = []
        for doc in documents:
            metadata = doc.get("metadata") or {}
            key = (resource_kind(doc), str(metadata.get("namespace") or "default"), str(metadata.get("name")))
            resource = by_key.get(key)
            if written.get(key):
                out.append({**doc, "status": written[key]})
            elif resource is not None:
                out.append(with_status(resource, everything, view))
            else:
                out.append(doc)
        return out

    def delete(self, kind: str, name: str, namespace: str = "default") -> Any:
        if not kind or kind.lower() == "all":
            raise ApiError(400, "delete needs a kind (not 'all')", [])
        [resolved] = self._kinds(kind)
        return self._delete_keys([(resolved, namespace, name)])

    def delete_documents(self, documents: list[dict[str, Any]]) -> Any:
        return self._delete_keys([resource.key for resource in _load(documents)])

    def analyze(self, documents: list[dict[str, Any]] | None = None) -> Any:
        incoming = _load(documents) if documents else []
        current = self._cluster_objects()
        replaced = {r.key for r in incoming}
        unloadable = [m for key, (resource, problems) in sorted(current.items()) if resource is None
                      for m in problems if key not in replaced]
        messages = unloadable + analyze_resources(_merged(current, incoming), self._registry())
        return {"errors": sum(1 for m in messages if m.severity == Severity.ERROR),
                "warnings": sum(1 for m in messages if m.severity == Severity.WARNING),
                "messages": [m.to_dict() for m in messages]}

    # -- internals --------------------------------------------------------------------------------

    def _kube(self, call: Callable[[], T], *, missing: ResourceType | None = None) -> T:
        """Run one Kubernetes API call; its errors as the control client's errors.

        ``missing``: the type being listed, whose 404 means its CRD is not installed.
        """
        try:
            return call()
        except KubeApiError as error:
            if error.status == 404 and missing is not None:
                text = (f"{missing} is not served by the cluster of {self.label}: meshkit's CRDs are not "
                        "installed (meshkit kind up, or kubectl apply -k operator/deploy/base)")
                raise ApiError(404, text, [_message(codes.MK0950, missing.kind, text)]) from None
            if error.status == 0:
                raise ControlUnreachable(self.kube.server, f"the Kubernetes API of {self.label}: {error}") \
                    from None
            raise ApiError(error.status, f"the Kubernetes API refused: {error}",
                           [_message(codes.MK0950, self.label, str(error))]) from None

    def _kinds(self, kind: str | None) -> list[str]:
        try:
            resolved = resolve_kind(kind) if kind else None
        except ConfigError as error:
            raise _refusal(400, error.messages) from None
        if resolved is not None and resolved not in TYPES:
            text = f"{resolved} is not served on Kubernetes by meshkit (its CRDs: {', '.join(TYPES)})"
            raise ApiError(400, text, [_message(codes.MK0951, resolved, text, "kind")])
        return [resolved] if resolved else list(TYPES)

    def _cluster_objects(self) -> dict[Key, tuple[Resource | None, list[Message]]]:
        """Every Istio object in the cluster: key -> (resource, []) or (None, the loader's messages)."""
        objects: dict[Key, tuple[Resource | None, list[Message]]] = {}
        self._raw = {}
        def listing(resource_type: ResourceType) -> list[dict[str, Any]]:
            return list(self._kube(lambda: self.kube.list(resource_type), missing=resource_type))

        with ThreadPoolExecutor(len(TYPES), thread_name_prefix="meshkit-kube-list") as pool:  # 4 at once
            listed = list(pool.map(listing, TYPES.values()))
        for (kind, resource_type), items in zip(TYPES.items(), listed, strict=True):
            for obj in items:
                metadata = obj.get("metadata") or {}
                key = (kind, str(metadata.get("namespace") or "default"), str(metadata.get("name") or ""))
                resource, problems = istio_resource(obj, resource_type)
                objects[key] = (resource, problems)
                self._raw[key] = obj
        return objects

    def _registry(self) -> RegistryView | None:
        """The registry the control plane built from the cluster (None when it cannot be asked)."""
        try:
            doc = self.request("GET", "registry")
            return RegistryView(services=tuple(parse_service(s) for s in doc.get("services", [])),
                                endpoints=tuple(parse_endpoint(e).endpoint for e in doc.get("endpoints", [])))
        except (ApiError, ControlUnreachable, ConfigError, AttributeError):
            return None

    def _write(self, resource: Resource, existing: tuple[Resource | None, list[Message]] | None) -> str:
        """Create the object or patch it to equal ``resource``; the store's action word."""
        kind, namespace, name = resource.key
        resource_type = TYPES[kind]
        desired = resource.to_dict()
        desired["apiVersion"] = f"{resource_type.group}/{resource_type.version}"
        if existing is None:
            self.kube.create(namespaced_collection(resource_type, namespace), desired)
            return "created"
        raw = self._raw.get(resource.key, {})
        patch = _update_patch(raw, desired, unchanged=existing[0] is not None
                              and existing[0].to_dict().get("spec") == desired.get("spec"))
        if patch is None:
            return "unchanged"
        self.kube.merge_patch(object_path(resource_type, namespace, name), patch)
        return "configured"

    def _write_refused(self, ref: str, error: KubeApiError, done: list[tuple[str, str]]) -> ApiError:
        written = [f"{action} {r}" for r, action in done if action != "unchanged"]
        already = (f"; already written before it: {', '.join(written)} (Kubernetes has no multi-object "
                   "transactions: fix the input and apply again)") if written else "; nothing was written"
        text = f"{ref}: the Kubernetes API of {self.label} refused it{already}"
        return ApiError(error.status or 502, text, [_message(codes.MK0950, ref, str(error))])

    def _delete_keys(self, keys: Sequence[Key]) -> Any:
        unique = list(dict.fromkeys(keys))
        for kind, _, _ in unique:
            self._kinds(kind)
        missing = [key for key in unique if self._kube(
            functools.partial(self.kube.get, object_path(TYPES[key[0]], key[1], key[2]))) is None]
        if missing:
            raise _refusal(404, [_message(codes.MK0902, _ref(key), f"{_ref(key)} not found")
                                 for key in missing])
        actions: list[tuple[str, str]] = []
        for key in unique:
            try:
                self.kube.delete(object_path(TYPES[key[0]], key[1], key[2]))
            except KubeApiError as error:
                raise self._write_refused(_ref(key), error, actions) from None
            actions.append((_ref(key), "deleted"))
        return self._answer(actions, dict.fromkeys(k for k in unique if k[0] not in NATIVE_TYPES), [])

    def _answer(self, actions: list[tuple[str, str]], expected: Mapping[Key, dict[str, Any] | None],
                warnings: list[Message]) -> dict[str, Any]:
        """The store's answer shape; the revision the control plane reached once it mirrored ``expected``."""
        revision, note = self._mirrored(expected)
        notes = [m.to_dict() for m in warnings]
        if note:
            notes.append(_message(codes.MK0950, "<control plane>", note, severity=Severity.WARNING))
        results = [{"resource": ref, "action": action} for ref, action in actions]
        changed = any(action != "unchanged" for _, action in actions)
        return {"revision": revision, "changed": changed, "results": results, "warnings": notes}

    def _mirrored(self, expected: Mapping[Key, dict[str, Any] | None]) -> tuple[int, str]:
        """Wait (bounded) until the control plane's store shows ``expected`` (None: absent)."""
        deadline = time.monotonic() + (self.mirror_wait_s if expected else 0.0)
        while True:
            try:
                doc = self.request("GET", "config", query={"format": "json"})
            except (ApiError, ControlUnreachable) as error:
                return 0, (f"the change is in the cluster, but the control plane could not be asked whether "
                           f"it mirrored it ({error}); sidecars get it once the control plane runs")
            held = {tuple(item["ref"].split("/", 2)): item["resource"] for item in doc.get("items", [])}
            if all(_same(held.get(key), want) for key, want in expected.items()):
                return int(doc.get("revision", 0)), ""
            if time.monotonic() >= deadline:
                return int(doc.get("revision", 0)), (
                    f"the change is in the cluster, but the control plane had not mirrored it within "
                    f"{self.mirror_wait_s:g} s (is it following the cluster? kubectl -n meshkit-system logs "
                    "deploy/meshkit-control)")
            time.sleep(POLL_S)


# -- pure helpers -----------------------------------------------------------------------------------


def _message(code: str, resource: str, text: str, field: str = "",
             severity: Severity = Severity.ERROR) -> dict[str, str]:
    return Message(code, severity, resource, field, text).to_dict()


def _refusal(status: int, messages: Iterable[Message | dict[str, str]]) -> ApiError:
    """The control plane's refusal shape: one error as the summary, else a count."""
    dicts = [m.to_dict() if isinstance(m, Message) else m for m in messages]
    errors = [m for m in dicts if m.get("severity") == "Error"]
    summary = _format(errors[0]) if len(errors) == 1 else f"{len(errors)} errors" if errors else "rejected"
    return ApiError(status, summary, dicts)


def _format(message: Mapping[str, str]) -> str:
    where = f"{message.get('resource', '')} {message.get('field', '')}".strip()
    return f"{message.get('severity')} [{message.get('code')}] ({where}) {message.get('message')}"


def _load(documents: list[dict[str, Any]]) -> list[Resource]:
    try:
        return load_resources({"apiVersion": "v1", "kind": "List", "items": list(documents)}, origin="input")
    except ConfigError as error:
        raise _refusal(400, error.messages) from None


def _merged(current: Mapping[Key, tuple[Resource | None, list[Message]]],
            incoming: Sequence[Resource]) -> list[Resource]:
    """The cluster's loadable objects with ``incoming`` in their place, in key order (what is analysed)."""
    merged = {key: resource for key, (resource, _) in current.items() if resource is not None}
    merged.update((resource.key, resource) for resource in incoming)
    return [merged[key] for key in sorted(merged)]


def _ref(key: Key) -> str:
    return "/".join(key)


def _same(held: dict[str, Any] | None, want: dict[str, Any] | None) -> bool:
    if want is None or held is None:
        return held is want
    return held.get("spec") == want.get("spec")


def resource_kind(document: Mapping[str, Any]) -> str:
    """The store's kind of a document: ``Gateway.gateway.networking.k8s.io`` for Gateway API's Gateway."""
    kind = str(document.get("kind") or "")
    group = str(document.get("apiVersion") or "").rpartition("/")[0]
    return f"{kind}.{group}" if kind == "Gateway" and group == GATEWAY_API_GROUP else kind


def _item(resource_type: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """One object as the control plane's ``get`` lists it: ref, created (epoch seconds), resource."""
    metadata = obj.get("metadata") or {}
    resource, _ = istio_resource(obj, resource_type)
    document = resource.to_dict() if resource is not None else {
        "apiVersion": obj.get("apiVersion"), "kind": resource_type.kind,
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace")},
        "spec": obj.get("spec")}
    ref = f"{KIND_OF[resource_type]}/{metadata.get('namespace') or 'default'}/{metadata.get('name')}"
    return {"ref": ref, "created": _timestamp(metadata.get("creationTimestamp")),
            "generation": metadata.get("generation"), "resource": document}


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (removed keys become None)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def _update_patch(raw: dict[str, Any], desired: dict[str, Any], *, unchanged: bool) -> dict[str, Any] | None:
    """The patch making the cluster's object equal ``desired`` (None: nothing to change).

    ``spec`` is replaced (removed fields removed); labels and annotations in ``desired`` are set,
    others are kept (the operator and kubectl keep their own annotations there).
    """
    metadata = raw.get("metadata") or {}
    patch: dict[str, Any] = {}
    if not unchanged:
        spec_patch = merge_patch(raw.get("spec") or {}, desired.get("spec") or {})
        if spec_patch:
            patch["spec"] = spec_patch
    for field in ("labels", "annotations"):
        have = metadata.get(field) or {}
        want = (desired.get("metadata") or {}).get(field) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            patch.setdefault("metadata", {})[field] = changed
    if not patch:
        return None
    if metadata.get("resourceVersion"):  # optimistic concurrency: refused if it changed meanwhile
        patch.setdefault("metadata", {})["resourceVersion"] = metadata["resourceVersion"]
    return patch
