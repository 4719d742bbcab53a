"""Upstream side of the sidecar: keep-alive connection pools and the terminal ``send`` handler.

``Upstream.send(request)`` writes ``request`` to ``request.endpoint`` over a pooled
HTTP/1.1 connection (one request at a time per connection, no upstream pipelining)
and returns a ``Response`` as soon as its headers are in. Small responses that arrive
complete with their headers get a ``bytes`` body; longer ones a ``BodyStream`` that
returns the connection to the pool once it has been read to the end. Failures raise
``ConnectFailure`` (refused, unreachable, connect timeout) or ``UpstreamReset`` (closed
or reset before a complete response head; ``UpstreamProtocolError`` for bad framing).

Automatic mTLS: when the proxy holds a workload certificate (``certificates``) and the
request's cluster is ``ISTIO_MUTUAL`` (``Snapshot.upstream_tls``), the connection is TLS with
the CURRENT client context (so connections opened after a rotation use the new certificate;
pooled ones keep theirs) and the server's SPIFFE id must be one of the cluster's
``server_identities`` (else ``ConnectFailure``, flag UF, as Envoy). Pools are keyed by
``(address, port, tls)``: a plaintext connection is never reused for mTLS or back.

TLS origination: a cluster with ``tls.mode: SIMPLE`` (``Snapshot.originate``, built by
``tls.originate``) is reached over TLS with its SNI and server-certificate checks; its pool key's
TLS part names the SNI and trust, so those connections are shared with no other cluster setting.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

import httptools

from meshkit.proxy import network_policy
from meshkit.proxy.bodies import BodyStream
from meshkit.proxy.http import ConnectFailure, Headers, Request, Response, UpstreamReset

SERVICE_TIME = "x-envoy-upstream-service-time"

# Never forwarded upstream or downstream (RFC 9110 7.6.1 plus the usual suspects); the framing
# headers are re-created from the body type by whoever serialises the message.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"content-length",
    }
)
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

# Response header names seen on most responses, as sent -> as stored (lower-cased str); "" for
# the hop-by-hop names that carry nothing the exchange needs (dropped). Content-Length and
# Transfer-Encoding always take the slow path in ``on_header``.
_HEADER_NAMES: dict[bytes, str] = {
    spelling: name
    for name in ("server", "date", "content-type", "cache-control", "etag", "last-modified", "vary",
                 "x-envoy-upstream-service-time", "access-control-allow-origin", "location")
    for spelling in (name.encode(), name.title().encode())
}
_HEADER_NAMES.update({b"Connection": "", b"connection": "", b"Keep-Alive": "", b"keep-alive": ""})

PoolKey = tuple[str, int, bool | str]  # (address, port, mutual TLS | TLS origination's pool tag)


class ClientContexts(Protocol):
    """Where the client side of mutual TLS comes from (``tls.sidecar.SidecarCertificates``)."""

    @property
    def client_context(self) -> ssl.SSLContext: ...


class UpstreamProtocolError(UpstreamReset):
    """The upstream sent a response the parser rejects (Envoy ``UPE``); answered with 502."""

    flag = "UPE"
    status = 502


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 client connection to an endpoint; carries one exchange at a time."""

    def __init__(self, upstream: Upstream, key: PoolKey) -> None:
        self.upstream = upstream
        self.key = key
        self.peer_identity: str | None = None  # the server's verified SPIFFE id (mTLS only)
        self.loop = asyncio.get_running_loop()  # cached: get_running_loop() costs a getpid() syscall
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.requests = 0  # exchanges started on this connection
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Response] | None = None
        self._busy = False  # an exchange is in progress (request sent, response not finished)
        self._last = False  # max_requests_per_connection reached: close after this exchange
        self._head_request = False
        self._sent_at = 0.0
        self._chunked = False
        self._head_request = False
        self._headers: list[tuple[str, str]] = []
        self._parts: list[bytes] = []
        self._content_length: str | None = None
        self._ignore = False  # inside an interim 1xx response
        self._headers_done = False
        self._message_done = False
        self._request_sent = True
        self._keep_alive = True
        self._stream: BodyStream | None = None
        self._any_byte = False
        self._write_paused = False
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.hostport = f"{key[0]}:{key[1]}"

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self.close()  # bytes nobody asked for: the connection is out of sync
            return
        self._any_byte = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamProtocolError(f"upstream protocol error: {exc}"))
            return
        if self._headers_done and self._waiter is not None:
            self._deliver()
        if self._message_done and self._waiter is None:
            self._exchange_finished()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream._forget(self)
        if self._busy:
            if (
                exc is None
                and self._headers_done
                and not self._message_done
                and self._content_length is None
                and not self._chunked
            ):
                # A close-delimited body: the end of the connection is the end of the body.
                self._message_done = True
                if self._waiter is not None:
                    self._deliver()
                if self._stream is not None:
                    self._stream.finish()
                    self._stream = None
                self._busy = False
            elif self._waiter is not None or self._stream is not None:
                reason = f"upstream connection closed: {exc}" if exc else "upstream connection closed"
                self._broken(UpstreamReset(reason))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain
        if self.closed:
            raise UpstreamReset("upstream connection closed while sending the request body")

    # -- httptools callbacks ---------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        text_name = _HEADER_NAMES.get(name)  # common names: no lower() + decode per header
        if text_name is None:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"content-length":
                    self._content_length = value.decode("latin-1")
                elif lname == b"transfer-encoding":
                    self._chunked = b"chunked" in value.lower()
                return
            text_name = lname.decode("latin-1")
        elif not text_name:  # Connection / Keep-Alive (the parser keeps the keep-alive state)
            return
        self._headers.append((text_name, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._ignore = True  # interim response: dropped (the listener answers 100-continue itself)
            return
        self._headers_done = True
        self._status = status
        self._keep_alive = self.parser.should_keep_alive()
        if self._head_request or status in (204, 304):
            # No body follows, whatever the headers say; a fresh parser resynchronises framing.
            self._message_done = True
            self.parser = httptools.HttpResponseParser(self)

    def on_body(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(data)
        else:
            self._parts.append(data)

    def on_message_complete(self) -> None:
        if self._ignore:
            self._ignore = False
            self._headers = []
            return
        self._message_done = True

    # -- exchange bookkeeping --------------------------------------------------------
    def _deliver(self) -> None:
        waiter = self._waiter
        self._waiter = None
        status = self._status
        headers = Headers(self._headers)
        if self._message_done:
            body: bytes | BodyStream = b"".join(self._parts) if self._parts else b""
            if self._head_request and self._content_length is not None:
                headers.add("content-length", self._content_length)
        else:
            stream = BodyStream(self._pause_reading, self._resume_reading, self._abandon)
            if self._content_length is not None:
                stream.length = int(self._content_length)
            for part in self._parts:
                stream.feed(part)
            self._parts = []
            self._stream = stream
            body = stream
        # Envoy's router: the upstream's time from our request to its response head, in ms
        # (replacing any value the upstream sent, as Envoy does).
        headers.set(SERVICE_TIME, str(int((self.loop.time() - self._sent_at) * 1000)))
        if waiter is not None and not waiter.done():
            response = Response(status, headers, body)  # no keyword call: ~1k instructions less
            response.upstream_host = self.hostport
            waiter.set_result(response)

    def _exchange_finished(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.finish()
            stream.detach()
            self._resume_reading()  # the body may have paused us just as it completed
        self._reset_exchange()
        self._busy = False
        if self._keep_alive and self._request_sent and not self._last and not self.closed:
            self.upstream._release(self)
        else:
            self.close()

    def _reset_exchange(self) -> None:
        self._headers = []
        self._parts = []
        self._content_length = None
        self._headers_done = False
        self._message_done = False
        self._stream = None
        self._chunked = False
        self._head_request = False

    def _broken(self, error: Exception) -> None:
        self._busy = False
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._stream is not None:
            self._stream.fail(error)
            self._stream = None
        self.close()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _abandon(self) -> None:
        """The response consumer gave up on the body: this connection cannot be reused."""
        self._stream = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstream._forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.upstream._forget(self)
        if self.transport is not None:
            self.transport.abort()

    # -- sending -----------------------------------------------------------------------
    def start(
        self, request: Request, head: bytes, body_done: bool, last: bool
    ) -> asyncio.Future[Response]:
        """Write a request head (and its bytes body, already in ``head``); return the response future."""
        loop = self.loop
        self._busy = True  # the exchange state was reset when the previous exchange ended
        self._last = last
        self._any_byte = False
        self._head_request = request.method == "HEAD"
        self._request_sent = body_done
        self._waiter = waiter = loop.create_future()
        self._sent_at = loop.time()
        self.requests += 1
        assert self.transport is not None
        self.transport.write(head)
        return waiter

    def request_body_sent(self) -> None:
        self._request_sent = True


class Upstream:
    """Per-endpoint keep-alive pools and the terminal handler of every filter chain."""

    def __init__(self, connect_timeout: float = 10.0, idle_timeout: float = 20.0) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self.cx_total = 0
        self.cx_connect_fail = 0
        self.rq_total = 0
        self.cx_mtls_total = 0
        self.cx_peer_identity_fail = 0
        self.certificates: ClientContexts | None = None  # set when this proxy has a workload certificate
        # plaintext connections to these addresses leave from the given source address: a captured
        # pod's own IP, reached from 127.0.0.6 so the capture rules let inbound delivery to the app
        # through instead of redirecting it to the inbound listener again (Istio's
        # InboundPassthroughCluster bind address; ``meshkit proxy --capture`` sets it)
        self.source_address: dict[str, str] = {}

    @property
    def cx_active(self) -> int:
        return len(self._all)

    def cx_active_by_endpoint(self) -> dict[tuple[str, int], int]:
        """Open upstream connections per ``(address, port)`` (admin pages: per-cluster gauges)."""
        counts: dict[tuple[str, int], int] = {}
        for conn in self._all:
            endpoint = (conn.key[0], conn.key[1])
            counts[endpoint] = counts.get(endpoint, 0) + 1
        return counts

    def _server_identities(self, request: Request) -> frozenset[str] | None:
        """The SPIFFE ids the server may present when this request goes over mTLS, else None."""
        if self.certificates is None:
            return None
        config = request.config
        if config is None or request.cluster is None:
            return None
        allowed: frozenset[str] | None = config.upstream_tls.get(request.cluster)
        if allowed is None:
            return None
        if not allowed:  # ISTIO_MUTUAL without a list: the endpoint's own identity
            identity = request.endpoint.identity
            return frozenset((identity,)) if identity else frozenset()
        return allowed

    async def send(self, request: Request) -> Response:
        # One coroutine frame for the common case (a pooled connection, a bytes body): the
        # exchange is inlined here rather than awaited through a second coroutine.
        endpoint = request.endpoint
        allowed = self._server_identities(request) if self.certificates is not None else None
        key: PoolKey = (endpoint.address, endpoint.port, allowed is not None)
        originate = None
        config = request.config
        if allowed is not None and config is not None and config.upstream_sni:  # DestinationRule tls.sni
            sni = config.upstream_sni.get(request.cluster)
            if sni is not None:  # a pool of its own: the gateway chose its server by this name
                key = (endpoint.address, endpoint.port, f"mtls:{sni}")
        if allowed is None and config is not None and config.originate:
            originate = config.originate.get(request.cluster)
            if originate is not None:
                key = (endpoint.address, endpoint.port, originate.pool_tag)
        self.rq_total += 1
        body = request.body
        head = self._request_head(request)
        conn = self._take_idle(key, allowed)
        if conn is not None:
            if isinstance(body, bytes):
                waiter = conn.start(request, head, True, self._is_last(conn, request))
                try:
                    return await waiter
                except asyncio.CancelledError:
                    conn.abort()  # a timeout above us gave up: never reuse a half-used connection
                    raise
                except UpstreamReset:
                    # A pooled connection the upstream closed while idle: retry once on a fresh
                    # connection if nothing came back (the bytes body can be replayed).
                    if conn._any_byte:
                        raise
            else:
                return await self._exchange(conn, request, head, body)
        if config is not None and config.egress_allowed is not None and request.direction == "outbound" \
                and endpoint.hostport not in config.egress_allowed:  # the pod's NetworkPolicy drops it
            self.cx_connect_fail += 1
            await network_policy.drop(self._connect_timeout(request))
        conn = await self._connect(key, allowed, self._connect_timeout(request), originate)
        return await self._exchange(conn, request, head, body)

    def _request_head(self, request: Request) -> bytes:
        body = request.body
        fields = "".join([f"{name}: {value}\r\n" for name, value in request.headers.items()])
        head = f"{request.method} {request.path} HTTP/1.1\r\n{fields}"
        if isinstance(body, bytes):
            if body or request.method not in _BODYLESS_METHODS:
                head += f"content-length: {len(body)}\r\n\r\n"
            else:
                head += "\r\n"
            return head.encode("latin-1") + body if body else head.encode("latin-1")
        length = getattr(body, "length", None)
        if length is not None:
            head += f"content-length: {length}\r\n\r\n"
        else:
            head += "transfer-encoding: chunked\r\n\r\n"
        return head.encode("latin-1")

    @staticmethod
    def _is_last(conn: UpstreamConnection, request: Request) -> bool:
        """Does this exchange reach the cluster's max_requests_per_connection (close after it)?"""
        config = request.config
        if config is None or request.cluster is None:
            return False
        cluster = config.clusters.get(request.cluster)
        limit = cluster.max_requests_per_connection if cluster is not None else None
        if not limit:
            return False
        return conn.requests + 1 >= limit

    async def _exchange(
        self, conn: UpstreamConnection, request: Request, head: bytes, body: object
    ) -> Response:
        """An exchange on a new connection, or with a streamed body (pumped by a task of its own)."""
        streamed = not isinstance(body, bytes)
        waiter = conn.start(request, head, body_done=not streamed, last=self._is_last(conn, request))
        pump: asyncio.Task[None] | None = None
        if streamed:
            pump = asyncio.ensure_future(self._pump(conn, body))
        try:
            response = await waiter
        except asyncio.CancelledError:
            conn.abort()  # a timeout above us gave up: never reuse a half-used connection
            if pump is not None:
                pump.cancel()
            raise
        except BaseException:
            if pump is not None:
                pump.cancel()
            raise
        return response

    async def _pump(self, conn: UpstreamConnection, body: Any) -> None:
        chunked = getattr(body, "length", None) is None
        transport = conn.transport
        assert transport is not None
        try:
            async for chunk in body:
                if conn.closed:
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await conn.drain()
            else:
                if chunked and not conn.closed:
                    transport.write(b"0\r\n\r\n")
                conn.request_body_sent()
                return
        except Exception as exc:
            conn._broken(UpstreamReset(f"request body failed: {exc}"))
            return
        if hasattr(body, "aclose"):
            await body.aclose()

    def _connect_timeout(self, request: Request) -> float:
        """The cluster's connect timeout (DestinationRule connectTimeout) or the proxy default."""
        config = request.config
        if config is None or request.cluster is None:
            return self.connect_timeout
        cluster = config.clusters.get(request.cluster)
        millis = getattr(cluster, "connect_timeout_ms", None) if cluster is not None else None
        return millis / 1000.0 if millis else self.connect_timeout

    def _take_idle(self, key: PoolKey, allowed: frozenset[str] | None) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if allowed is not None and conn.peer_identity not in allowed:
                idle.append(conn)  # verified for another cluster's identities: leave it, open a new one
                return None
            return conn
        return None

    async def _connect(
        self, key: PoolKey, allowed: frozenset[str] | None, limit: float, originate: Any = None
    ) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if originate is not None:  # TLS origination (tls.originate.Origination)
            context, server_hostname = originate.context, originate.sni
        elif allowed is not None:
            # Loaded on the first mTLS connect only: a plaintext sidecar never loads the TLS modules
            # (meshkit.proxy.tls; none of them loads cryptography either).
            from meshkit.proxy.tls import (  # noqa: PLC0415
                CertificateError,
                PeerIdentityError,
                check_peer_identity,
            )

            assert self.certificates is not None
            try:
                context = self.certificates.client_context
            except CertificateError as exc:
                self.cx_connect_fail += 1
                raise ConnectFailure(f"upstream connect error to {key[0]}:{key[1]}: {exc}") from exc
            tag = key[2]
            server_hostname = tag[5:] if isinstance(tag, str) else ""  # "mtls:<sni>", else no SNI
        source = self.source_address.get(key[0]) if context is None else None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(self, key),
                    key[0],
                    key[1],
                    ssl=context,
                    server_hostname=server_hostname,
                    local_addr=(source, 0) if source is not None else None,
                ),
                limit,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.cx_connect_fail += 1
            reason = "connect timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise ConnectFailure(f"upstream connect error to {key[0]}:{key[1]}: {reason}") from exc
        self.cx_total += 1
        if originate is not None and originate.subject_alt_names:
            from meshkit.proxy.tls.originate import check_names  # noqa: PLC0415 - only with TLS origination

            assert conn.transport is not None
            try:
                check_names(conn.transport.get_extra_info("ssl_object"), originate.subject_alt_names)
            except ssl.SSLError as exc:
                self.cx_connect_fail += 1
                conn.abort()
                reason = f"upstream connect error to {key[0]}:{key[1]}: TLS error: {exc}"
                raise ConnectFailure(reason) from exc
        if allowed is not None:
            self.cx_mtls_total += 1
            assert conn.transport is not None
            try:
                conn.peer_identity = check_peer_identity(conn.transport.get_extra_info("ssl_object"), allowed)
            except PeerIdentityError as exc:
                self.cx_connect_fail += 1
                self.cx_peer_identity_fail += 1
                conn.abort()
                reason = f"upstream connect error to {key[0]}:{key[1]}: TLS error: {exc}"
                raise ConnectFailure(reason) from exc
        self._all.add(conn)
        return conn

    def _release(self, conn: UpstreamConnection) -> None:
        """Back into its pool: ``conn`` finished an exchange and may be reused."""
        conn.idle_since = conn.loop.time()
        idle = self._idle.get(conn.key)  # not setdefault: that builds an empty list on every call
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)

    def sweep(self, now: float) -> None:
        """Close pooled connections idle for longer than ``idle_timeout`` (called periodically)."""
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and now - c.idle_since < self.idle_timeout]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
