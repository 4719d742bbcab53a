"""The outbound listener of a captured pod: the original destination decides, unknown TCP passes through.

On Kubernetes the init container redirects all of the pod's outbound TCP to 15001
(`meshkit.k8s.iptables`), so the outbound listener also receives calls to the API server,
external HTTPS, DNS over TCP, databases. ``OutboundAcceptor`` (installed with
``meshkit proxy --capture``) accepts the sockets itself and, per connection:

1. reads the address the app meant to reach (``SO_ORIGINAL_DST``, kept by the kernel's NAT);
   a connection that was not redirected (someone called 15001 itself) has none;
2. peeks (``MSG_PEEK``, nothing consumed) at the first bytes for up to ``sniff_timeout_s``:
   an HTTP/1.x request whose ``Host`` the mesh routes (a virtual host of the snapshot in
   effect) goes to the HTTP pipeline (``DownstreamConnection``: routes, retries, metrics, as
   before), like Envoy's ``http_inspector``;
3. anything else — HTTP to a host the mesh does not know, TLS, another protocol, or a
   server-first protocol that sends nothing — is proxied as plain TCP to the original
   destination, unchanged, as Envoy's ``PassthroughCluster`` does with
   ``outboundTrafficPolicy: ALLOW_ANY``. The proxy's own connection leaves as uid 1337,
   which the capture rules let through.

Passthrough connections are counted in ``PassthroughStats`` (admin ``/stats`` ->
``"passthrough"``) and as Istio's TCP metrics with ``destination_service_name="PassthroughCluster"``
and ``destination_service="unknown"``, as Istio's stats filter labels a TCP connection to that cluster
(``istio_tcp_connections_opened_total`` and friends, reporter ``source``).

It must not do: HTTP (that is ``DownstreamConnection``), TLS termination, or policy.
Standard library only (the proxy is a leaf).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from meshkit.proxy import accept_loop
from meshkit.proxy.accept_loop import AcceptingServer
from meshkit.proxy.listener import DownstreamConnection, Listener

log = logging.getLogger("meshkit.proxy.passthrough")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
PASSTHROUGH_CLUSTER = "PassthroughCluster"
SNIFF_TIMEOUT_S = 0.1  # a client-first protocol has sent its first bytes by then on a pod's network
CONNECT_TIMEOUT_S = 10.0
CHUNK = 65536
PEEK_LIMIT = 8192  # an HTTP request head longer than this goes to the HTTP pipeline unread
_HTTP_REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) ")
_TCP_METRICS = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """(address, port) the client connected to before iptables redirected it; None if not redirected."""
    if sock.family != socket.AF_INET:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    address = (socket.inet_ntoa(packed), int(port))
    return None if address == sock.getsockname()[:2] else address


def looks_like_http(head: bytes) -> bool:
    return bool(_HTTP_REQUEST_LINE.match(head))


def host_header(head: bytes) -> str | None:
    """The lower-cased ``Host`` of a request head (complete up to its blank line), else None."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    for line in head[:end].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            return value.strip().decode("latin-1").lower() or None
    return None


@dataclass
class PassthroughStats:
    """Connection counters of the outbound acceptor (admin ``/stats`` -> ``passthrough``)."""

    http: int = 0  # handed to the HTTP pipeline
    http_unknown_host: int = 0  # HTTP for a host the mesh does not route: passed through
    cx_total: int = 0  # passed through as TCP
    cx_active: int = 0
    cx_connect_fail: int = 0
    bytes_sent: int = 0  # towards the original destination
    bytes_received: int = 0  # from it
    not_redirected: int = 0  # no original destination: served as HTTP

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def prometheus(self, source: dict[str, str] | None = None) -> str:
        """Istio's TCP metrics for the passthrough traffic (counters; one series each)."""
        labels = {"reporter": "source", **(source or {}), "destination_service": "unknown",
                  "destination_service_name": PASSTHROUGH_CLUSTER, "destination_service_namespace": "unknown",
                  "request_protocol": "tcp"}
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        closed = self.cx_total - self.cx_active
        values = (self.cx_total, closed, self.bytes_sent, self.bytes_received)
        lines = []
        for name, value in zip(_TCP_METRICS, values, strict=True):
            lines += [f"# TYPE {name} counter", f"{name}{{{text}}} {value}"]
        return "\n".join(lines) + "\n"


