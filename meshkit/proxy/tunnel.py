"""TCP tunnels for TLS the proxy does not open: an app's HTTPS through its sidecar, a gateway's PASSTHROUGH.

On Kubernetes, iptables hands an app's ``curl https://edition.cnn.com`` to the sidecar as raw TLS on
port 443; on the local mesh the app reaches its sidecar as its proxy, so the same bytes arrive in a
``CONNECT edition.cnn.com:443`` tunnel (``Tunnels.open_connect``, from the outbound listener). A
gateway's PASSTHROUGH servers get raw TLS on the gateway's listener (``Tunnels.accept``, from
``PassthroughAcceptor``, which sniffs TLS from plain HTTP). Either way, as Envoy's ``tls_inspector``
and ``tcp_proxy``:

1. the ClientHello's SNI is read (``sni``), nothing consumed or opened; a tunnel that is not TLS is
   known by its CONNECT authority only;
2. the snapshot's ``tls`` routes pick a destination (``tls_routing``): a registry service's cluster
   (one of its endpoints) or an external host resolved with the ``egress`` map; on a sidecar, then,
   its ``tcp`` routes by the CONNECT authority (an app's opaque TCP, ``nc tcp-echo 9000``: the
   VirtualService ``tcp`` routes for ``mesh``, then the service's own cluster); with no route, a
   sidecar sends a ServiceEntry-registered host to it, any other host to ``PassthroughCluster``
   (its original destination: a mesh name on a port its Service does not declare, ``nc tcp-echo
   9002``, resolves to one of the service's instances, as on the local mesh a name does; any other
   name through the ``egress`` map) under ALLOW_ANY, and closes the connection under REGISTRY_ONLY
   (``BlackHoleCluster``: the client's TLS handshake fails, curl's exit 35, as on Istio). A gateway
   closes what no route takes;
3. the bytes are carried both ways until both sides are done; then one access-log line
   (Envoy's TCP form: no method, path or status; ``requested_server_name``) and Istio's TCP metrics
   (``istio_tcp_connections_opened_total`` and friends, reporter ``source``).

It must not do: TLS (the proxy never sees inside), HTTP, or anything but the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshkit.proxy import accept_loop, network_policy
from meshkit.proxy.accept_loop import AcceptingServer
from meshkit.proxy.egress import (
    BLACKHOLE_CLUSTER,
    PASSTHROUGH_CLUSTER,
    REGISTRY_ONLY,
    EgressError,
    split_hostport,
)
from meshkit.proxy.listener import Listener
from meshkit.proxy.sni import MAX_RECORD, NEED_MORE, client_hello_sni
from meshkit.proxy.stats import CLUSTER_ID, canonical_revision, canonical_service
from meshkit.proxy.tls.sniff import peek_sni, sniff_tls
from meshkit.proxy.tls_routing import TlsDestination

if TYPE_CHECKING:
    from meshkit.proxy.balancer import Endpoint
    from meshkit.proxy.filters.accesslog import AccessLogSink
    from meshkit.proxy.listener import SnapshotSource
    from meshkit.proxy.proxy_protocol import ProxyHeader
    from meshkit.proxy.snapshot import Snapshot

log = logging.getLogger("meshkit.proxy.tunnel")

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
INSPECT_TIMEOUT_S = 5.0  # Envoy's listener filter timeout is 15 s; a client sends its hello at once
CONNECT_TIMEOUT_S = 10.0
CHUNK = 65536
HALF_CLOSE_QUIET_S = 1.0  # a half-closed tunnel over mTLS: the upstream's silence that ends it (_linger)
HALF_CLOSE_MAX_S = 30.0
_TCP_METRICS = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")
_MAX_SERIES = 1024


class TcpMetrics:
    """Istio's TCP metrics of the tunnels, one series per label set (counters)."""

    def __init__(self) -> None:
        self.series: dict[tuple[tuple[str, str], ...], list[int]] = {}

    def counters(self, labels: dict[str, str]) -> list[int]:
        key = tuple(labels.items())
        found = self.series.get(key)
        if found is None:
            if len(self.series) >= _MAX_SERIES:
                self.series.clear()
            found = self.series[key] = [0, 0, 0, 0]  # opened, closed, sent, received
        return found

    def prometheus(self) -> str:
        if not self.series:
            return ""
        lines: list[str] = []
        for index, name in enumerate(_TCP_METRICS):
            lines.append(f"# TYPE {name} counter")
            for key, values in self.series.items():
                text = ",".join(f'{k}="{v}"' for k, v in key)
                lines.append(f"{name}{{{text}}} {values[index]}")
        return "\n".join(lines) + "\n"


