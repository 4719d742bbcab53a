"""VirtualService delegation (``http[].delegate``) resolved the way Istio merges it.

A root VirtualService (with hosts) may hand a rule's requests to a delegate VirtualService (without
hosts): the delegate's rules take the root rule's place, each with the root rule's match combined
with its own, and the root rule's settings (timeout, retries, fault, mirror, headers, rewrite) where
the delegate rule sets none. Destinations keep the delegate's namespace. A delegate rule whose match
contradicts the root's (another URI outside the root's prefix, another value of the same header) is
dropped, as Istio drops it. Delegate VirtualServices do nothing by themselves.

`expand_delegates` returns the resources with every root rewritten and the delegates left out, so
`meshkit.config.compile` sees plain VirtualServices. It builds new objects; it never changes its input.
Errors in the use of delegates are the analyzer's (`meshkit.config.analyze_routes`, MK0137/MK0138).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshkit.config.hosts import resolve_host
from meshkit.config.resources import (
    Destination,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    Resource,
    StringMatch,
    VirtualService,
)

_INHERITED = ("timeout", "retries", "fault", "mirror", "mirror_percentage", "mirror_percent", "headers",
              "rewrite")


def expand_delegates(resources: Sequence[Resource]) -> list[Resource]:
    """``resources`` with delegating rules replaced by their delegates' rules and delegates removed."""
    if not any(isinstance(r, VirtualService) and (not r.spec.hosts or _delegates(r)) for r in resources):
        return list(resources)
    delegates = {(r.metadata.namespace, r.metadata.name): r for r in resources
                 if isinstance(r, VirtualService) and not r.spec.hosts}
    expanded: list[Resource] = []
    for resource in resources:
        if not isinstance(resource, VirtualService):
            expanded.append(resource)
        elif resource.spec.hosts:
            expanded.append(_expand(resource, delegates) if _delegates(resource) else resource)
    return expanded


def _delegates(vs: VirtualService) -> bool:
    return any(http.delegate is not None for http in vs.spec.http or [])


def _expand(root: VirtualService, delegates: dict[tuple[str, str], VirtualService]) -> VirtualService:
    rules: list[HTTPRoute] = []
    for http in root.spec.http or []:
        if http.delegate is None:
            rules.append(http)
            continue
        key = (http.delegate.namespace or root.metadata.namespace, http.delegate.name)
        delegate = delegates.get(key)
        if delegate is None:
            continue  # missing delegate: its requests match nothing here (analyzer MK0137)
        for inner in delegate.spec.http or []:
            if inner.delegate is not None:
                continue  # one level only (analyzer MK0138)
            merged = _merge(http, inner, delegate.metadata.namespace, root.metadata.namespace)
            if merged is not None:
                rules.append(merged)
    spec = root.spec.model_copy(update={"http": rules})
    return root.model_copy(update={"spec": spec})


def _qualified(destination: Destination, namespace: str, root_namespace: str) -> Destination:
    if namespace == root_namespace:
        return destination
    resolved = resolve_host(destination.host, namespace)
    return destination.model_copy(update={"host": resolved.host}) if resolved.name else destination


def _merge(root: HTTPRoute, inner: HTTPRoute, namespace: str, root_namespace: str) -> HTTPRoute | None:
    matches = _merge_matches(root.match or [], inner.match or [])
    if matches is None:
        return None
    update: dict[str, object] = {"match": matches or None, "delegate": None}
    for name in _INHERITED:
        if getattr(inner, name) is None and getattr(root, name) is not None:
            update[name] = getattr(root, name)
    if inner.route:
        update["route"] = [
            HTTPRouteDestination.model_validate(
                {**d.model_dump(), "destination": _qualified(d.destination, namespace, root_namespace)})
            for d in inner.route
        ]
    if inner.mirror is not None:
        update["mirror"] = _qualified(inner.mirror, namespace, root_namespace)
    return inner.model_copy(update=update)


def _merge_matches(roots: Sequence[HTTPMatchRequest],
                   inners: Sequence[HTTPMatchRequest]) -> list[HTTPMatchRequest] | None:
    """Every (root, delegate) match pair that can hold together; None when none can."""
    if not roots:
        return list(inners)
    if not inners:
        return list(roots)
    merged = [m for r in roots for i in inners if (m := _merge_match(r, i)) is not None]
    return merged or None


def _merge_match(root: HTTPMatchRequest, inner: HTTPMatchRequest) -> HTTPMatchRequest | None:
    update: dict[str, object] = {}
    for name in ("uri", "method", "authority"):
        outer, own = getattr(root, name), getattr(inner, name)
        if own is None:
            update[name] = outer
        elif outer is not None and not _narrows(outer, own):
            return None
    for name in ("headers", "query_params", "without_headers", "source_labels"):
        outer, own = getattr(root, name) or {}, getattr(inner, name) or {}
        if any(key in own and own[key] != value for key, value in outer.items()):
            return None
        if outer or own:
            update[name] = {**outer, **own}
    return inner.model_copy(update=update)


def _narrows(outer: StringMatch, own: StringMatch) -> bool:
    """Does the delegate's ``own`` match select only requests the root's ``outer`` selects (Istio's
    conflict rule: an exact or prefix inside the root's prefix, or the very same match)."""
    if outer == own:
        return True
    if outer.prefix is not None:
        value = own.exact if own.exact is not None else own.prefix
        return value is not None and value.startswith(outer.prefix)
    return False
