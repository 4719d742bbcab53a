"""Downstream HTTP/1.1 listeners: an asyncio Protocol per connection, parsed with httptools.

One ``Listener`` serves one port (outbound, inbound or admin) with one handler (the
filter chain). Per connection, requests are parsed as bytes arrive and served strictly
one at a time in arrival order, so pipelined requests get their responses in order.
Bodies: none, or a Content-Length up to ``buffer_limit`` is collected and handed on as
``bytes`` (replayable: retries and mirroring need that); anything larger or chunked is
streamed as a ``BodyStream`` with back-pressure. Responses are re-framed (Content-Length
when known, chunked otherwise, nothing for HEAD/204/304). Hop-by-hop headers are dropped,
``x-forwarded-for`` appended and ``x-forwarded-proto`` set. Abuse and malformed input get
400/408/413/431 and a closed connection, never an exception that escapes the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from meshkit.proxy.bodies import BodyError, BodyStream
from meshkit.proxy.framing import BODY_CHUNKED, BODY_DONE, response_head, status_line
from meshkit.proxy.http import Handler, Headers, Request, Response, UpstreamError
from meshkit.proxy.paths import DEFAULT_MODE, normalize
from meshkit.proxy.stats import ProxyStats
from meshkit.proxy.upstream import HOP_BY_HOP

if TYPE_CHECKING:  # types only: the snapshot module imports the filters, which import this one
    import socket

    from meshkit.proxy.snapshot import Snapshot
    from meshkit.proxy.tunnel import Tunnels

log = logging.getLogger("meshkit.proxy.listener")

RQ_TIMEOUT = b"x-envoy-upstream-rq-timeout-ms"  # Envoy: overrides the route timeout; never forwarded
_REQUEST_SKIP = HOP_BY_HOP | {b"expect", RQ_TIMEOUT}
_REQUEST_SPECIAL = _REQUEST_SKIP | {b"host", b"x-forwarded-for", b"x-forwarded-proto"}
_MAX_PIPELINE = 32  # queued requests per connection before we stop reading
# Common end-to-end request header names, as sent -> as stored (lower-cased str): no lower() +
# decode for them. A sidecar-to-sidecar request carries about a dozen of these. Never a name
# in _REQUEST_SPECIAL: those take the general path in ``on_header``.
_HEADER_NAMES: dict[bytes, str] = {
    spelling: name
    for name in (
        "user-agent", "accept", "accept-encoding", "accept-language", "content-type", "cookie",
        "authorization", "cache-control", "origin", "referer", "end-user", "x-request-id",
        "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
        "x-b3-sampled", "x-envoy-attempt-count", "x-meshkit-source", "x-forwarded-client-cert",
    )
    for spelling in (name.encode(), name.title().encode())
}


class SnapshotSource(Protocol):
    """Where a listener finds the snapshot in effect (``xds.ConfigState``)."""

    current: Snapshot | None


class Serving(Protocol):
    """A listening server: asyncio's, or the mTLS acceptor's own (``tls.inbound``)."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Acceptor(Protocol):
    """The mTLS seam: accepts a listener's connections itself (``tls.inbound.MtlsAcceptor``)."""

    async def serve(
        self, listener: Listener, host: str, port: int, sock: socket.socket | None = None
    ) -> Serving: ...


@dataclass
class ListenerLimits:
    """Protection limits of a listener (Envoy-like defaults, smaller where a classroom wants it)."""

    max_header_bytes: int = 60 * 1024  # request line + headers; above -> 431
    max_body_bytes: int = 64 * 1024 * 1024  # declared or streamed request body; above -> 413
    buffer_limit: int = 64 * 1024  # Content-Length bodies up to this are buffered as bytes
    header_timeout: float = 10.0  # time to receive a complete request head -> 408
    idle_timeout: float = 300.0  # keep-alive connection with no request in flight -> closed
    # Envoy's stream_idle_timeout (default 5 min): a request whose body stops arriving for this
    # long is ended with 408 (flag SI) and the connection closed. The snapshot's
    # ``mesh.stream_idle_timeout_ms`` overrides it for sidecar listeners.
    stream_idle_timeout: float = 300.0


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


