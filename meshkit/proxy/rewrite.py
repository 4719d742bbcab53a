"""A route's rewrite (Envoy's ``prefix_rewrite``, ``regex_rewrite`` and ``host_rewrite_literal``).

``Rewrite(spec, where)`` validates a route's ``rewrite`` (docs/snapshot.md) once per snapshot;
``Rewrite.apply(request, prefix, separated)`` changes the request on its way upstream:

* ``uri`` replaces the matched prefix (a ``prefix`` or ``path_separated_prefix`` match), or the whole
  path for any other match, as Istio's ``rewrite.uri``; the query is kept;
* ``uri_regex`` (``{"match", "rewrite"}``, Istio's ``uriRegexRewrite``) replaces every match of the
  pattern in the path (Envoy's ``regex_rewrite``; ``\\1`` names a group), the query kept;
* ``authority`` replaces the Host header (Istio's ``rewrite.authority``, Gateway API's URLRewrite
  ``hostname``).

Standard library only; nothing here runs unless a route has a rewrite.
"""

from __future__ import annotations

import re
from typing import Any

from meshkit.proxy.http import Request

_FIELDS = ("uri", "authority", "uri_regex")


class Rewrite:
    """One route's compiled rewrite."""

    __slots__ = ("authority", "pattern", "substitution", "uri")

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        for key in spec:
            if key not in _FIELDS:
                raise ValueError(f"{where}.{key}: unknown rewrite field (expected {', '.join(_FIELDS)})")
        uri = spec.get("uri")
        if uri is not None and not isinstance(uri, str):
            raise ValueError(f"{where}.uri: expected a string, got {uri!r}")
        self.uri: str | None = uri
        authority = spec.get("authority")
        if authority is not None and (not isinstance(authority, str) or not authority
                                      or any(c in authority for c in "\r\n\0 /")):
            raise ValueError(f"{where}.authority: expected a host name, got {authority!r}")
        self.authority: str | None = authority.lower() if authority is not None else None
        self.pattern: re.Pattern[str] | None = None
        self.substitution = ""
        regex = spec.get("uri_regex")
        if regex is not None:
            if uri is not None:
                raise ValueError(f"{where}: uri and uri_regex are exclusive")
            if not isinstance(regex, dict) or not isinstance(regex.get("match"), str) \
                    or not isinstance(regex.get("rewrite"), str) or set(regex) != {"match", "rewrite"}:
                raise ValueError(f"{where}.uri_regex: expected an object with match and rewrite strings, "
                                 f"got {regex!r}")
            try:
                self.pattern = re.compile(regex["match"])
                self.pattern.sub(regex["rewrite"], "/")  # a bad group reference fails here, not per request
            except (re.error, IndexError) as exc:
                raise ValueError(f"{where}.uri_regex: {exc}") from None
            self.substitution = regex["rewrite"]

    def path(self, path: str, query: str | None, prefix: str | None, separated: bool) -> str:
        """The new origin-form path for ``path`` (without its query) matched on ``prefix``."""
        if self.pattern is not None:
            new = self.pattern.sub(self.substitution, path)
        elif self.uri is None:
            new = path
        elif prefix is not None:
            rest = path[len(prefix):]
            if separated and self.uri.endswith("/") and rest[:1] == "/":
                rest = rest[1:]  # Gateway API: "/foo/bar" with prefix "/foo" -> "/xyz/" is "/xyz/bar"
            new = self.uri + rest
            if new.startswith("//"):
                new = new[1:]
        else:
            new = self.uri
        return f"{new}?{query}" if query is not None else new

    def apply(self, request: Request, prefix: str | None, separated: bool) -> None:
        if self.uri is not None or self.pattern is not None:
            path, sep, query = request.path.partition("?")
            request.path = self.path(path, query if sep else None, prefix, separated)
        if self.authority is not None:
            request.authority = self.authority
            request.headers.set("host", self.authority)
