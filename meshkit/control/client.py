"""A small synchronous client of the control plane's REST API (stdlib only), used by the CLI.

It turns transport problems into `ControlUnreachable` (nothing listens there) and JSON error
answers into `ApiError` (status, summary, the analyzer's messages as dicts); it decides nothing.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


class ControlUnreachable(Exception):
    """No control plane answered at ``url``."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"no meshkit control plane answered at {url} ({reason})")


class ApiError(Exception):
    """The control plane refused a request: HTTP ``status``, a summary and the messages behind it."""

    def __init__(self, status: int, error: str, messages: list[dict[str, str]]) -> None:
        self.status = status
        self.error = error
        self.messages = messages
        super().__init__(f"HTTP {status}: {error}")


class ControlClient:
    """One method per API call; every call returns the parsed JSON body (or text for YAML).

    ``token`` is the admin token sent as ``Authorization: Bearer``; None finds the one of this
    machine's mesh (`meshkit.control.auth.discover_admin_token`), "" sends none. ``ssl_context``
    and ``headers`` (asked before every request) are for a control plane reached through an
    authenticating front, e.g. the Kubernetes API server's service proxy.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 headers: Callable[[], dict[str, str]] | None = None, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.headers = headers
        if token is None and headers is None:
            from meshkit.control.auth import discover_admin_token  # noqa: PLC0415

            token = discover_admin_token()
        self.token = token or None

    def request(self, method: str, path: str, *, body: bytes | None = None, json_body: Any = None,
                content_type: str = "application/json", query: dict[str, Any] | None = None) -> Any:
        if json_body is not None:
            body = json.dumps(json_body).encode()
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = dict(self.headers()) if self.headers is not None else {}
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context) as response:
                raw = response.read()
                kind = response.headers.get_content_type()
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if not isinstance(doc, dict) or "error" not in doc:
                doc = {"error": f"HTTP {error.code} {error.reason} from {url}: not an answer of a meshkit "
                                "control plane (is --control / $MESHKIT_CONTROL pointing elsewhere?)"}
            raise ApiError(error.code, str(doc.get("error", error.reason)), list(doc.get("messages") or [])) \
                from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ControlUnreachable(self.url, str(reason)) from None
        if kind == "application/json":
            return json.loads(raw)
        return raw.decode()

    # -- calls ----------------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "healthz")
        return result

    def set_external(self, hosts: dict[str, str], real_dns: bool = False, ca_pem: str | None = None) -> Any:
        """Where hosts outside the mesh are (``"host:port" -> "address:port"``), real DNS on/off, and the
        CA of the stand-ins' HTTPS (trusted by sidecars that originate TLS)."""
        return self.request("PUT", "registry/external",
                            json_body={"hosts": hosts, "real_dns": real_dns, "ca_pem": ca_pem})

    def apply(self, documents: list[dict[str, Any]], *, expect_revision: int | None = None) -> Any:
        return self.request("POST", "apply", json_body=_as_list(documents),
                            query={"expect_revision": expect_revision})

    def get(self, kind: str | None = None, name: str | None = None, namespace: str | None = None,
            output: str = "json") -> Any:
        if name is not None:
            path = f"config/{kind}/{namespace or 'default'}/{name}"
            return self.request("GET", path, query={"format": output})
        path = f"config/{kind}" if kind else "config"
        return self.request("GET", path, query={"format": output, "namespace": namespace})

    def delete(self, kind: str, name: str, namespace: str = "default") -> Any:
        return self.request("DELETE", f"config/{kind}/{namespace}/{name}")

    def delete_documents(self, documents: list[dict[str, Any]]) -> Any:
        return self.request("POST", "delete", json_body=_as_list(documents))

    def analyze(self, documents: list[dict[str, Any]] | None = None) -> Any:
        return self.request("POST", "analyze", json_body=_as_list(documents) if documents else None)

    def history(self) -> Any:
        return self.request("GET", "history")

    def revision(self, number: int) -> Any:
        return self.request("GET", f"history/{number}")

    def timeline(self, number: int, wait: float | None = None) -> Any:
        """Revision ``number``'s apply-to-effect timeline; ``wait``: first until it is no longer pending."""
        return self.request("GET", f"history/{number}/timeline", query={"wait": wait})

    def rollback(self, number: int) -> Any:
        return self.request("POST", "rollback", json_body={"revision": number})

    def proxy_status(self, wait: float | None = None) -> Any:
        return self.request("GET", "proxy-status", query={"wait": wait})

    def jwks_status(self) -> Any:
        """Every RequestAuthentication jwksUri: who uses it, fetched or why not (``GET /api/v1/jwks``)."""
        return self.request("GET", "jwks")

    def jwks_refresh(self, uri: str) -> Any:
        return self.request("POST", "jwks/refresh", json_body={"uri": uri})

    def traces(self, service: str | None = None, *, errors: bool = False, min_duration: str | None = None,
               request_id: str | None = None, limit: int = 20) -> Any:
        """Summaries of recent traces, newest first (``GET /api/v1/traces``; docs/tracing.md)."""
        return self.request("GET", "traces", query={  # None values are left out of the URL
            "limit": limit, "service": service or None, "errors": "true" if errors else None,
            "min_duration": min_duration or None, "request_id": request_id or None})


def _as_list(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Several resources as one body: a ``kind: List`` the loader expands."""
    return {"apiVersion": "v1", "kind": "List", "items": documents}
