"""Running the control plane: what runs (`ControlPlane`) apart from where it listens (`run_control_plane`).

``ControlPlane`` owns the store, the registry, the push server and (optionally) the CA over its
state directory (default ``$MESHKIT_HOME/control``, i.e. ``~/.meshkit/control``: ``control.db``,
``ca/``) and builds the aiohttp application. ``run_control_plane`` binds it to a host/port (port 0
picks a free one) and records the address in ``<state dir>/address.json`` so the CLI can find it
(under the default state dir, without being told) next to ``admin-token`` (0600, see
`meshkit.control.auth`), the token every caller but a sidecar needs; ``serve`` is the
blocking entry point of ``meshkit control`` with a graceful shutdown on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from meshkit.config.compile import DEFAULT_TRACE_SAMPLING
from meshkit.control import console, explain_api, jwt_api, telemetry_api, timeline_api, traces_api
from meshkit.control.address import (
    address_file,
    default_control_dir,
    forget_address,
    write_address,
)
from meshkit.control.api import MAX_BODY_BYTES, Components, SignedCertificate, create_app
from meshkit.control.auth import Authenticator, ensure_admin_token
from meshkit.control.console.events import ConsoleEvents
from meshkit.control.console.events import add_route as add_events_route
from meshkit.control.database import open_database
from meshkit.control.jwks import JwksResolver
from meshkit.control.push import PushServer
from meshkit.control.registry import ServiceRegistry
from meshkit.control.release import GradualRelease
from meshkit.control.store import KEEP_REVISIONS, ConfigStore
from meshkit.control.telemetry import Scraper, TelemetryStore
from meshkit.control.traces import TraceExporter, TraceStore

if TYPE_CHECKING:
    from meshkit.control.serving_tls import ServingTls

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 15010
TLS_PORT = 15012  # istiod's: xDS and CA over TLS, what a cluster's sidecars use
# The names the control plane's certificate is for: its Kubernetes Service (meshkit.k8s.names), and
# localhost for a port-forward.
DEFAULT_TLS_HOSTS = ("meshkit-control.meshkit-system.svc", "meshkit-control.meshkit-system.svc.cluster.local",
                     "localhost")
SHUTDOWN_TIMEOUT = 3.0
SWITCH_INTERVAL = 0.00025  # seconds (Python's default 0.005); see serve()
TRACE_SAMPLING_ENV = "MESHKIT_TRACE_SAMPLING"  # meshConfig.defaultConfig.tracing.sampling, percent
TRACE_EXPORT_ENV = "MESHKIT_TRACE_EXPORT"  # "otlp=http://HOST:4318/v1/traces" or "zipkin=http://HOST:9411/api/v2/spans"


def parse_trace_sampling(setting: str | None) -> float:
    """The mesh's default sampling percentage (``$MESHKIT_TRACE_SAMPLING``; Istio's default 1%)."""
    if setting is None or not setting.strip():
        return DEFAULT_TRACE_SAMPLING
    try:
        value = float(setting)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{TRACE_SAMPLING_ENV}={setting!r}: expected a percentage from 0 to 100")
    return value


def trace_exporter(setting: str | None) -> TraceExporter | None:
    """``FORMAT=URL`` (the value of $MESHKIT_TRACE_EXPORT) -> an exporter; empty -> None."""
    if not setting:
        return None
    fmt, sep, url = setting.partition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise ValueError(f"{TRACE_EXPORT_ENV}={setting!r}: expected otlp=URL or zipkin=URL")
    return TraceExporter(url, fmt.strip().lower())


class _CaSigner:
    """Adapts `meshkit.control.ca.SigningService` to the API's `Signer` shape."""

    def __init__(self, service: Any) -> None:
        self._service = service

    async def sign(self, body: object) -> SignedCertificate:
        result: SignedCertificate = await self._service.sign(body)
        return result

    @property
    def root_pem(self) -> str:
        return str(self._service.ca.root_pem)


