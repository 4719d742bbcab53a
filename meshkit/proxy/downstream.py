"""One downstream HTTP/1.1 connection: an asyncio Protocol whose bytes httptools parses.

Requests are parsed as bytes arrive and served strictly one at a time in arrival order, so
pipelined requests get their responses in order. Bodies: none, or a Content-Length up to the
listener's ``buffer_limit`` is collected and handed on as ``bytes`` (replayable: retries and
mirroring need that); anything larger or chunked is streamed as a ``BodyStream`` with
back-pressure. Responses are re-framed (Content-Length when known, chunked otherwise, nothing for
HEAD/204/304) by the base class, ``response_writer.ResponseWriter``. Hop-by-hop headers are
dropped, ``x-forwarded-for`` appended and ``x-forwarded-proto`` set (the header tables:
``request_head``). Abuse and malformed input get 400/408/413/431 and a closed connection, never an
exception that escapes the protocol. A ``CONNECT`` (or, on a sidecar's outbound listener, a first
request no HTTP listener takes) hands the connection to ``tunnel.Tunnels``.

This is the request path's first layer: every request runs through these methods, so anything
added here is paid per request. Must not: bind or accept sockets, choose a connection's kind
(plain, PROXY protocol, mTLS: ``listener.Listener`` and its acceptors do), decide anything about
routing or policy (the handler, ``pipeline``, does), or block. Other code imports it through
``meshkit.proxy.listener``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from meshkit.proxy import request_head
from meshkit.proxy.bodies import BodyError, BodyStream
from meshkit.proxy.framing import BODY_DONE, status_line
from meshkit.proxy.http import Headers, Request, Response, UpstreamError
from meshkit.proxy.paths import DEFAULT_MODE, normalize
from meshkit.proxy.request_head import REQUEST_SKIP, REQUEST_SPECIAL, RQ_TIMEOUT, origin_form
from meshkit.proxy.response_writer import ResponseWriter

if TYPE_CHECKING:  # types only: the listener makes these connections (listener imports this module)
    from meshkit.proxy.listener import Listener

log = logging.getLogger("meshkit.proxy.listener")  # the name the sidecar's logs have always carried

_MAX_PIPELINE = 32  # queued requests per connection before we stop reading
# Assigned, not imported by name: CPython 3.11 compiles ``NAME.get(...)`` on a name bound by an import
# as an attribute load and a call (it takes the name for a module), a bound method made per header;
# on an assigned global it keeps LOAD_METHOD (measured: ~480 instructions per request).
_HEADER_NAMES = request_head.HEADER_NAMES


class _Pending:
    """A parsed request waiting for its body (buffered) or for its turn to be served."""

    __slots__ = ("continue_sent", "expect_continue", "parts", "ready", "reject", "request", "stream")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.parts: list[bytes] = []
        self.ready = False
        self.stream: BodyStream | None = None
        self.reject: Response | None = None
        self.expect_continue = False
        self.continue_sent = False



class DownstreamConnection(ResponseWriter, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    peer_identity: str | None = None  # the verified SPIFFE id of an mTLS peer (set by tls.inbound)

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self._loop = asyncio.get_running_loop()  # cached: get_running_loop() costs a getpid() syscall
        self.limits = listener.limits
        self.stats = listener.stats
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.closed = False
        self.closing = False  # close once the queued responses are written
        self.input_done = False  # ignore further bytes (after Connection: close, errors, upgrades)
        self.queue: deque[_Pending] = deque()
        self.active: asyncio.Task[None] | None = None
        self.current: _Pending | None = None  # the request being parsed
        self.last_activity = time.monotonic()
        self.head_started: float | None = None  # set while a request head is incomplete
        self.head_started_at = 0.0
        self._paused_reading = False
        self._head_written = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # a sidecar's outbound listener keeps its connection's first request as received, until its head
        # is in: a request no HTTP listener takes goes on as TCP, those bytes first (RouteTable.opaque)
        # (references to the chunks read, no copy: joined only for such a request)
        self._raw: list[bytes] | None = ([] if listener.tunnels is not None
                                         and listener.direction == "outbound" else None)
        self._opaque: str | None = None
        self._reset_head()

    def _reset_head(self) -> None:
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._content_length: int | None = None
        self._chunked = False
        self._expect_continue = False
        self._xff_index = -1
        self._has_xfp = False
        self._host: str | None = None
        self._connection_tokens: list[str] | None = None
        self._reject: tuple[int, str] | None = None
        self._rq_timeout: int | None = None
        self._connect: str | None = None  # the authority of a CONNECT request

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.listener.connections.add(self)
        self.stats.downstream_cx_total += 1
        self.stats.downstream_cx_active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.listener.connections.discard(self)
        self.stats.downstream_cx_active -= 1
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        for pending in self.queue:
            if pending.stream is not None:
                pending.stream.fail(BodyError("downstream connection closed"))
        if self.current is not None and self.current.stream is not None:
            self.current.stream.fail(BodyError("downstream connection closed"))
        if self.active is not None and not self.active.done():
            self.active.cancel()  # the client went away: abandon the upstream exchange (Envoy: DC)

    def data_received(self, data: bytes) -> None:
        if self.input_done:
            return
        self.last_activity = time.monotonic()
        raw = self._raw
        if raw is not None:
            raw.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._connect is not None:
                self._tunnel(self._connect, data[int(upgrade.args[0]):] if upgrade.args else b"")
                return
            # Upgrades (WebSocket) are not proxied: the request is served as plain HTTP, then closed.
            self.closing = True
            self.input_done = True
        except httptools.HttpParserError as exc:
            if self._opaque is not None and raw is not None:
                self._tunnel(self._opaque, origin_form(bytearray().join(raw)), established=False)
                return
            if self._reject is not None:
                status, text = self._reject
            else:
                status, text = 400, f"bad request: {exc}"
            self._fail_connection(status, text)
            return
        self._advance()
        if len(self.queue) >= _MAX_PIPELINE:
            self._pause_reading()  # a client that pipelines without reading: stop reading it

    def _tunnel(self, authority: str, leftover: bytes, *, established: bool = True) -> None:
        """``CONNECT authority``: hand the connection to the tunnels (or 405 where there are none); not
        ``established``: a plain request no HTTP listener takes, its bytes carried as TCP."""
        tunnels = self.listener.tunnels
        if tunnels is None or self.queue or self.transport is None:
            self._fail_connection(405, "CONNECT is not served on this listener")
            return
        self.input_done = self.closed = True  # no longer an HTTP connection of this listener
        self.listener.connections.discard(self)
        self.stats.downstream_cx_active -= 1
        tunnels.open_connect(self.transport, authority, leftover, self.peer, established=established)

    def eof_received(self) -> bool | None:
        """The client closed its side: as Envoy (no HTTP half-close), the connection ends here.

        Requests in flight are reset: the upstream call is cancelled (its circuit-breaker slot
        released, its half-used upstream connection discarded) and logged as code 0, flag DC.
        """
        self.input_done = True
        self.closing = True
        return None  # the transport closes; connection_lost cancels what is in flight
    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.active is None and not self.closed:
            self._advance()  # the next queued request waited for the client to read

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_head()
        self.head_started = self.head_started_at = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            self._reject = (431, "request headers too large")
            raise ValueError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_header_bytes:
            self._reject = (431, "request headers too large")
            raise ValueError("request head too large")
        # Envoy trims leading/trailing whitespace (OWS) of every value before anything matches on
        # it; bytes.strip returns the same object when there is nothing to trim (no allocation).
        value = value.strip(b" \t")
        text_name = _HEADER_NAMES.get(name)
        if text_name is not None:
            self._headers.append((text_name, value.decode("latin-1")))
            return
        lname = name.lower()
        if lname not in REQUEST_SPECIAL:
            self._headers.append((lname.decode("latin-1"), value.decode("latin-1")))
            return
        if lname in REQUEST_SKIP:
            if lname == b"content-length":
                if self._content_length is not None and int(value) != self._content_length:
                    self._reject = (400, "conflicting content-length headers")
                    raise ValueError("conflicting content-length")
                self._content_length = int(value)
            elif lname == b"transfer-encoding":
                # Only ``chunked`` is a transfer coding a proxy may pass on (Envoy, nginx): a second
                # Transfer-Encoding field or any other coding is a smuggling vector -> 400.
                if self._chunked:
                    self._reject = (400, "conflicting transfer-encoding headers")
                    raise ValueError("conflicting transfer-encoding")
                if value.lower() != b"chunked":
                    self._reject = (400, "unsupported transfer coding")
                    raise ValueError("unsupported transfer coding")
                self._chunked = True
            elif lname == b"expect":
                self._expect_continue = value.lower() == b"100-continue"
            elif lname == RQ_TIMEOUT:
                # Envoy's router takes a non-negative integer and ignores anything else.
                self._rq_timeout = int(value) if value.isdigit() and len(value) < 10 else None
            elif lname == b"connection":
                tokens = [t.strip() for t in value.decode("latin-1").lower().split(",")]
                self._connection_tokens = (self._connection_tokens or []) + tokens
            return
        text_value = value.decode("latin-1")
        if lname == b"host":
            if self._host is not None:
                self._reject = (400, "duplicate Host header")
                raise ValueError("duplicate host")
            self._host = text_value
        elif lname == b"x-forwarded-for":
            self._xff_index = len(self._headers)
        else:
            self._has_xfp = True
        self._headers.append((lname.decode("latin-1"), text_value))

    def on_headers_complete(self) -> None:
        self.head_started = None
        parser = self.parser
        method = parser.get_method().decode("latin-1")
        if method == "CONNECT":  # authority-form target; the parser raises HttpParserUpgrade next
            self._connect = self._url.decode("latin-1")
            return
        version = parser.get_http_version()
        url = self._url.decode("latin-1")
        headers = self._headers
        if url.startswith(("http://", "https://")):
            # Absolute form (explicit proxy): the URI's authority wins over Host (RFC 9112 3.2.2).
            rest = url.split("://", 1)[1]
            cut = len(rest)
            for sep in "/?":
                index = rest.find(sep)
                if index != -1 and index < cut:
                    cut = index
            authority = rest[:cut]
            path = rest[cut:] or "/"
            if path.startswith("?"):
                path = "/" + path
            if self._host is None:
                headers.append(("host", authority))
            elif self._host != authority:
                headers[:] = [h for h in headers if h[0] != "host"]
                headers.append(("host", authority))
        else:
            path = url
            if self._host is None:
                if version == "1.1":
                    self._reject = (400, "missing Host header")
                    raise ValueError("missing host")
                authority = ""
            else:
                authority = self._host
        if "@" in authority:
            authority = authority.rsplit("@", 1)[1]
        state = self.listener.state
        if self._raw is not None:
            self._raw = None  # only a connection's first request can go on as TCP
            config = state.current if state is not None else None
            if config is not None and config.egress is not None and config.routes.opaque(authority.lower()):
                self._opaque = authority.lower()
                raise ValueError("no HTTP listener for this port: carried as TCP")
        if state is not None:
            # Istio's path normalization: the path every filter judges is the one sent upstream.
            config = state.current
            normal = normalize(path, config.path_normalization if config is not None else DEFAULT_MODE)
            if normal is None:
                self._reject = (400, "invalid path: bad %-escape")
                raise ValueError("invalid path")
            path = normal
        if self._connection_tokens:
            extra = {t for t in self._connection_tokens if t not in ("close", "keep-alive", "upgrade")}
            if extra:
                headers[:] = [h for h in headers if h[0] not in extra]
                self._xff_index = next((i for i, h in enumerate(headers) if h[0] == "x-forwarded-for"), -1)
        if self._xff_index >= 0:
            name, value = headers[self._xff_index]
            headers[self._xff_index] = (name, f"{value}, {self.peer}")
        else:
            headers.append(("x-forwarded-for", self.peer))
        if not self._has_xfp:
            headers.append(("x-forwarded-proto", self.listener.scheme))
        if not parser.should_keep_alive():
            self.closing = True
        # Built positionally, the rest set afterwards: a call with keyword arguments costs ~1k
        # instructions more per request in CPython 3.11 (measured).
        request = Request(method, path, authority.lower(), Headers(headers))
        request.direction = self.listener.direction
        request.downstream_addr = self.peer
        request.peer_identity = self.peer_identity
        request.start = self.head_started_at
        request.version = version
        if self._rq_timeout is not None and self.listener.direction == "outbound":
            request.rq_timeout_ms = self._rq_timeout  # from the app: Envoy honours internal callers
        pending = _Pending(request)
        self.current = pending
        self.queue.append(pending)
        self.stats.downstream_rq_total += 1
        length = self._content_length
        if length is not None and length > self.limits.max_body_bytes:
            pending.reject = Response.local(413, "payload too large\n")
            pending.ready = True
            self.closing = True
            self.input_done = True
            self.current = None
            return
        if self._chunked or (length is not None and length > self.limits.buffer_limit):
            stream = BodyStream(self._pause_reading, self._resume_reading, self._body_abandoned)
            stream.length = None if self._chunked else length
            request.body = stream
            pending.stream = stream
            pending.ready = True  # streamed: served as soon as the head is in
        if self._expect_continue and (self._chunked or length):
            pending.expect_continue = True

    def on_body(self, data: bytes) -> None:
        pending = self.current
        if pending is None:
            return
        if pending.stream is not None:
            stream = pending.stream
            if stream.bytes_received + len(data) > self.limits.max_body_bytes:
                stream.fail(BodyError("request body too large"))
                self.closing = True
                raise ValueError("request body too large")
            stream.feed(data)
        else:
            pending.parts.append(data)

    def on_message_complete(self) -> None:
        pending = self.current
        self.current = None
        if self.closing:
            self.input_done = True
        if pending is None:
            return
        if pending.stream is not None:
            pending.stream.finish()
        else:
            if pending.parts:
                pending.request.body = b"".join(pending.parts)
                pending.parts = []
            pending.ready = True

    # -- serving -------------------------------------------------------------------------
    def _advance(self) -> None:
        """Start serving the next request when the previous one is done (responses stay in order)."""
        if self.active is not None or self.closed:
            return
        queue = self.queue
        if not queue:
            if self.closing:
                self._close_transport()
            return
        head = queue[0]
        if not head.ready:
            if self.input_done:  # its body can never complete now
                queue.clear()
                self._close_transport()
                return
            if head.expect_continue and not head.continue_sent:
                head.continue_sent = True
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        if self._write_paused:
            # Back-pressure: the client is not reading what we already wrote (the transport's
            # buffer is above its high-water mark). Serve nothing more until it drains; the
            # queue then fills to _MAX_PIPELINE and reading stops, so memory stays bounded.
            return
        queue.popleft()
        if len(queue) < _MAX_PIPELINE and self._paused_reading and head.stream is None:
            self._resume_reading()
        self.active = self._loop.create_task(self._serve(head))
        if len(queue) >= _MAX_PIPELINE:
            self._pause_reading()

    async def _serve(self, pending: _Pending) -> None:
        request = pending.request
        self.stats.downstream_rq_active += 1
        self._head_written = False
        try:
            if pending.expect_continue and not pending.continue_sent:
                pending.continue_sent = True
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            response = pending.reject
            if response is None:
                state = self.listener.state
                config = state.current if state is not None else None
                if config is not None:
                    request.config = config
                    if config.first_request_at is None:  # once per snapshot: the timeline's "in effect"
                        config.first_request_at = time.time()
                elif state is not None:
                    response = Response.local(503, "no configuration yet: waiting for a snapshot\n")
                if response is None:  # (no state: a listener that needs no snapshot, the admin one)
                    try:
                        response = await self.listener.handler(request)
                    except UpstreamError as exc:
                        response = Response.local(exc.status, str(exc) or type(exc).__name__, exc.flag)
                    if config is not None and config.server_name is not None:
                        response.headers.set("server", config.server_name)  # Istio's gateways
            self.stats.count_status(response.status)
            mode = self._write_head(request, response)
            if mode != BODY_DONE or not isinstance(response.body, bytes):
                await self._write_body(response.body, mode)
            stream = pending.stream
            if stream is not None and not stream.finished and not self.closed:
                self.closing = True  # the request body was not consumed: the framing is lost
        except asyncio.CancelledError:
            self.closing = True
        except Exception:
            log.exception("%s: failed serving %s %s", self.listener.direction, request.method, request.path)
            self.closing = True
            if not self._head_written:
                with contextlib.suppress(Exception):
                    await self._write_response(request, Response.local(500, "internal proxy error\n"))
        finally:
            self.stats.downstream_rq_active -= 1
            self.active = None
        if self.closing and not self.queue:
            self._close_transport()
        elif not self.closed:
            self._advance()

    # -- connection management -------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._paused_reading and not self.closed and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and not self.closed and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()

    def _body_abandoned(self) -> None:
        self.closing = True  # the consumer dropped the request body: we cannot find the next request

    def _fail_connection(self, status: int, text: str) -> None:
        """Malformed or abusive input: answer after what is in flight, then close."""
        self.closing = True
        self.input_done = True
        self.stats.downstream_rq_rejected += 1
        current = self.current
        self.current = None
        if current is not None:
            if current.stream is not None:
                current.stream.fail(BodyError(text))
            if not current.ready and current in self.queue:
                self.queue.remove(current)
        if self.active is not None or self.queue:
            # Earlier requests are still answered, in order; the error reply goes last.
            placeholder = _Pending(Request("GET", "/", "", Headers(), direction=self.listener.direction))
            placeholder.reject = Response.local(status, text + "\n")
            placeholder.ready = True
            self.queue.append(placeholder)
            self._advance()
            return
        body = f"{text}\n".encode()
        self.stats.count_status(status)
        self._write(
            status_line(status)
            + f"content-type: text/plain\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self._close_transport()

    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        started = self.head_started
        if started is not None and now - started > self.limits.header_timeout:
            self.head_started = None
            if self.active is None and not self.queue:
                self._fail_connection(408, "request header timeout")
            else:
                self.closing = True
            return
        current = self.current
        if current is not None:
            # A request head is in and its body is still coming: Envoy's stream idle timeout.
            if now - self.last_activity > self._stream_idle_timeout():
                self.stats.downstream_rq_idle_timeout += 1
                self._fail_connection(408, "stream timeout")
            return
        if (
            self.active is None
            and not self.queue
            and now - self.last_activity > self.limits.idle_timeout
        ):
            self._close_transport()

    def _stream_idle_timeout(self) -> float:
        state = self.listener.state
        config = state.current if state is not None else None
        configured = getattr(config, "stream_idle_timeout", None)
        return configured if configured is not None else self.limits.stream_idle_timeout

    def close_when_idle(self) -> None:
        self.closing = True
        if self.active is None and not self.queue:
            self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
