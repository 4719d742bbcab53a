"""Local replies for upstream failures: an escaped ``UpstreamError`` becomes a 503/502 with its flag.

Envoy answers a failed upstream exchange itself ("upstream connect error or
disconnect/reset before headers"); this filter does the same, so the filters above it
(metrics, access log, tracing) always see a ``Response``.
"""

from __future__ import annotations

from meshkit.proxy.http import Handler, Request, Response, UpstreamError


async def local_reply(request: Request, call_next: Handler) -> Response:
    try:
        return await call_next(request)
    except UpstreamError as exc:
        reason = str(exc) or type(exc).__name__
        text = f"upstream connect error or disconnect/reset before headers. reset reason: {reason}"
        return Response.local(exc.status, text, exc.flag)