class _TokensOnDisk:
    """Bootstrap tokens as the token file holds them: issued in this process, or by another one
    (the runtime) into the same file, and revoked there too.

    The file is read again whenever it changed (size or mtime), so a runtime that issues a
    sidecar's token after the control plane started needs no API call (there is deliberately no
    endpoint that mints tokens), and a token it revokes (a removed instance's) stops working.
    """

    def __init__(self, tokens: Any, path: Path, opener: Any) -> None:
        self._tokens = tokens
        self._path = path
        self._opener = opener
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size  # every save is a rename: a new inode

    def _reload(self) -> None:
        self._seen = self._stamp()
        if self._seen is not None:
            self._tokens = self._opener.open(self._path)

    async def authenticate(self, credential: str) -> str | None:
        if self._stamp() != self._seen:
            self._reload()
        identity: str | None = self._tokens.identity_for_token(credential)
        if identity is None and self._path.exists():  # issued within the same stamp: read it again
            self._reload()
            identity = self._tokens.identity_for_token(credential)
        return identity


class ControlPlane:
    """Store, registry, push server and CA over one state directory; no sockets."""

    def __init__(self, state_dir: Path | str | None = None, *, with_ca: bool = True,
                 ca_ttl: timedelta | None = None, debounce: float = 0.005, ping_interval: float = 15.0,
                 retention: float = 300.0, authenticator: Any = None, max_body: int = MAX_BODY_BYTES,
                 keep_revisions: int = KEEP_REVISIONS, trace_sampling: float | None = None,
                 trace_export: str | None = None) -> None:
        """``authenticator`` (a `ca.CallerAuthenticator`) replaces the bootstrap tokens as the CA's
        check of who asks for a certificate (Kubernetes: a TokenReview of the pod's token).
        ``trace_sampling`` is the mesh config's ``defaultConfig.tracing.sampling`` (percent; default
        ``$MESHKIT_TRACE_SAMPLING``, else Istio's 1%); Telemetry resources override it. ``trace_export``
        (``otlp=URL`` or ``zipkin=URL``, default ``$MESHKIT_TRACE_EXPORT``) forwards every span there."""
        self.directory = Path(state_dir) if state_dir is not None else default_control_dir()
        self._db: sqlite3.Connection = open_database(self.directory)
        self.max_body = max_body
        self.release = GradualRelease()  # frees retired configs and snapshots a slice at a time
        self.store = ConfigStore(self._db, keep_revisions=keep_revisions, release=self.release.put)
        self.registry = ServiceRegistry(self._db)
        if trace_sampling is None:
            trace_sampling = parse_trace_sampling(os.environ.get(TRACE_SAMPLING_ENV))
        self.push = PushServer(self.store, self.registry, debounce=debounce, ping_interval=ping_interval,
                               retention=retention, trace_sampling=trace_sampling,
                               release=self.release.put)
        self.jwks = JwksResolver(self.store.resources, self.push.schedule)
        self.push.jwks = self.jwks
        self._unsubscribe_jwks: Callable[[], None] = lambda: None
        self.telemetry = Scraper(TelemetryStore())
        self.telemetry.listeners.append(self.push.timeline.scraped)  # first request per snapshot version
        self.traces = TraceStore()
        self.console_events = ConsoleEvents()  # what the open consoles hear about (GET /api/v1/events)
        self._unsubscribe_console: Callable[[], None] = lambda: None
        self.trace_exporter = trace_exporter(trace_export or os.environ.get(TRACE_EXPORT_ENV))
        if self.trace_exporter is not None:
            self.traces.listeners.append(self.trace_exporter)
        self.signer: _CaSigner | None = None
        self.authority: Any = None  # meshkit.control.ca.CertificateAuthority when the CA runs
        self.tokens: Any = None  # meshkit.control.ca.BootstrapTokens when the CA runs
        self.admin_token = ensure_admin_token(self.directory)
        if with_ca:
            from meshkit.control import ca  # noqa: PLC0415 (optional part)

            directory = self.directory / "ca"
            authority = self.authority = ca.CertificateAuthority.open(directory)
            self.tokens = ca.BootstrapTokens.open(directory / ca.TOKENS_FILE)
            if authenticator is None:
                authenticator = _TokensOnDisk(self.tokens, directory / ca.TOKENS_FILE, ca.BootstrapTokens)
            service = ca.SigningService(authority, authenticator, ttl=ca_ttl or ca.DEFAULT_TTL)
            self.signer = _CaSigner(service)
            self.registry.set_root_pem(self.signer.root_pem)
        # sidecars present the credential the CA knows them by (bootstrap token or ServiceAccount token)
        self.authenticator = Authenticator(self.admin_token, authenticator)

    def create_app(self) -> web.Application:
        app = create_app(Components(self.store, self.registry, self.push, self.signer), self.authenticator,
                         max_body=self.max_body)
        telemetry_api.add_routes(app, self.telemetry)
        traces_api.add_routes(app, self.traces)
        explain_api.add_routes(app, self.store, self.registry, self.push)
        timeline_api.add_routes(app, self.store, self.push)
        jwt_api.add_routes(app, self.jwks, self.directory)
        console.add_routes(app, self.telemetry)
        add_events_route(app, self.console_events, lambda: self.store.revision)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.push.start()
        self._unsubscribe_jwks = self.store.subscribe(self.jwks.sync)
        self.jwks.sync()
        self.telemetry.start()
        if self.trace_exporter is not None:
            self.trace_exporter.start()
        self._follow_for_consoles()

    def _follow_for_consoles(self) -> None:
        """Tell the open consoles when the config, a proxy or the telemetry changed."""
        events = self.console_events
        self._unsubscribe_console = self.store.subscribe(
            lambda: events.publish("config", {"revision": self.store.revision}))
        self.push.listeners.append(lambda: events.publish("proxies", {"revision": self.store.revision}))
        self.telemetry.rounds.append(lambda at: events.publish("telemetry", {"at": at}))

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.console_events.close()  # the consoles' streams end too
        self._unsubscribe_console()
        self.push.close()  # ends the long-lived SSE streams, so the server can stop promptly
        self._unsubscribe_jwks()
        await self.jwks.close()
        await self.telemetry.close()
        if self.trace_exporter is not None:
            await self.trace_exporter.close()

    def close(self) -> None:
        self.push.close()
        self.release.close()
        self._db.close()