# Istio's stats filter on a TCP connection (no Host header to fall back on): a cluster without the
# "istio" services metadata (PassthroughCluster, BlackHoleCluster) leaves destination_service
# "unknown" and names the cluster in destination_service_name (istio/proxy istio_stats.cc)
UNKNOWN = "unknown"


class _Target:
    """Where one tunnel goes: an address, the names metrics and the log give it, or a refusal."""

    __slots__ = ("address", "allowed", "cluster", "endpoint", "flags", "namespace", "service", "service_name")

    def __init__(self, address: tuple[str, int] | None, cluster: str, service: str, service_name: str, *,
                 namespace: str = "unknown", flags: str = "-", allowed: frozenset[str] | None = None,
                 endpoint: Endpoint | None = None) -> None:
        self.endpoint = endpoint  # the chosen endpoint of a registry cluster: the peer's metric labels
        self.address = address
        self.cluster = cluster
        self.service = service
        self.service_name = service_name
        self.namespace = namespace
        self.flags = flags
        self.allowed = allowed  # ISTIO_MUTUAL: the SPIFFE ids the upstream may present (None: plaintext)


class Tunnels:
    """The tunnels of one proxy: opened from CONNECT or a passthrough accept, counted, logged."""

    def __init__(self, state: SnapshotSource, access: AccessLogSink | None, *, gateway: bool) -> None:
        self.state = state
        self.access = access
        self.gateway = gateway
        self.metrics = TcpMetrics()
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random()
        self.certificates: Any = None  # the proxy's workload certificates: mTLS to ISTIO_MUTUAL upstreams

    # -- entry points ------------------------------------------------------------------
    def open_connect(self, transport: asyncio.Transport, authority: str, leftover: bytes, peer: str, *,
                     established: bool = True) -> None:
        """Take over a downstream connection whose request was ``CONNECT authority``; with ``established``
        False, one whose plain HTTP request (``leftover``, its bytes as received) no HTTP listener takes
        (`RouteTable.opaque`): carried as TCP to ``authority``, nothing answered first."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if leftover:
            reader.feed_data(leftover)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if transport.is_reading() is False:
            transport.resume_reading()
        if established:
            writer.write(CONNECT_ESTABLISHED)
        downstream = _downstream(transport.get_extra_info("peername"), None) or peer
        self._spawn(self._carry(reader, writer, downstream, authority=authority))

    async def accept(self, sock: socket.socket, header: ProxyHeader | None = None) -> None:
        """A gateway's passthrough connection (raw TLS on its listener); ``header``: the PROXY protocol
        header already read off it, whose source is the downstream address."""
        reader, writer = await asyncio.open_connection(sock=sock)
        self._spawn(self._carry(reader, writer, _downstream(writer.get_extra_info("peername"), header)))

    async def accept_tcp(self, sock: socket.socket) -> None:
        """A connection on a gateway's TCP listener (Gateway servers with ``protocol: TCP``), after its
        PROXY protocol header when the snapshot asks for one (gatewayTopology.proxyProtocol)."""
        header: ProxyHeader | None = None
        if getattr(self.state.current, "proxy_protocol", False):
            header = await take_proxy_header(sock)
            if header is None:
                return
        reader, writer = await asyncio.open_connection(sock=sock)
        self._spawn(self._carry(reader, writer, _downstream(writer.get_extra_info("peername"), header),
                                kind="tcp"))

    async def carry_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                            identity: str | None) -> None:
        """An accepted inbound connection of an opaque-TCP workload (PeerAuthentication already applied
        by ``tls.inbound``): its bytes go to the app as they are."""
        await self._carry(reader, writer, peer, kind="inbound", identity=identity)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- one tunnel ----------------------------------------------------------------------
    async def _carry(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter, peer: str, *,
                     authority: str | None = None, kind: str = "tls", identity: str | None = None) -> None:
        """``kind``: "tls" (route by SNI, else the CONNECT authority), "tcp" (a gateway's TCP routes),
        "inbound" (to the local app)."""
        started, wall = time.monotonic(), time.time()
        head, sni = await _client_hello(down_reader) if kind == "tls" else (b"", None)
        snapshot = self.state.current
        connect_host, port = _authority(authority)
        server_name = sni or connect_host
        target: _Target | None = None
        if snapshot is not None:
            if kind == "tls":
                target = self._target(snapshot, server_name, port, connect_host)
            elif kind == "tcp":
                route = snapshot.tls.tcp_routes[0] if snapshot.tls.tcp_routes else None
                target = self._to_destination(snapshot, route.choose(self.rng)) if route is not None else None
            else:
                target = self._inbound_target(snapshot)
        if target is None:
            target = _Target(None, BLACKHOLE_CLUSTER, "unknown", "unknown", flags="NR")
        counters: list[int] | None = None
        sent = received = 0
        # each direction's bytes as they flow; a half-close over TLS waits on what the upstream sends (_pump)
        downstream, upstream = _Flow(), _Flow()
        upstream_host: str | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            if target.address is None:
                return  # closed: the client's handshake fails (BlackHoleCluster, no route)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    allowed = snapshot.egress_allowed if snapshot is not None else None
                    if allowed is not None and kind != "inbound" and \
                            f"{target.address[0]}:{target.address[1]}" not in allowed:  # NetworkPolicy
                        await network_policy.hang(CONNECT_TIMEOUT_S)
                        raise TimeoutError(network_policy.TIMEOUT_REASON)
                    up_reader, up_writer = await self._connect(target)
            except (OSError, TimeoutError, ValueError) as exc:
                target.flags = "UF"
                log.info("tunnel to %s:%d failed: %s", *target.address, exc)
                return
            # Istio's stats filter reports a connection opened once its outcome is known, with the
            # labels (response_flags among them) its opened, bytes and closed counters then all share
            counters = self._count_opened(snapshot, target, kind, identity)
            upstream_host = f"{target.address[0]}:{target.address[1]}"
            if head:
                up_writer.write(head)
                sent += len(head)
            await asyncio.gather(_pump(down_reader, up_writer, flow=downstream, answer=upstream),
                                 _pump(up_reader, down_writer, flow=upstream))
        finally:
            sent, received = sent + downstream.moved, upstream.moved  # counted as they flowed
            if counters is None:  # refused, failed or cancelled before the upstream answered
                counters = self._count_opened(snapshot, target, kind, identity)
            counters[1] += 1
            counters[2] += sent
            counters[3] += received
            for writer in (up_writer, down_writer):
                if writer is not None:
                    writer.close()
            self._log(wall, time.monotonic() - started, target, upstream_host=upstream_host,
                      server_name=server_name, sni=sni, sent=sent, received=received, peer=peer,
                      direction="inbound" if kind == "inbound" else "outbound")

    def _count_opened(self, snapshot: Snapshot | None, target: _Target, kind: str,
                      identity: str | None) -> list[int]:
        labels = self._labels(snapshot, target) if kind != "inbound" else self._inbound_labels(
            snapshot, identity, target.flags)
        counters = self.metrics.counters(labels)
        counters[0] += 1
        return counters

    async def _connect(self, target: _Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The upstream connection: plain, or mTLS with the peer's SPIFFE id checked (ISTIO_MUTUAL)."""
        assert target.address is not None
        if target.allowed is None or self.certificates is None:
            return await asyncio.open_connection(*target.address)
        from meshkit.proxy.tls import check_peer_identity  # noqa: PLC0415 - only with mTLS upstreams

        reader, writer = await asyncio.open_connection(*target.address, ssl=self.certificates.client_context,
                                                       server_hostname="")
        try:
            check_peer_identity(writer.get_extra_info("ssl_object"), target.allowed)
        except OSError:  # PeerIdentityError: not the identity the cluster allows
            writer.close()
            raise
        return reader, writer

    def _to_destination(self, snapshot: Snapshot, destination: TlsDestination) -> _Target:
        """A route's destination: one endpoint of its cluster (mTLS when ISTIO_MUTUAL), or the external
        host resolved with the egress map."""
        if destination.cluster is None:
            address = snapshot.tls.egress.resolve(destination.host, destination.port)
            return _Target(address, destination.stats_name, destination.host, destination.host,
                           flags="-" if address is not None else "DF")
        cluster = snapshot.clusters.get(destination.cluster)
        endpoint = cluster.pick(time.monotonic()) if cluster is not None else None
        name = destination.host.split(".", 1)[0]
        namespace = cluster.namespace if cluster is not None and cluster.namespace else "unknown"
        if endpoint is None:
            return _Target(None, destination.stats_name, destination.host, name, namespace=namespace,
                           flags="UH")
        allowed = snapshot.upstream_tls.get(destination.cluster)
        if allowed is not None and not allowed:  # ISTIO_MUTUAL without a list: the endpoint's own identity
            allowed = frozenset((endpoint.identity,)) if endpoint.identity else frozenset()
        return _Target((endpoint.address, endpoint.port), destination.stats_name, destination.host, name,
                       namespace=namespace, allowed=allowed, endpoint=endpoint)

    def _inbound_target(self, snapshot: Snapshot) -> _Target | None:
        cluster = snapshot.inbound_cluster
        endpoint = cluster.pick(time.monotonic()) if cluster is not None else None
        if endpoint is None:
            return None
        service = snapshot.inbound_service_fqdn
        return _Target((endpoint.address, endpoint.port), f"inbound|{endpoint.port}||", service,
                       snapshot.node_labels.service or "unknown", namespace=snapshot.node_labels.namespace)

    def _target(self, snapshot: Snapshot, host: str | None, port: int,
                connect_host: str | None = None) -> _Target | None:
        tls = snapshot.tls
        route = tls.route(host, port) if host else None
        if route is None and connect_host and not self.gateway:
            # an app's opaque TCP to a name:port (Istio's outbound TCP listener of that service port):
            # the mesh's tcp routes, then the service's own cluster (the default routes)
            route = tls.tcp_route(connect_host, port)
        if route is not None:
            return self._to_destination(snapshot, route.choose(self.rng))
        if self.gateway or not host:
            return None  # no filter chain takes it: closed, as Envoy does
        if tls.registered(host, port):
            address = tls.egress.resolve(host, port)
            return _Target(address, f"outbound|{port}||{host}", host, host,
                           flags="-" if address is not None else "DF")
        if snapshot.egress is not None and snapshot.egress.policy == REGISTRY_ONLY:
            # Envoy's BlackHoleCluster has no endpoints: tcp_proxy closes the connection with UH
            return _Target(None, BLACKHOLE_CLUSTER, UNKNOWN, BLACKHOLE_CLUSTER, flags="UH")
        # Istio's PassthroughCluster: the original destination. A name of the mesh (a port its Service
        # does not declare: no listener takes it) resolves to one of its instances, as the pod's DNS
        # and kube-proxy would; any other name by the egress map
        address = self._original_destination(snapshot, host, port)
        return _Target(address, PASSTHROUGH_CLUSTER, UNKNOWN, PASSTHROUGH_CLUSTER,
                       flags="-" if address is not None else "DF")

    def _original_destination(self, snapshot: Snapshot, host: str, port: int) -> tuple[str, int] | None:
        name = snapshot.tls.service_cluster(host)
        cluster = snapshot.clusters.get(name) if name is not None else None
        if cluster is None:
            return snapshot.tls.egress.resolve(host, port)
        endpoint = cluster.pick(time.monotonic())
        return (endpoint.address, endpoint.port) if endpoint is not None else None

    def _labels(self, snapshot: Snapshot | None, target: _Target) -> dict[str, str]:
        node = snapshot.node_labels if snapshot is not None else None
        labels = {"reporter": "source"}
        if node is not None:
            labels.update({
                "source_workload": node.workload, "source_canonical_service": node.canonical_service,
                "source_canonical_revision": node.canonical_revision,
                "source_workload_namespace": node.namespace, "source_principal": node.principal,
                "source_app": node.app, "source_version": node.version, "source_cluster": CLUSTER_ID})
        labels.update(self._destination_labels(target))
        labels.update({"request_protocol": "tcp", "response_flags": target.flags,
                       "connection_security_policy": "unknown"})
        return labels

    def _destination_labels(self, target: _Target) -> dict[str, str]:
        """The ``destination_*`` labels, in Istio's order, as its stats filter fills them on the
        client side: from the peer's metadata (exchanged over mutual TLS: the endpoint's workload, app,
        version, principal), else from the endpoint's own metadata (workload, namespace, canonical
        service and revision; no app, version or principal), else (Passthrough/BlackHole, no endpoint)
        ``unknown``, the canonical revision ``latest``."""
        endpoint = target.endpoint
        service = target.service_name
        if endpoint is None:
            workload = namespace = principal = app = version = canonical = cluster = UNKNOWN
            revision = "latest"
        else:
            mutual = target.allowed is not None and self.certificates is not None
            known = {"version": endpoint.version or "", **(endpoint.labels or {})}
            workload, namespace, cluster = endpoint.workload or UNKNOWN, target.namespace, CLUSTER_ID
            principal = (endpoint.identity or UNKNOWN) if mutual else UNKNOWN
            app = (endpoint.labels.get("app") or service or UNKNOWN) if mutual else UNKNOWN
            version = (endpoint.version or UNKNOWN) if mutual else UNKNOWN
            canonical = canonical_service(known, endpoint.workload or service or UNKNOWN)
            revision = canonical_revision(known)
        return {
            "destination_workload": workload, "destination_workload_namespace": namespace,
            "destination_principal": principal, "destination_app": app, "destination_version": version,
            "destination_service": target.service, "destination_canonical_service": canonical,
            "destination_canonical_revision": revision, "destination_service_name": service,
            "destination_service_namespace": target.namespace, "destination_cluster": cluster}

    def _inbound_labels(self, snapshot: Snapshot | None, identity: str | None,
                        flags: str = "-") -> dict[str, str]:
        """reporter="destination": this workload, and the caller's verified identity (mTLS) only."""
        node = snapshot.node_labels if snapshot is not None else None
        labels = {"reporter": "destination", "source_principal": identity or "unknown"}
        if node is not None and snapshot is not None:
            labels.update({
                "destination_workload": node.workload, "destination_workload_namespace": node.namespace,
                "destination_principal": node.principal, "destination_app": node.app,
                "destination_version": node.version, "destination_service": snapshot.inbound_service_fqdn,
                "destination_service_name": node.service or "unknown",
                "destination_service_namespace": node.namespace,
                "destination_canonical_service": node.canonical_service,
                "destination_cluster": CLUSTER_ID})
        labels.update({"request_protocol": "tcp", "response_flags": flags,
                       "connection_security_policy": "mutual_tls" if identity else "none"})
        return labels

    def _log(self, wall: float, elapsed: float, target: _Target, *, upstream_host: str | None,
             server_name: str | None, sni: str | None, sent: int, received: int, peer: str,
             direction: str) -> None:
        """``requested_server_name`` is the ClientHello's SNI only (Envoy's: null for opaque TCP)."""
        if self.access is None:
            return
        self.access.write({
            "start_time": datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "method": None, "path": None, "authority": server_name, "protocol": None, "status": 0,
            "response_flags": target.flags, "duration_ms": round(elapsed * 1000.0, 3),
            "upstream_host": upstream_host, "upstream_cluster": target.cluster, "route_name": None,
            "request_id": None,
            "bytes_received": sent, "bytes_sent": received, "user_agent": None, "x_forwarded_for": None,
            "direction": direction, "requested_server_name": sni, "downstream_remote_address": peer,
        })


def _downstream(peername: Any, header: ProxyHeader | None) -> str:
    """Envoy's ``%DOWNSTREAM_REMOTE_ADDRESS%``: ``ip:port`` of the PROXY header's source when it
    carries one, else of the socket's peer."""
    if header is not None and header.source is not None:
        host, port = header.source, header.source_port
    elif peername:
        host, port = str(peername[0]), peername[1]
    else:
        return ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else host


async def take_proxy_header(sock: socket.socket, stats: Any = None) -> ProxyHeader | None:
    """The PROXY protocol header off ``sock`` (Envoy's proxy_protocol listener filter, which runs
    before tls_inspector); None, with the socket closed and ``downstream_cx_proxy_proto_error``
    counted, when it is missing, malformed or late."""
    from meshkit.proxy.proxied import PROXY_HEADER_TIMEOUT, read_proxy_header  # noqa: PLC0415 - only then
    from meshkit.proxy.proxy_protocol import ProxyProtocolError  # noqa: PLC0415

    try:
        async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
            return await read_proxy_header(sock)
    except (ProxyProtocolError, TimeoutError, OSError) as exc:
        if stats is not None:
            stats.downstream_cx_proxy_proto_error += 1
        log.debug("closing a gateway connection: %s", exc)
        sock.close()
        return None


def _authority(authority: str | None) -> tuple[str | None, int]:
    if authority is None:
        return None, 443
    try:
        host, port = split_hostport(authority, 443, "CONNECT")
    except EgressError:
        return None, 443
    return host, port


async def _client_hello(reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
    """The bytes read until the SNI was known (to be sent on first), and the SNI (None: none)."""
    head = b""
    try:
        async with asyncio.timeout(INSPECT_TIMEOUT_S):
            while len(head) < MAX_RECORD:
                found = client_hello_sni(head)
                if found is not NEED_MORE:
                    return head, found
                data = await reader.read(MAX_RECORD - len(head))
                if not data:
                    break
                head += data
    except (TimeoutError, ConnectionError):
        pass
    found = client_hello_sni(head)
    return head, None if found is NEED_MORE else found


class _Flow:
    """One direction of a tunnel as the other direction's pump sees it: when it last carried bytes,
    and whether it is done."""

    __slots__ = ("done", "last", "moved")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.last = time.monotonic()
        self.moved = 0  # bytes copied so far (kept however the copy ends)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, flow: _Flow,
                answer: _Flow | None = None) -> None:
    """Copy until EOF (then half-close the other side), counting into ``flow`` (this direction: its
    bytes and when it last carried some); ``answer``: the opposite one, which a half-close the writer
    cannot pass on (mutual TLS) waits for (``_linger``). A side already gone ends the copy quietly
    (uvloop raises RuntimeError for a write on a closed transport)."""
    try:
        while data := await reader.read(CHUNK):
            flow.moved += len(data)
            flow.last = time.monotonic()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other side may still answer
        else:
            if answer is not None:
                await _linger(answer)
            writer.close()  # TLS has no half-close: close after what is written (Envoy's close after flush)
    except (ConnectionError, OSError, RuntimeError):
        writer.close()
    finally:
        flow.done.set()


async def _linger(answer: _Flow) -> None:
    """The client half-closed, and the upstream is mutual TLS, which Python's TLS cannot half-close
    (Envoy sends close_notify and keeps reading): keep the connection until the upstream is done, or
    has been silent for ``HALF_CLOSE_QUIET_S`` since the half-close or its last bytes (at most
    ``HALF_CLOSE_MAX_S``), so that the answer to what was sent (``echo x | nc tcp-echo 9000``) comes back."""
    closed_at = time.monotonic()
    deadline = closed_at + HALF_CLOSE_MAX_S
    while not answer.done.is_set():
        now = time.monotonic()
        quiet = max(answer.last, closed_at) + HALF_CLOSE_QUIET_S - now
        if quiet <= 0 or now >= deadline:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(quiet, deadline - now)):
                await answer.done.wait()


