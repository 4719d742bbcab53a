"""HTTP/1.1 response framing for the downstream side: status lines, heads, body delimitation.

``response_head(request, response, closing)`` turns a ``Response`` into the bytes to write
first (the status line and headers, plus the whole body when it is ``bytes``) and says how
a streamed body must follow: not at all (HEAD, 204, 304), raw (Content-Length known, or
delimited by closing the connection for an HTTP/1.0 client), or chunked. Framing headers a
response carries (Content-Length, Transfer-Encoding, Connection) are always re-created
here from the body, never passed through.
"""

from __future__ import annotations

from http import HTTPStatus

from meshkit.proxy.http import Request, Response

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_NO_BODY_STATUS = frozenset({204, 304})
_REFRAMED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

BODY_DONE = 0  # nothing follows the head (bytes body included, or no body allowed)
BODY_RAW = 1  # stream the body as is (Content-Length sent, or the close delimits it)
BODY_CHUNKED = 2  # stream the body with chunked transfer coding


def status_line(status: int, reason: str = "") -> bytes:
    if reason:
        return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode()
    return line


def response_head(request: Request, response: Response, closing: bool) -> tuple[bytes, int, bool]:
    """(bytes to write, how the body follows, whether the connection must close afterwards)."""
    status = response.status
    body = response.body
    head_request = request.method == "HEAD"
    lines = []
    for name, value in response.headers.items():
        if name in _REFRAMED and not (head_request and name == "content-length"):
            continue
        lines.append(f"{name}: {value}\r\n")
    head = [status_line(status, response.reason), "".join(lines).encode("latin-1")]
    no_body = head_request or status in _NO_BODY_STATUS or status < 200
    mode = BODY_DONE
    if isinstance(body, bytes):
        if not no_body:
            head.append(b"content-length: %d\r\n" % len(body))
    elif not no_body:
        length = getattr(body, "length", None)
        if length is not None:
            head.append(b"content-length: %d\r\n" % length)
            mode = BODY_RAW
        elif request.version == "1.1":
            head.append(b"transfer-encoding: chunked\r\n")
            mode = BODY_CHUNKED
        else:
            closing = True  # HTTP/1.0 without a length: the close delimits the body
            mode = BODY_RAW
    if closing:
        head.append(b"connection: close\r\n\r\n")
    elif request.version == "1.0":
        head.append(b"connection: keep-alive\r\n\r\n")
    else:
        head.append(b"\r\n")
    if mode == BODY_DONE and isinstance(body, bytes) and body and not no_body:
        head.append(body)
    return b"".join(head), mode, closing
