"""What a downstream HTTP/1.1 request head's bytes mean to the sidecar, as data and pure functions.

The tables the connection's httptools callbacks (``downstream.DownstreamConnection.on_header``)
look every header name up in: which names are never forwarded (hop-by-hop, ``Expect``, Envoy's
``x-envoy-upstream-rq-timeout-ms``), which need special handling (``Host``, ``X-Forwarded-*``),
and the common end-to-end names already in their stored spelling. And ``origin_form``: a request
line rewritten as iptables would have delivered it, for a request that goes on as TCP.

Must not: hold connection state, touch a transport or asyncio, allocate per request (the tables are
built once, at import), or import anything of the sidecar but ``upstream.HOP_BY_HOP``.
"""

from __future__ import annotations

from meshkit.proxy.upstream import HOP_BY_HOP

RQ_TIMEOUT = b"x-envoy-upstream-rq-timeout-ms"  # Envoy: overrides the route timeout; never forwarded
REQUEST_SKIP = HOP_BY_HOP | {b"expect", RQ_TIMEOUT}
REQUEST_SPECIAL = REQUEST_SKIP | {b"host", b"x-forwarded-for", b"x-forwarded-proto"}
# Common end-to-end request header names, as sent -> as stored (lower-cased str): no lower() +
# decode for them. A sidecar-to-sidecar request carries about a dozen of these. Never a name
# in REQUEST_SPECIAL: those take the general path in ``on_header``.
HEADER_NAMES: dict[bytes, str] = {
    spelling: name
    for name in (
        "user-agent", "accept", "accept-encoding", "accept-language", "content-type", "cookie",
        "authorization", "cache-control", "origin", "referer", "end-user", "x-request-id",
        "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
        "x-b3-sampled", "x-envoy-attempt-count", "x-meshkit-source", "x-forwarded-client-cert",
    )
    for spelling in (name.encode(), name.title().encode())
}


def origin_form(raw: bytearray) -> bytes:
    """A request's bytes as iptables would have delivered them: the app wrote its request line in the
    absolute form a proxy gets (``GET http://tcp-echo:9002/ HTTP/1.1``); the destination gets the
    origin form (``GET / HTTP/1.1``), the rest unchanged."""
    end = raw.find(b"\r\n")
    method, _, rest = bytes(raw[:end if end >= 0 else len(raw)]).partition(b" ")
    target, _, version = rest.rpartition(b" ")
    if end < 0 or not target.lower().startswith((b"http://", b"https://")):
        return bytes(raw)
    after = target.split(b"://", 1)[1]
    cut = min((i for i in (after.find(b"/"), after.find(b"?")) if i >= 0), default=len(after))
    path = after[cut:] or b"/"
    if path.startswith(b"?"):
        path = b"/" + path
    return method + b" " + path + b" " + version + bytes(raw[end:])
