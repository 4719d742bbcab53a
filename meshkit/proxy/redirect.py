"""A route's redirect (Envoy's ``RedirectAction``): the ``Location`` a matched request is sent to.

``Redirect(spec, where)`` validates a route's ``redirect`` (docs/snapshot.md) once per snapshot;
``Redirect.response(request, matched_prefix)`` builds the reply: the status code (301 unless told),
a ``location`` header and an empty body, as Envoy answers a VirtualService ``redirect`` (and Istio
an HTTPRoute ``RequestRedirect``). How the URL is made, following Envoy:

* scheme: ``scheme`` or the request's (``x-forwarded-proto``, which the listener always sets);
* host and port: ``host`` or the request's host; ``port``, else derived (``FROM_PROTOCOL_DEFAULT``:
  none, ``FROM_REQUEST_PORT``: the request's), else none when ``host`` is set (Envoy's
  host_redirect replaces both), else the request's, dropped when the scheme switches away from it
  (``:80`` going to https);
* a port that is the new scheme's default (80 for http, 443 for https) is never written;
* path: ``path`` replaces the whole path, ``prefix_rewrite`` the matched prefix; a query in the
  new path replaces the request's query, otherwise the request's query is kept.

Standard library only; it must not look at clusters or open connections.
"""

from __future__ import annotations

from typing import Any

from meshkit.proxy.http import Headers, Request, Response

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})  # Envoy's RedirectResponseCode
DERIVE_PORTS = ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")
_FIELDS = ("scheme", "host", "port", "derive_port", "path", "prefix_rewrite", "response_code")


def _optional_str(spec: dict[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or not value
                              or any(c in value for c in "\r\n\0 ")):
        raise ValueError(f"{where}.{key}: expected a non-empty string without spaces or CR/LF, got {value!r}")
    return value


class Redirect:
    """One route's compiled redirect."""

    __slots__ = ("code", "derive_port", "host", "path", "port", "prefix_rewrite", "scheme")

    def __init__(self, spec: Any, where: str) -> None:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        for key in spec:
            if key not in _FIELDS:
                raise ValueError(f"{where}.{key}: unknown redirect field (expected {', '.join(_FIELDS)})")
        self.scheme = _optional_str(spec, "scheme", where)
        if self.scheme is not None:
            self.scheme = self.scheme.lower()
            if self.scheme not in DEFAULT_PORTS:
                raise ValueError(f"{where}.scheme: expected http or https, got {spec['scheme']!r}")
        self.host = _optional_str(spec, "host", where)
        port = spec.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise ValueError(f"{where}.port: expected a port number, got {port!r}")
        self.port: int | None = port
        derive = spec.get("derive_port")
        if derive is not None and derive not in DERIVE_PORTS:
            raise ValueError(f"{where}.derive_port: expected one of {', '.join(DERIVE_PORTS)}, "
                             f"got {derive!r}")
        self.derive_port: str | None = derive
        self.path = _optional_str(spec, "path", where)
        self.prefix_rewrite = _optional_str(spec, "prefix_rewrite", where)
        for key in ("path", "prefix_rewrite"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{where}.{key}: expected a path starting with '/', got {value!r}")
        if self.path is not None and self.prefix_rewrite is not None:
            raise ValueError(f"{where}: path and prefix_rewrite are exclusive")
        code = spec.get("response_code", 301)
        if code not in REDIRECT_CODES or isinstance(code, bool):
            raise ValueError(f"{where}.response_code: expected one of {sorted(REDIRECT_CODES)}, got {code!r}")
        self.code: int = code

    def location(self, request: Request, matched_prefix: str | None, separated: bool = False) -> str:
        """The absolute URL for ``request``; ``matched_prefix`` is the route's matched URI prefix."""
        request_scheme = (request.headers.get("x-forwarded-proto") or "http").lower()
        scheme = self.scheme or request_scheme
        request_host, request_port = _split_authority(request.authority)
        host = self.host or request_host
        port: str | None
        if self.port is not None:
            port = str(self.port)
        elif self.derive_port == "FROM_PROTOCOL_DEFAULT":
            port = None
        elif self.derive_port == "FROM_REQUEST_PORT":
            port = request_port
        elif self.host is not None:
            port = None  # Envoy's host_redirect replaces host and port
        elif scheme != request_scheme and request_port == str(DEFAULT_PORTS.get(request_scheme)):
            port = None
        else:
            port = request_port
        if port is not None and port == str(DEFAULT_PORTS.get(scheme)):
            port = None
        path, sep, query = request.path.partition("?")
        if self.path is not None:
            path = self.path
        elif self.prefix_rewrite is not None and matched_prefix is not None:
            rest = path[len(matched_prefix):]
            if separated and self.prefix_rewrite.endswith("/") and rest[:1] == "/":
                rest = rest[1:]
            path = self.prefix_rewrite + rest
            if path.startswith("//"):
                path = path[1:]
        if "?" not in path and sep:
            path = f"{path}?{query}"
        authority = f"{host}:{port}" if port is not None else host
        return f"{scheme}://{authority}{path}"

    def response(self, request: Request, matched_prefix: str | None, separated: bool = False) -> Response:
        location = self.location(request, matched_prefix, separated)
        return Response(self.code, Headers([("location", location), ("content-length", "0")]))


def _split_authority(authority: str) -> tuple[str, str | None]:
    if authority.endswith("]") or ":" not in authority:  # "[::1]" or a host without port
        return authority, None
    host, _, port = authority.rpartition(":")
    return (host, port) if port.isdigit() else (authority, None)