class SniffingAcceptor:
    """A gateway listener's acceptor: TLS (a PASSTHROUGH server's traffic) goes to a tunnel, plain
    HTTP to the listener's HTTP pipeline, as Envoy's filter chains match on the transport. With
    ISTIO_MUTUAL servers in the snapshot, TLS naming one of their hosts is the mesh's mutual TLS,
    terminated by ``tls.gateway_mutual``, which also refuses plaintext when those are all there is."""

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels
        self.mutual_stats: Any = None  # tls.gateway_mutual.MutualStats, once such a server was seen

    async def serve(
        self, listener: Listener, host: str, port: int, sock: socket.socket | None = None
    ) -> AcceptingServer:
        return accept_loop.serve(host, port, lambda conn: self._admit(listener, conn), "gateway", sock)

    async def _admit(self, listener: Listener, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            header: ProxyHeader | None = None
            if listener.proxy_protocol_required():  # the header first, then the SNI (as Envoy's filters)
                header = await take_proxy_header(conn, listener.stats)
                if header is None:
                    return
            async with asyncio.timeout(INSPECT_TIMEOUT_S):
                tls = await sniff_tls(conn)
            mutual = getattr(listener.state.current, "gateway_mutual", None) if listener.state else None
            if mutual is not None and await self._mutual(listener, conn, mutual, tls=bool(tls)):
                return
            if tls:
                await self.tunnels.accept(conn, header)
                return
            # plain HTTP: the listener's own connection kind (with the header already read)
            factory = listener.protocol_factory()
            if header is not None:
                from meshkit.proxy.proxied import ProxyProtocolConnection  # noqa: PLC0415

                factory = lambda: ProxyProtocolConnection(listener, header)  # noqa: E731
            await loop.connect_accepted_socket(factory, conn)
        except TimeoutError:
            conn.close()  # sent nothing: as Envoy's listener filter timeout
        except BaseException:
            conn.close()
            raise

    async def _mutual(self, listener: Listener, conn: socket.socket, mutual: Any, *, tls: bool) -> bool:
        """Did the ISTIO_MUTUAL servers take (or refuse) this connection (``tls.gateway_mutual``)?"""
        from meshkit.proxy.tls import gateway_mutual  # noqa: PLC0415 - only with ISTIO_MUTUAL servers

        if self.mutual_stats is None:
            self.mutual_stats = gateway_mutual.MutualStats()
        if not tls:
            if mutual.plaintext:
                return False
            gateway_mutual.refuse_plaintext(conn, self.mutual_stats)
            return True
        async with asyncio.timeout(INSPECT_TIMEOUT_S):
            name = await peek_sni(conn)
        if not mutual.covers(name):
            return False
        await gateway_mutual.accept(listener, conn, self.tunnels.certificates, self.mutual_stats)
        return True