class RunningControlPlane:
    """A control plane listening on a socket; ``await close()`` (or ``async with``) stops it."""

    def __init__(self, control_plane: ControlPlane, runner: web.AppRunner, host: str, port: int,
                 recorded: Path | None, *, tls: TlsListener | None = None) -> None:
        self.control_plane = control_plane
        self.runner = runner
        self.host = host
        self.port = port
        self._recorded = recorded
        self.tls = tls

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_note(self) -> str:
        """`` and TLS on :PORT for NAMES`` when the TLS listener runs, else empty (for announcements)."""
        if self.tls is None:
            return ""
        return f" and TLS on :{self.tls.port} for {', '.join(self.tls.serving.dns_names)}"

    @property
    def admin_token(self) -> str:
        return self.control_plane.admin_token

    @property
    def admin_headers(self) -> dict[str, str]:
        """``Authorization`` for an admin call."""
        return {"Authorization": f"Bearer {self.control_plane.admin_token}"}

    async def close(self) -> None:
        if self.tls is not None:
            self.tls.renewal.cancel()
        await self.runner.cleanup()
        self.control_plane.close()
        if self._recorded is not None:
            forget_address(self._recorded)

    async def __aenter__(self) -> RunningControlPlane:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


@dataclass
class TlsListener:
    """The TLS port (istiod's 15012) of a running control plane: the same API, the mesh CA's
    certificate for ``serving.dns_names``; ``renewal`` re-issues it at half its lifetime."""

    port: int
    serving: ServingTls
    renewal: asyncio.Task[None]