class Listener:
    """A port and its open connections; ``handler`` is the filter chain for its requests."""

    def __init__(
        self,
        direction: str,
        handler: Handler,
        state: SnapshotSource | None = None,
        limits: ListenerLimits | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        self.direction = direction
        self.handler = handler
        self.state = state  # an object whose ``.current`` is the Snapshot in effect (None: no config needed)
        self.limits = limits or ListenerLimits()
        self.stats = stats or ProxyStats()
        self.connections: set[DownstreamConnection] = set()
        self.server: Serving | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # mTLS seam (meshkit.proxy.tls.inbound): accepts connections itself, sniffing TLS vs plaintext.
        self.acceptor: Acceptor | None = None
        self.scheme = "http"  # x-forwarded-proto when the client sent none ("https": a gateway's TLS port)
        # CONNECT (an app's own TLS through its sidecar): tunnel.Tunnels takes the connection over
        self.tunnels: Tunnels | None = None
        # inbound, for an opaque-TCP workload (snapshot inbound.protocol "tcp"): bytes to the app
        self.tcp_relay: Tunnels | None = None
        # A gateway's traffic listeners: connections must start with a PROXY protocol header while
        # the snapshot says so (Istio's gatewayTopology.proxyProtocol). Decided once per connection.
        self.proxy_protocol_capable = False

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on ``host:port``, or on ``sock`` already bound (a ``--concurrency`` worker's)."""
        loop = asyncio.get_running_loop()
        if self.acceptor is not None:
            self.server = await self.acceptor.serve(self, host, port, sock)
        elif sock is not None:
            self.server = await loop.create_server(self.protocol_factory(), sock=sock, backlog=1024)
        else:
            self.server = await loop.create_server(self.protocol_factory(), host, port, backlog=1024)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        return int(self.server.sockets[0].getsockname()[1])

    def protocol_factory(self) -> Callable[[], DownstreamConnection]:
        """What makes this listener's connection protocols: a plain one, unless the listener may need
        a PROXY protocol header (then the snapshot in effect decides, per accepted connection)."""
        if not self.proxy_protocol_capable:
            return lambda: DownstreamConnection(self)
        return self._maybe_proxied

    def _maybe_proxied(self) -> DownstreamConnection:
        if self.proxy_protocol_required():
            # loaded the first time a snapshot asks for it: a proxy without it never imports it
            from meshkit.proxy.proxied import ProxyProtocolConnection  # noqa: PLC0415

            return ProxyProtocolConnection(self)
        return DownstreamConnection(self)

    def proxy_protocol_required(self) -> bool:
        config = self.state.current if self.state is not None else None
        return bool(getattr(config, "proxy_protocol", False))

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_when_idle()
        for _ in range(max(1, int(grace / 0.02))):
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)


def _origin_form(raw: bytearray) -> bytes:
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


class DownstreamConnection(asyncio.Protocol):
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
                self._tunnel(self._opaque, _origin_form(bytearray().join(raw)), established=False)
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
    def pause_writing(self) -> None:
        self._write_paused = True

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
        if lname not in _REQUEST_SPECIAL:
            self._headers.append((lname.decode("latin-1"), value.decode("latin-1")))
            return
        if lname in _REQUEST_SKIP:
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

    async def _write_response(self, request: Request, response: Response) -> None:
        mode = self._write_head(request, response)
        if mode != BODY_DONE or not isinstance(response.body, bytes):
            await self._write_body(response.body, mode)

    def _write_head(self, request: Request, response: Response) -> int:
        """Write the head (and a bytes body with it); returns how the body follows (framing.BODY_*).

        Split from ``_write_body`` so the common case, a bytes body, costs no coroutine frame."""
        data, mode, self.closing = response_head(request, response, self.closing)
        self._head_written = True
        self._write(data)
        return mode

    async def _write_body(self, body: Any, mode: int) -> None:
        if mode != BODY_DONE:
            await self._stream_body(body, mode == BODY_CHUNKED)
        else:
            await _close_body(body)  # a streamed body that must not be sent (HEAD, 204, 304)

    async def _stream_body(self, body: Any, chunked: bool) -> None:
        complete = False
        try:
            async for chunk in body:
                if self.closed:
                    break
                if chunk:
                    self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self._write_paused:
                        await self._wait_drain()
            else:
                complete = True
        except (BodyError, UpstreamError):
            complete = False
        finally:
            if not complete:
                await _close_body(body)
        if complete:
            if chunked:
                self._write(b"0\r\n\r\n")
        else:
            # The body could not be completed: the only honest signal left is closing.
            self.closing = True
            self.abort()

    async def _wait_drain(self) -> None:
        if self.closed:
            return
        self._drain = self._loop.create_future()
        await self._drain
        self._drain = None

    # -- connection management -------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

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

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _close_body(body: Any) -> None:
    if not isinstance(body, bytes) and hasattr(body, "aclose"):
        with contextlib.suppress(Exception):
            await body.aclose()