class OutboundAcceptor:
    """Accepts the outbound listener's connections (see the module docstring)."""

    def __init__(self, stats: PassthroughStats | None = None,
                 sniff_timeout_s: float = SNIFF_TIMEOUT_S) -> None:
        self.stats = stats or PassthroughStats()
        self.sniff_timeout_s = sniff_timeout_s

    async def serve(
        self, listener: Listener, host: str, port: int, sock: socket.socket | None = None
    ) -> AcceptingServer:
        return accept_loop.serve(host, port, lambda conn: self._admit(listener, conn), "outbound", sock)

    async def _admit(self, listener: Listener, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            destination = original_destination(conn)
            if destination is None:
                self.stats.not_redirected += 1
            elif not self._mesh_http(listener, await _peek(conn, self.sniff_timeout_s)):
                await self._pass_through(conn, destination)
                return
            else:
                self.stats.http += 1
            await loop.connect_accepted_socket(lambda: DownstreamConnection(listener), conn)
        except BaseException:
            conn.close()
            raise

    def _mesh_http(self, listener: Listener, head: bytes) -> bool:
        """Whether the HTTP pipeline serves it: an HTTP request for a host the mesh routes (or one
        it cannot tell yet: no ``Host`` in the peeked head, no config applied)."""
        if not looks_like_http(head):
            return False
        host = host_header(head)
        snapshot = getattr(listener.state, "current", None) if listener.state is not None else None
        if host is None or snapshot is None:
            return True
        if snapshot.routes.virtual_host(host) is None:
            self.stats.http_unknown_host += 1
            return False
        return True

    async def _pass_through(self, conn: socket.socket, destination: tuple[str, int]) -> None:
        stats = self.stats
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(*destination)
        except (OSError, TimeoutError) as exc:
            stats.cx_connect_fail += 1
            log.info("passthrough to %s:%d failed: %s", *destination, exc)
            conn.close()  # the client sees its connection closed, as with an unreachable peer
            return
        down_reader, down_writer = await asyncio.open_connection(sock=conn)
        stats.cx_total += 1
        stats.cx_active += 1
        try:
            await asyncio.gather(self._pump(down_reader, up_writer, sent=True),
                                 self._pump(up_reader, down_writer, sent=False))
        finally:
            stats.cx_active -= 1
            for writer in (up_writer, down_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, sent: bool) -> None:
        try:
            while data := await reader.read(CHUNK):
                if sent:
                    self.stats.bytes_sent += len(data)
                else:
                    self.stats.bytes_received += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other side may still answer
        except (ConnectionError, OSError):
            writer.close()


async def _peek(sock: socket.socket, timeout_s: float) -> bytes:
    """The head of ``sock``, not consumed: up to the end of an HTTP request head (``PEEK_LIMIT``
    bytes at most), or the first bytes of anything else; b"" when nothing came within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            head = sock.recv(PEEK_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            head = None
        except OSError:
            return b""
        if head == b"":
            return head
        if head is not None and len(head) >= 8 and (
                not looks_like_http(head) or b"\r\n\r\n" in head or len(head) >= PEEK_LIMIT):
            return head
        remaining = deadline - loop.time()
        if remaining <= 0:
            return head or b""
        if head:  # the start of a line: the rest is in flight
            await asyncio.sleep(min(0.005, remaining))
        else:
            await _readable(sock.fileno(), remaining)


async def _readable(fd: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_reader(fd)