async def run_control_plane(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                            state_dir: Path | str | None = None, *, record_address: bool = True,
                            tls_port: int | None = None, tls_hosts: Sequence[str] = DEFAULT_TLS_HOSTS,
                            **options: Any) -> RunningControlPlane:
    """Start a control plane on ``host:port`` (0 = a free port) and return once it accepts connections.

    With ``tls_port`` (0 = a free port) it also serves the same API over TLS there, with a
    certificate for ``tls_hosts`` issued by its own CA (``meshkit.control.serving_tls``); the
    sidecars of a cluster use that port. ``options`` go to `ControlPlane` (``with_ca``,
    ``debounce``, ``ping_interval``, ``retention``...).
    """
    control_plane = ControlPlane(state_dir, **options)
    if tls_port is not None and control_plane.authority is None:
        control_plane.close()
        raise ValueError("a TLS port needs the CA (its certificate is issued by the mesh's root)")
    runner = web.AppRunner(control_plane.create_app(), shutdown_timeout=SHUTDOWN_TIMEOUT,
                           access_log=None, handle_signals=False,
                           handler_cancellation=True)  # a dropped SSE client ends its stream at once
    tls = None
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        if tls_port is not None:
            from meshkit.control.serving_tls import ServingTls  # noqa: PLC0415 (with the CA only)

            serving = ServingTls(control_plane.authority, tls_hosts, control_plane.directory / "serving")
            tls_site = web.TCPSite(runner, host, tls_port, ssl_context=serving.context)
            await tls_site.start()
            tls = TlsListener(int(runner.addresses[-1][1]), serving, asyncio.ensure_future(serving.run()))
    except BaseException:
        await runner.cleanup()
        control_plane.close()
        raise
    bound = int(runner.addresses[0][1])  # what port 0 became
    recorded = None
    if record_address:
        recorded = address_file(control_plane.directory)
        write_address(recorded, f"http://{host}:{bound}")
    return RunningControlPlane(control_plane, runner, host, bound, recorded, tls=tls)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, state_dir: Path | str | None = None,
          *, announce: Any = print, **options: Any) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully (the `meshkit control` command)."""

    async def start() -> RunningControlPlane:
        running = await run_control_plane(host, port, state_dir, **options)
        plane = running.control_plane
        announce(f"meshkit control plane listening on {running.url}{running.tls_note} "
                 f"(state: {plane.directory}, revision {plane.store.revision})")
        return running

    # the loop shares the GIL with the threads that parse and compile large configs: each time it
    # gives the GIL up (any socket call), it waits up to one switch interval to get it back. A CSR
    # gives it up several times: with 1 ms, the median CSR during a 1 MB apply was 5.9-6.3 ms (idle
    # 1.3-1.6 ms, the bound ~6.7), with 0.25 ms 3.6-6.5 ms, apply times alike (4 interleaved pairs
    # of benchmarks/config_bounds.py --sizes 1000000, 8 Dec 2026; under a one-core CPU hog 5 pairs,
    # median 8.5-12.2 against 7.1-11.1 ms)
    sys.setswitchinterval(SWITCH_INTERVAL)
    serve_until_signalled(start, announce)


class _Closable(Protocol):
    async def close(self) -> None: ...


def serve_until_signalled(start: Callable[[], Awaitable[_Closable]], announce: Any = print) -> None:
    """Run what ``start`` starts on uvloop until SIGINT/SIGTERM, then close it gracefully."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running = await start()
        try:
            await stop.wait()
        finally:
            await running.close()
        announce("meshkit control plane stopped")

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Any:
    """uvloop's event loop when installed (a core dependency except on Windows), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop
