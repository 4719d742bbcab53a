"""The sidecar process: ``python -m meshkit.proxy`` (and ``meshkit proxy ...``) starts here.

``main(argv)`` parses the command line, runs the outbound, inbound and admin listeners on
one event loop (uvloop when available), gets snapshots from ``--config FILE`` (reloaded on
SIGHUP) or from ``--control URL --id ID``, writes the bound ports to ``--ports-file`` and
shuts down cleanly on SIGTERM/SIGINT, giving in-flight requests a moment to finish.

``--concurrency N`` (N > 1): the listening sockets are bound N times with ``SO_REUSEPORT`` and N-1
worker processes forked before any event loop exists (``workers``, ``worker``); this process keeps
the control plane, the certificates and the admin port and feeds the workers over pipes.

mTLS: with ``--control`` and a CA token (``MESHKIT_CA_TOKEN`` or ``--ca-token-file``) the
sidecar gets its workload certificate before it reports ready (``tls.sidecar``), keeps it
rotated, applies PeerAuthentication on its inbound port (``tls.inbound``) and speaks mTLS to
ISTIO_MUTUAL clusters (``upstream``). ``--tls-dir DIR`` does the same with certificate files
and no CA (``tls.static``, never rotated). Without either it runs plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit.proxy import accept_loop
from meshkit.proxy.accept_loop import AcceptingServer
from meshkit.proxy.admin import Admin
from meshkit.proxy.filters.accesslog import AccessLogSink
from meshkit.proxy.listener import Listener, ListenerLimits
from meshkit.proxy.pipeline import build_inbound, build_outbound
from meshkit.proxy.spans import SpanRecorder
from meshkit.proxy.stats import IstioMetrics
from meshkit.proxy.tunnel import SniffingAcceptor, Tunnels
from meshkit.proxy.upstream import Upstream
from meshkit.proxy.xds import ConfigState, StaticConfig, XdsClient

if TYPE_CHECKING:
    import socket
    import ssl

    from meshkit.proxy.tls.inbound import MtlsAcceptor
    from meshkit.proxy.tls.relayed import RelayedCertificates
    from meshkit.proxy.tls.sidecar import SidecarCertificates
    from meshkit.proxy.tls.static import StaticCertificates

log = logging.getLogger("meshkit.proxy")

DEFAULT_PORTS = {"outbound": 15001, "inbound": 15006, "admin": 15000}
TOKEN_ENV = "MESHKIT_CA_TOKEN"
TOKEN_FILE_ENV = "MESHKIT_TOKEN_FILE"  # a file holding the token, re-read before every CSR (Kubernetes)
INSTANCE_IP_ENV = "INSTANCE_IP"  # the pod's IP (the injector sets it from status.podIP)
INBOUND_SOURCE_ADDRESS = "127.0.0.6"  # Istio's: inbound delivery to the pod IP, let through by capture
CONTROL_CA_ENV = "MESHKIT_CONTROL_CA"  # the root that signed the control plane's TLS certificate
CONTROL_TOKEN_FILE_ENV = "MESHKIT_CONTROL_TOKEN_FILE"  # the control plane credential of a proxy without CA
TELEMETRY_ENV = "MESHKIT_PROXY_TELEMETRY"  # --telemetry's default: benchmarks switch a mesh's sidecars
TELEMETRY_CHOICES = ("on", "off", "no-tracing")
CONCURRENCY_ENV = "MESHKIT_PROXY_CONCURRENCY"  # --concurrency's default: benchmarks give a whole mesh workers
SWEEP_INTERVAL = 5.0


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the width given: its default asks ``shutil.get_terminal_size()``,
    and ``import shutil`` loads ``bz2`` and ``lzma``, which would then stay in every sidecar's memory
    (``argparse`` builds a formatter for each ``add_argument``). Same width, found as shutil does."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns())


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="meshkit proxy", description="The meshkit sidecar proxy (docs/snapshot.md is its config).",
        formatter_class=_HelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="static snapshot JSON (reloaded on SIGHUP)")
    source.add_argument("--control", metavar="URL", help="control plane base URL, e.g. http://127.0.0.1:15010")
    parser.add_argument("--id", dest="node_id", help="<instance>.<namespace> of this proxy (with --control)")
    parser.add_argument(
        "--kind", default="sidecar", choices=["sidecar", "gateway"],
        help="sidecar (beside an app) or gateway (an ingress with no app of its own)",
    )
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"0 = free port ({port})")
    parser.add_argument("--tcp-port", type=int, metavar="PORT",
                        help="a gateway's TCP servers (protocol TCP Gateway servers), carried by port")
    parser.add_argument(
        "--https-port", type=int, metavar="PORT",
        help="a gateway's HTTPS listener (0 = free port): its Gateways' HTTPS servers, certificate by SNI",
    )
    parser.add_argument("--access-log", default="off", metavar="PATH|-|off", help="JSON access log target")
    parser.add_argument(
        "--telemetry", choices=TELEMETRY_CHOICES, default=os.environ.get(TELEMETRY_ENV) or "on",
        help="for benchmarks: 'off' runs no metrics, access-log or tracing filter (as Istio's Telemetry "
        "API disabling all three), 'no-tracing' no tracing filter (no trace headers or spans); "
        f"default on, or env {TELEMETRY_ENV}",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--ports-file", metavar="PATH", help="write the bound ports as JSON here")
    parser.add_argument(
        "--max-request-body", type=int, default=ListenerLimits.max_body_bytes, metavar="BYTES"
    )
    parser.add_argument(
        "--stream-idle-timeout", type=float, default=ListenerLimits.stream_idle_timeout, metavar="SECONDS",
        help="end a request whose body stalls this long with 408 (Envoy's stream_idle_timeout, default "
        "300; the snapshot's mesh.stream_idle_timeout_ms wins)",
    )
    parser.add_argument(
        "--health-port", type=int, metavar="PORT",
        help="serve the status port (Kubernetes: 15021): /healthz/ready and the app probes the injector "
        "rewrote (/app-health/..., from env MESHKIT_APP_PROBERS)",
    )
    parser.add_argument(
        "--capture", action="store_true",
        help="the pod's traffic is redirected here by iptables (Kubernetes): honour SO_ORIGINAL_DST and "
        "pass non-HTTP outbound TCP through to it (PassthroughCluster)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=os.environ.get(CONCURRENCY_ENV) or 1, metavar="N",
        help="worker processes serving the listeners (Envoy's --concurrency; Istio's proxy.istio.io/config "
        "concurrency): N > 1 forks N-1 workers sharing the ports (SO_REUSEPORT); 0 = one per CPU; default 1, "
        f"or env {CONCURRENCY_ENV}",
    )
    parser.add_argument("--drain-seconds", type=float, default=2.0, help="grace period on SIGTERM")
    parser.add_argument(
        "--ca-token-file", metavar="PATH",
        help=f"file with the CA bootstrap token, re-read at each renewal (or env {TOKEN_FILE_ENV}; "
        f"or the token itself in env {TOKEN_ENV}); enables mTLS",
    )
    parser.add_argument(
        "--control-token-file", metavar="PATH",
        help=f"file with the token for the control plane's API (or env {CONTROL_TOKEN_FILE_ENV}); "
        "default: the CA token",
    )
    parser.add_argument(
        "--control-ca", metavar="PATH", default=os.environ.get(CONTROL_CA_ENV) or None,
        help="with an https:// --control URL: the root certificate(s) to verify the control plane "
        f"against (Kubernetes: the mesh root the injector mounts; env {CONTROL_CA_ENV}); default: "
        "the system's CAs",
    )
    parser.add_argument(
        "--tls-dir", metavar="DIR",
        help="mTLS with fixed certificates: DIR/cert-chain.pem, key.pem, root-cert.pem (no CA, no rotation)",
    )
    args = parser.parse_args(argv)
    if args.telemetry not in TELEMETRY_CHOICES:  # argparse does not check a default against choices
        choices = ", ".join(TELEMETRY_CHOICES)
        parser.error(f"env {TELEMETRY_ENV}={args.telemetry!r}: expected one of {choices}")
    if args.https_port is not None and args.kind != "gateway":
        parser.error("--https-port is for a gateway (--kind gateway)")
    if args.tcp_port is not None and args.kind != "gateway":
        parser.error("--tcp-port is for a gateway (--kind gateway)")
    if args.control and not args.node_id:
        parser.error("--control needs --id <instance>.<namespace>")
    args.ca_token = _ca_token(parser, args)
    if args.ca_token and not args.control:
        parser.error("a CA token needs --control URL (the CA that signs the certificate)")
    if args.ca_token and args.tls_dir:
        parser.error("--tls-dir and a CA token exclude each other: certificates come from files or the CA")
    args.control_tls = _control_tls(parser, args)
    if args.concurrency < 0:
        parser.error(f"--concurrency {args.concurrency}: expected 0 (one per CPU) or more")
    if args.concurrency == 0:
        args.concurrency = os.cpu_count() or 1
    return args


def _control_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    """How to reach an ``https://`` control plane (istiod's 15012): the server's certificate is
    verified, hostname included, against ``--control-ca``; never a plaintext fallback."""
    if not args.control or not args.control.startswith("https://"):
        if args.control_ca and args.control:
            parser.error("--control-ca is for an https:// --control URL")
        return None
    import ssl  # noqa: PLC0415 (only a sidecar with a TLS control plane needs it here)

    try:
        return ssl.create_default_context(cafile=args.control_ca)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"--control-ca {args.control_ca}: {getattr(exc, 'strerror', None) or exc}")


def _ca_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    # In Kubernetes the injector mounts the pod's projected token and names it in MESHKIT_TOKEN_FILE.
    args.ca_token_file = args.ca_token_file or os.environ.get(TOKEN_FILE_ENV) or None
    if args.ca_token_file:
        try:
            token = Path(args.ca_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            parser.error(f"--ca-token-file {args.ca_token_file}: {exc.strerror or exc}")
        if not token:
            parser.error(f"--ca-token-file {args.ca_token_file}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def control_credential(args: argparse.Namespace) -> str | None:
    """The bearer token of the xDS calls, read at each connection: ``--control-token-file``, else
    the CA token (its file again when there is one: Kubernetes rotates projected tokens)."""
    named = getattr(args, "control_token_file", None) or os.environ.get(CONTROL_TOKEN_FILE_ENV)
    path = named or getattr(args, "ca_token_file", None)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            log.warning("control plane token file %s: %s", path, exc.strerror or exc)
            return None
    token = getattr(args, "ca_token", None)
    return str(token) if token else None


class Proxy:
    """Everything one sidecar process runs; ``start`` binds, ``stop`` drains and closes."""

    def __init__(self, args: argparse.Namespace, *, worker: bool = False) -> None:
        self.args = args
        self.worker = worker  # a --concurrency worker: listeners only, fed by the first process (worker)
        self.sockets: dict[str, socket.socket] = {}  # listening sockets bound before the fork (workers)
        self.state = ConfigState()
        self.metrics = IstioMetrics()
        self.upstream = Upstream()
        telemetry = getattr(args, "telemetry", "on")
        off = telemetry == "off"
        self.access = None if args.access_log == "off" or off else AccessLogSink(args.access_log)
        # The TLS modules are imported only by a sidecar that does mTLS. None of them loads
        # cryptography (~10 MiB): keys, CSRs and certificate checks run in a short-lived helper
        # process (tls.csr_client); tests/security/test_sidecar_no_cryptography.py and
        # tests/security/test_e2e_rotation.py keep it that way.
        self.certificates: SidecarCertificates | StaticCertificates | RelayedCertificates | None = None
        self.sidecar_certificates: SidecarCertificates | None = None
        self.acceptor: MtlsAcceptor | None = None
        if worker and getattr(args, "ca_token", None):  # the first process rotates, and relays each
            from meshkit.proxy.tls.relayed import RelayedCertificates  # noqa: PLC0415

            self.certificates = RelayedCertificates()
        elif getattr(args, "ca_token", None):
            from meshkit.proxy.tls.sidecar import SidecarCertificates  # noqa: PLC0415

            self.certificates = self.sidecar_certificates = SidecarCertificates(
                args.control, args.ca_token, args.ca_token_file, tls=args.control_tls
            )
        elif getattr(args, "tls_dir", None):
            from meshkit.proxy.tls import CertificateError  # noqa: PLC0415
            from meshkit.proxy.tls.static import StaticCertificates  # noqa: PLC0415

            try:
                self.certificates = StaticCertificates.load(args.tls_dir)
            except CertificateError as exc:
                raise SystemExit(f"meshkit proxy: --tls-dir: {exc}") from None
        if self.certificates is not None:
            from meshkit.proxy.tls.inbound import MtlsAcceptor  # noqa: PLC0415

            self.upstream.certificates = self.certificates
            self.acceptor = MtlsAcceptor(self.certificates)
        limits = ListenerLimits(
            max_body_bytes=args.max_request_body, stream_idle_timeout=args.stream_idle_timeout
        )
        # Spans go to the control plane's collector: only a proxy that has one records them.
        self.spans = SpanRecorder(args.node_id or "") if args.control and telemetry == "on" else None
        tracing, metrics = telemetry == "on", None if off else self.metrics
        outbound = build_outbound(self.upstream.send, metrics, self.access, self.spans, tracing=tracing)
        inbound = build_inbound(self.upstream.send, metrics, self.access, self.spans, tracing=tracing)
        self.listeners: dict[str, Listener] = {
            "outbound": Listener("outbound", outbound, self.state, limits),
            "inbound": Listener("inbound", inbound, self.state, limits),
        }
        # gatewayTopology.proxyProtocol: a gateway's snapshot may ask for a PROXY header
        if getattr(args, "kind", "sidecar") == "gateway":
            self.listeners["outbound"].proxy_protocol_capable = True
        # TLS the proxy does not open (tunnel): an app's CONNECT to its sidecar, a gateway's PASSTHROUGH
        self.tunnels = Tunnels(self.state, self.access, gateway=args.kind == "gateway")
        if getattr(args, "https_port", None) is not None:  # a gateway's HTTPS servers (tls.serving)
            from meshkit.proxy.tls.serving import GatewayTlsAcceptor  # noqa: PLC0415

            https = self.listeners["https"] = Listener("outbound", outbound, self.state, limits)
            https.acceptor, https.scheme = GatewayTlsAcceptor(self.state, self.tunnels), "https"
        self.listeners["outbound"].tunnels = self.tunnels
        self.listeners["inbound"].tcp_relay = self.tunnels
        self.tunnels.certificates = self.certificates
        if args.kind == "gateway":
            self.listeners["outbound"].acceptor = SniffingAcceptor(self.tunnels)
        if self.acceptor is not None:
            self.listeners["inbound"].acceptor = self.acceptor
            self.state.listeners.append(self.acceptor.on_snapshot)
        passthrough = None
        if getattr(args, "capture", False):
            from meshkit.proxy.passthrough import OutboundAcceptor  # noqa: PLC0415

            captured = OutboundAcceptor()
            self.listeners["outbound"].acceptor = captured
            passthrough = captured.stats
            # As Istio >= 1.10: inbound requests reach the app at the pod's IP (an app bound to it
            # alone is reached too), from 127.0.0.6, which the capture rules let through.
            pod_ip = os.environ.get(INSTANCE_IP_ENV, "").strip()
            if pod_ip:
                self.state.app_address = pod_ip
                self.upstream.source_address[pod_ip] = INBOUND_SOURCE_ADDRESS
        self.admin = Admin(
            self.state, self.metrics, self.upstream, self.listeners, certificates=self.certificates,
            tls_stats=self.acceptor.stats if self.acceptor is not None else None, spans=self.spans,
            passthrough=passthrough, tunnels=self.tunnels.metrics,
            access_log_path=None if args.access_log in ("off", "-") or off else args.access_log,
        )
        self.admin_listener = Listener(
            "admin", self.admin.handle, limits=ListenerLimits(stream_idle_timeout=args.stream_idle_timeout)
        )
        self.health_listener: Listener | None = None
        if getattr(args, "health_port", None) is not None and not worker:
            from meshkit.proxy.probes import ProberError, from_environment  # noqa: PLC0415

            try:
                probers = from_environment(dict(os.environ), self.admin.ready)
            except ProberError as exc:
                raise SystemExit(f"meshkit proxy: {exc}") from None
            self.health_listener = Listener("health", probers.handle)
        self.ports: dict[str, int] = {}
        self.tcp_server: AcceptingServer | None = None
        self.static: StaticConfig | None = None
        self.xds: XdsClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        if args.config and not self.worker:
            self.static = StaticConfig(args.config, self.state)
            reason = self.static.load()
            if reason is not None:
                raise SystemExit(f"meshkit proxy: cannot start with {args.config}: {reason}")
            self.static.install_reload(loop)
        for name, listener in self.listeners.items():
            port = getattr(args, f"{name}_port")
            self.ports[name] = await listener.start(args.address, port, self.sockets.get(name))
        if getattr(args, "tcp_port", None) is not None:  # a gateway's TCP servers (tunnel.accept_tcp)
            self.tcp_server = accept_loop.serve(
                args.address, args.tcp_port, self.tunnels.accept_tcp, "tcp", self.sockets.get("tcp")
            )
            self.ports["tcp"] = int(self.tcp_server.sockets[0].getsockname()[1])
        if self.worker:  # snapshots and certificates come over the pipe; no admin, no control plane
            self._tasks.append(asyncio.ensure_future(self._sweep_upstream()))
            return
        self.ports["admin"] = await self.admin_listener.start(args.address, args.admin_port)
        if self.health_listener is not None:
            self.ports["health"] = await self.health_listener.start(args.address, args.health_port)
        if self.sidecar_certificates is not None:  # before xds: waits for the identity
            certificates = self.sidecar_certificates
            self._tasks.append(asyncio.ensure_future(certificates.run(self.state, self._stopping)))
        if args.control:
            self.xds = XdsClient(args.control, args.node_id, self.state, kind=args.kind, tls=args.control_tls,
                                 token=lambda: control_credential(args), admin_port=self.ports["admin"])
            self._tasks.append(asyncio.ensure_future(self.xds.run()))
            if self.spans is not None:
                self._tasks.append(asyncio.ensure_future(self.spans.ship(self.xds.post)))
        self._tasks.append(asyncio.ensure_future(self._sweep_upstream()))
        if args.ports_file:
            path = Path(args.ports_file)
            tmp = path.with_name(path.name + ".tmp")
            written: dict[str, object] = {**self.ports, "pid": os.getpid()}
            if self.admin.workers is not None:
                written["workers"] = [handle.pid for handle in self.admin.workers.workers]
            tmp.write_text(json.dumps(written), encoding="utf-8")
            tmp.replace(path)
        log.info("listening on %s %s", args.address, self.ports)

    async def _sweep_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.upstream.sweep(loop.time())

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        if self.static is not None:
            self.static.remove_reload(asyncio.get_running_loop())
        if self.xds is not None:
            if self.spans is not None:  # what is buffered still reaches the collector
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.spans.flush(self.xds.post), 1.0)
            await self.xds.close()
        await asyncio.gather(
            *(listener.close(self.args.drain_seconds) for listener in self.listeners.values())
        )
        if self.tcp_server is not None:
            self.tcp_server.close()
        self.tunnels.close()
        if not self.worker:
            await self.admin_listener.close(0.1)
        if self.health_listener is not None:
            await self.health_listener.close(0.1)
        self.upstream.close()
        if self.access is not None:
            self.access.close()


async def run(args: argparse.Namespace, shared: list[Any] | None = None) -> int:
    """The first (or only) process. ``shared``: with --concurrency N > 1, this process's listening
    sockets and the handles of the workers forked (``workers``)."""
    proxy = Proxy(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = None
    if shared is not None:
        from meshkit.proxy.workers import Pool  # noqa: PLC0415 - only with --concurrency N > 1

        sockets, handles = shared
        proxy.sockets = sockets
        pool = proxy.admin.workers = Pool(handles, stop.set)
    try:
        if pool is not None:
            await pool.start(proxy)
        await proxy.start()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if pool is not None:
            await asyncio.gather(proxy.stop(), pool.stop(args.drain_seconds))
        else:
            await proxy.stop()
    if pool is not None and pool.died is not None:
        print(pool.died, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator, only for the real process

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass
    shared = None
    if args.concurrency > 1:  # bind, then fork, before any event loop exists (workers)
        from meshkit.proxy.workers import bind, fork_workers  # noqa: PLC0415

        sets = bind(args, args.concurrency)
        shared = [sets[0], fork_workers(args, sets)]
    try:
        return asyncio.run(run(args, shared))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130
