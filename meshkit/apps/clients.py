"""The two client workloads: ``sleep`` (inside the mesh) and ``legacy`` (outside it).

Both serve ``/fetch?url=...[&header=Name:Value ...][&method=GET][&timeout=10][&body=...]``:
they make that request and answer a JSON report (status, headers, body, or the error),
always with HTTP 200 once the request was attempted, so a lesson reads the outcome of
the inner call from the report rather than guessing it from the outer one.

- ``sleep`` sends through ``HTTP_PROXY`` (its sidecar), like Istio's ``sleep`` sample: use
  ``http://httpbin:8000/headers`` and the sidecar routes it (and, in STRICT mode,
  originates mTLS for it).
- ``legacy`` never uses a proxy, whatever the environment says: it is the workload with
  no sidecar, so fetching a STRICT inbound sidecar port in plaintext shows the refusal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from yarl import URL

from meshkit.apps.application import new_application
from meshkit.apps.identity import Workload, reply
from meshkit.apps.outbound import SERVICE_CLIENT, Answer, ProxySettings, add_service_client

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
MAX_REPORTED_BODY = 64 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _bad(field: str, message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"/fetch: query parameter '{field}' {message}")


def _target(request: web.Request) -> URL:
    raw = request.query.get("url")
    if not raw:
        raise _bad("url", "is required, e.g. /fetch?url=http://httpbin:8000/headers")
    try:
        url = URL(raw)
    except ValueError:
        raise _bad("url", f"is not a URL: {raw!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad("url", f"must be an absolute http:// or https:// URL, got {raw!r}")
    if url.scheme == "https" and not _tls_available():
        raise _bad("url", f"must be http://: the demo app processes run without TLS (their sidecar "
                          f"does mutual TLS), got {raw!r}")
    return url


def _tls_available() -> bool:
    """False in an app process started by ``python -m meshkit.apps`` (it runs without ``ssl``)."""
    try:
        import ssl  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in request.query.getall("header", []):
        name, sep, value = raw.partition(":")
        if not sep or not HEADER_NAME.fullmatch(name.strip()) or "\n" in value or "\r" in value:
            raise _bad("header", f"must look like Name:Value, got {raw!r}")
        headers[name.strip()] = value.strip()
    return headers


def _method(request: web.Request) -> str:
    method = request.query.get("method", "GET").upper()
    if method not in METHODS:
        raise _bad("method", f"must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    return method


def _timeout(request: web.Request) -> float:
    raw = request.query.get("timeout")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise _bad("timeout", f"must be seconds in (0, {MAX_TIMEOUT_S:g}], got {raw!r}")
    return value


def report(answer: Answer) -> dict[str, Any]:
    """What ``/fetch`` answers about one request."""
    text = answer.body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return {
        "url": answer.url,
        "via": answer.via,
        "status": answer.status,
        "error": answer.error,
        "headers": answer.headers,
        "body": text,
        "json": parsed,
        "body_truncated": answer.truncated,
        "elapsed_ms": round(answer.elapsed_s * 1000, 1),
    }


async def fetch(request: web.Request) -> web.Response:
    url = _target(request)
    headers = _headers(request)
    method = _method(request)
    timeout_s = _timeout(request)
    body = request.query.get("body")
    answer = await request.app[SERVICE_CLIENT].call(
        method,
        str(url),
        headers=headers,
        timeout_s=timeout_s,
        body=body.encode() if body is not None else None,
        max_body=MAX_REPORTED_BODY,
    )
    return reply(request, report(answer))


def _build(workload: Workload, proxies: ProxySettings, seed: int | None) -> web.Application:
    app = new_application(workload, seed=seed)
    add_service_client(app, proxies)
    app.router.add_route("*", "/fetch", fetch)
    return app


def build_sleep(workload: Workload, *, proxies: ProxySettings, seed: int | None = None) -> web.Application:
    """The in-mesh client: ``/fetch`` goes through ``proxies`` (``HTTP_PROXY``, its sidecar)."""
    return _build(workload, proxies, seed)


def build_legacy(workload: Workload, *, seed: int | None = None) -> web.Application:
    """The out-of-mesh client: ``/fetch`` always connects directly."""
    return _build(workload, ProxySettings.direct(), seed)
