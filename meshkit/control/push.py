"""Streaming snapshots to sidecars and tracking what each one accepted (istiod's xDS server, in small).

Protocol (docs/snapshot.md, "Push protocol"): a sidecar holds ``GET /api/v1/xds/stream?id=...``
open as server-sent events; it gets its full snapshot on connect and a new one whenever a store or
registry change alters it (same content hash -> nothing is sent). It answers each with an ACK or a
NACK (with a reason), which ``proxy_status()`` reports like ``istioctl proxy-status``:
SYNCED (acked the latest), NACKED (rejected the latest) or STALE (anything else).

Changes are debounced: a burst of changes within ``debounce`` seconds costs one recompilation.
Compiling is done once per distinct node *shape* (a node minus its instance name: replicas of a
workload share it) and the per-instance fields are patched in, so N replicas cost one compile.
Recently disconnected proxies stay listed (and recompiled) for ``retention`` seconds.
A large apply has the next revision's snapshots compiled ahead, while it is prepared (`expect`);
a pass takes them for each shape whose inputs are exactly those they were compiled from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from meshkit.config import codes
from meshkit.config.compile import DEFAULT_TRACE_SAMPLING
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import Node, RegistryView
from meshkit.control.preparation import GC_PAUSED, Precompiled, SnapshotJob
from meshkit.control.registry import ServiceRegistry
from meshkit.control.release import Release, release_at_once
from meshkit.control.rendering import CompileInputs, compile_rendered, sse
from meshkit.control.store import ConfigStore, NotFoundError
from meshkit.control.timeline import RolloutTimeline

log = logging.getLogger("meshkit.control.push")


SYNCED, STALE, NACKED = "SYNCED", "STALE", "NACKED"
# per proxy of a group: (its version, its SSE event, what to release: its snapshot, if compiled here)
Compiled = list[tuple[str, bytes, dict[str, Any] | None]]
PROXY_KINDS = ("sidecar", "gateway")
PRECOMPILED_WAIT_S = 5.0  # the longest a pass waits for the snapshots compiled ahead (`expect`)


@dataclass(eq=False)
class ProxyState:
    """What the control plane knows about one proxy (mutable, owned by the PushServer)."""

    id: str
    kind: str
    node: Node
    connected: bool = False
    connected_at: float = 0.0
    disconnected_at: float | None = None
    generation: int = 0  # bumped by every new stream, so an older stream of the same id ends
    latest_version: str | None = None  # of its latest snapshot
    latest_revision: int | None = None  # the store revision its latest snapshot was compiled from
    latest_frame: bytes | None = None  # its SSE event, encoded once off the loop
    sent_version: str | None = None
    acked_version: str | None = None
    nack_version: str | None = None
    nack_reason: str | None = None
    last_response_at: float | None = None
    compile_error: str | None = None  # the last compile of its snapshot failed: it keeps the old one
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> str:
        latest = self.latest_version
        if latest is not None and self.acked_version == latest:
            return SYNCED
        if latest is not None and self.nack_version == latest:
            return NACKED
        return STALE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "connected": self.connected,
            "workload": self.node.workload, "service": self.node.service,
            "acked": self.acked_version, "sent": self.sent_version, "latest": self.latest_version,
            "revision": self.latest_revision,
            "status": self.status,
            "reason": self.nack_reason if self.status == NACKED else None,
            "connected_at": self.connected_at, "disconnected_at": self.disconnected_at,
            "last_response_at": self.last_response_at, "compile_error": self.compile_error,
        }


def _shape(node: Node) -> tuple[Any, ...]:
    """Everything of a node but its instance name: nodes of equal shape compile to the same snapshot."""
    return (node.namespace, node.workload, node.service, tuple(sorted(node.labels.items())),
            node.service_account, node.kind, node.app_port)


PING = b": ping\n\n"


@dataclass
class PushStats:
    """Counters for tests and benchmarks."""

    recomputes: int = 0
    compiles: int = 0
    pushes: int = 0
    abandoned: int = 0  # passes cut short by a newer change
    precompiled: int = 0  # shapes whose snapshots were compiled ahead (no compile in the pass)
    acks: int = 0
    nacks: int = 0


class PushServer:
    """Per-proxy snapshots, their streams, ACK/NACK bookkeeping. Runs on the control plane's loop."""

    def __init__(self, store: ConfigStore, registry: ServiceRegistry, *, debounce: float = 0.005,
                 ping_interval: float = 15.0, retention: float = 300.0,
                 trace_sampling: float = DEFAULT_TRACE_SAMPLING,
                 release: Release = release_at_once) -> None:
        """``release`` takes the snapshots a new one replaces (see `ConfigStore`'s)."""
        self.store = store
        self._release = release
        self.trace_sampling = trace_sampling  # meshConfig.defaultConfig.tracing.sampling (percent)
        self.registry = registry
        self.debounce = debounce
        self.ping_interval = ping_interval
        self.retention = retention
        self.stats = PushStats()
        self.timeline = RolloutTimeline()  # per revision: compiled, pushed, ACKed, first request
        self._proxies: dict[str, ProxyState] = {}
        self._pending: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._dirty = False
        self._closing = False
        self._unsubscribe: list[Callable[[], None]] = []
        self.jwks: Any = None  # control/jwks.JwksResolver: fetched jwksUri key sets for the compiler
        self.listeners: list[Callable[[], None]] = []  # told when a proxy connects, leaves, ACKs or NACKs
        self.precompiled_wait = PRECOMPILED_WAIT_S
        # (what is compiled ahead, its result, the store revision its apply started from)
        self._precompiled: tuple[SnapshotJob, asyncio.Future[Precompiled | None], int] | None = None

    def _proxies_changed(self) -> None:
        for listener in self.listeners:
            listener()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = [self.store.subscribe(self.schedule), self.registry.subscribe(self.schedule)]

    def close(self) -> None:
        """Stop reacting to changes and end every stream (they return at their next wake-up)."""
        self._closing = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._running is not None:
            self._running.cancel()
        for proxy in self._proxies.values():
            proxy.wake.set()

    # -- recompiling ----------------------------------------------------------------------------

    def schedule(self) -> None:
        """Recompile after ``debounce`` seconds; further changes until then ride along."""
        if self._closing or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self.debounce, self._recompute_scheduled)

    @property
    def busy(self) -> bool:
        """A recompilation is scheduled or running."""
        return self._pending is not None or (self._running is not None and not self._running.done())

    def _recompute_scheduled(self) -> None:
        self._pending = None
        if self._running is not None and not self._running.done():
            self._dirty = True  # the running pass starts over when it ends
            return
        self._running = asyncio.create_task(self._recompute_all())

    async def _recompute_all(self) -> None:
        """Recompile every tracked proxy, one node shape at a time, yielding to the streams in between.

        The streams of the first shapes start sending while later shapes compile. A change that
        lands meanwhile abandons the pass (so no proxy is sent an older snapshot after a newer one)
        and a new pass runs over the new inputs. Shapes compiled ahead for this revision with these
        same inputs (`expect`) are taken from there instead of compiled again.
        """
        while not self._closing:
            self._dirty = False
            self.stats.recomputes += 1
            self._forget_expired()
            inputs = (self.store.resources(), self.registry.view(), self.store.revision)
            for group in self._by_shape(list(self._proxies.values())):
                if self._dirty or not self._inputs_current(inputs):
                    self._dirty = True
                    self.stats.abandoned += 1
                    break
                compiled: Compiled | Exception | None = await self._precompiled_for(group, inputs)
                if compiled is None:
                    # compiling is CPU work: a worker thread does it, the loop keeps serving streams and CSRs
                    compiled = await asyncio.to_thread(self._compile, group, inputs)
                if self._dirty or not self._inputs_current(inputs):
                    self._dirty = True
                    self.stats.abandoned += 1
                    break
                self._publish(group, compiled, inputs[2])
            if not self._dirty:
                self.timeline.pass_done(inputs[2], time.time())
                ahead = self._precompiled
                if ahead is not None and ahead[1].done() and inputs[2] > ahead[2]:
                    self._precompiled = None  # used, or of a config that was not committed
                    if not ahead[1].cancelled() and (unused := ahead[1].result()) is not None:
                        self._release(unused.retired)
                return

    async def _recompute_one(self, proxy: ProxyState) -> None:
        """A new stream's snapshot, compiled in a worker thread (a change meanwhile: the scheduled
        pass compiles it again over the new inputs)."""
        self.stats.recomputes += 1
        self._forget_expired()
        inputs = (self.store.resources(), self.registry.view(), self.store.revision)
        for group in self._by_shape([proxy]):
            compiled = await asyncio.to_thread(self._compile, group, inputs)
            if self._inputs_current(inputs):
                self._publish(group, compiled, inputs[2])
            else:
                self.schedule()

    def recompute(self, only: list[ProxyState] | None = None) -> None:
        """Compile the snapshot of every tracked proxy (or ``only`` these) now and wake those that changed."""
        self.stats.recomputes += 1
        self._forget_expired()
        inputs = (self.store.resources(), self.registry.view(), self.store.revision)
        for group in self._by_shape(list(self._proxies.values()) if only is None else only):
            self._update(group, inputs)
        if only is None:
            self.timeline.pass_done(inputs[2], time.time())

    def _inputs_current(self, inputs: tuple[Any, Any, int]) -> bool:
        return self.registry.view() is inputs[1] and self.store.revision == inputs[2]

    def _by_shape(self, proxies: list[ProxyState]) -> list[list[ProxyState]]:
        groups: dict[tuple[Any, ...], list[ProxyState]] = {}
        for proxy in proxies:
            proxy.node = self.registry.node_for(proxy.id, proxy.kind)
            groups.setdefault(_shape(proxy.node), []).append(proxy)
        return list(groups.values())

    def _update(self, group: list[ProxyState], inputs: tuple[Any, Any, int]) -> None:
        """Compile once for ``group`` (proxies of one shape), render each, wake those that changed."""
        self._publish(group, self._compile(group, inputs), inputs[2])

    def _compile_inputs(self, view: RegistryView) -> CompileInputs:
        jwks = self.jwks
        return CompileInputs(view, self.trace_sampling, jwks.keys if jwks is not None else None,
                             jwks.errors if jwks is not None else None)

    def _compile(self, group: list[ProxyState], inputs: tuple[Any, Any, int]) -> Compiled | Exception:
        """The version and SSE event of each proxy of ``group`` (one shape), compiled once and
        rendered per proxy, or the compiler's exception (pure: any thread; the serializing, a few
        megabytes for a large config, stays off the loop too)."""
        resources, view, revision = inputs
        self.stats.compiles += 1
        try:
            with GC_PAUSED:  # see preparation.py: its passes cost more than compiling
                rendered = compile_rendered(resources, revision, self._compile_inputs(view),
                                            [proxy.node for proxy in group])
                return [(snapshot["version"], frame, snapshot) for snapshot, frame in rendered]
        except Exception as error:  # a compiler bug must not stop the pushes to everyone else
            log.exception("compiling the snapshot of %s failed at revision %s", group[0].id, revision)
            return error

    # -- snapshots compiled ahead, while a large apply is prepared ------------------------------

    def snapshot_job(self) -> SnapshotJob | None:
        """The inputs the next pass would compile with, as they are now, for a large apply's snapshots
        to be compiled while it is prepared (None: no proxy to compile for)."""
        self._forget_expired()
        groups = self._by_shape(list(self._proxies.values()))
        if not groups:
            return None
        return SnapshotJob(self._compile_inputs(self.registry.view()),
                           tuple(tuple(proxy.node for proxy in group) for group in groups))

    def expect(self, job: SnapshotJob, result: asyncio.Future[Precompiled | None]) -> None:
        """``job`` is being compiled for the config a large apply makes (`Preparation.apply`)."""
        self._precompiled = (job, result, self.store.revision)

    async def _precompiled_for(self, group: list[ProxyState],
                               inputs: tuple[Any, Any, int]) -> Compiled | None:
        """``group``'s snapshots as they were compiled ahead, if they were compiled from exactly
        these inputs: the store's current config (its token) and revision, the same registry view,
        mesh settings and key sets, the same node for every proxy. Else None: compile here."""
        if self._precompiled is None:
            return None
        job, future, base = self._precompiled
        if inputs[2] <= base:  # nothing committed since the apply came in: not its revision
            return None
        if not job.inputs.same_as(self._compile_inputs(inputs[1])):
            return None
        wanted = {node.id: node for nodes in job.groups for node in nodes}
        if any(wanted.get(proxy.id) != proxy.node for proxy in group):
            return None
        try:  # still compiling while the apply commits and answers
            precompiled = await asyncio.wait_for(asyncio.shield(future), self.precompiled_wait)
        except TimeoutError:  # stuck or starved: compile here
            log.warning("the snapshots of revision %s compiled ahead were not ready after %.1f s; "
                        "compiling them again", inputs[2], self.precompiled_wait)
            if self._precompiled is not None and self._precompiled[1] is future:
                self._precompiled = None  # no later pass waits for it again
            return None
        if precompiled is None:
            return None
        self._release(precompiled.retired)  # compiled on a thread here: its objects, freed gradually
        revision, token, _ = self.store.state
        if precompiled.token != token or not precompiled.revision == inputs[2] == revision:
            return None
        found = [precompiled.rendered.get(proxy.id) for proxy in group]
        compiled: Compiled = []
        for proxy, entry in zip(group, found, strict=True):
            if entry is None or entry[0] != proxy.node:
                return None
            compiled.append((entry[1], entry[2], None))
        self.stats.precompiled += 1
        return compiled

    def _publish(self, group: list[ProxyState], compiled: Compiled | Exception, revision: int) -> None:
        if isinstance(compiled, Exception):
            for proxy in group:
                proxy.compile_error = f"revision {revision}: {type(compiled).__name__}: {compiled}"
            return
        now = time.time()
        retired = [snapshot for _, _, snapshot in compiled if snapshot is not None]
        size = sum(len(frame) for _, frame, snapshot in compiled if snapshot is not None)
        for proxy, (version, frame, _) in zip(group, compiled, strict=True):
            proxy.compile_error = None
            changed = version != proxy.latest_version
            self.timeline.compiled(revision, proxy.id, version, changed=changed, now=now)
            if changed:
                proxy.latest_version, proxy.latest_revision, proxy.latest_frame = version, revision, frame
                proxy.wake.set()
        compiled.clear()  # the snapshots' objects are the release's to free (a slice at a time if large)
        self._release(retired, size)

    def _forget_expired(self) -> None:
        now = time.time()
        for proxy_id, proxy in list(self._proxies.items()):
            if not proxy.connected and proxy.disconnected_at is not None and \
                    now - proxy.disconnected_at > self.retention:
                del self._proxies[proxy_id]

    # -- streams --------------------------------------------------------------------------------

    def validate_subscription(self, proxy_id: str | None, kind: str | None) -> tuple[str, str]:
        messages = []
        if not proxy_id or "." not in proxy_id.strip(".") or proxy_id != proxy_id.strip():
            messages.append(Message(codes.MK0920, Severity.ERROR, "xds/stream", "id",
                                    f"id: expected '<instance>.<namespace>', got {proxy_id!r}"))
        kind = kind or "sidecar"
        if kind not in PROXY_KINDS:
            messages.append(Message(codes.MK0920, Severity.ERROR, "xds/stream", "kind",
                                    f"kind: expected one of {', '.join(PROXY_KINDS)}, got {kind!r}"))
        if messages:
            raise ConfigError(messages)
        return str(proxy_id), kind

    async def events(self, proxy_id: str, kind: str = "sidecar") -> AsyncGenerator[bytes, None]:
        """The SSE byte chunks for one connected proxy: its snapshot now, then each change, pings between.

        Ends when the control plane closes or a newer stream for the same id replaces this one.
        """
        proxy = self._proxies.get(proxy_id)
        if proxy is not None and proxy.kind != kind:
            proxy.generation += 1  # the old stream (another kind under the same id) ends
            proxy.wake.set()
            proxy = None
        if proxy is None:
            proxy = ProxyState(id=proxy_id, kind=kind, node=self.registry.node_for(proxy_id, kind))
            self._proxies[proxy_id] = proxy
        proxy.generation += 1
        generation = proxy.generation
        proxy.connected, proxy.connected_at, proxy.disconnected_at = True, time.time(), None
        proxy.sent_version = None  # a new stream always starts with the full snapshot
        proxy.wake.set()  # a replaced older stream wakes up and ends
        self._proxies_changed()
        await self._recompute_one(proxy)
        try:
            while not self._closing and proxy.generation == generation:
                if proxy.latest_version is not None and proxy.sent_version != proxy.latest_version:
                    version = proxy.sent_version = proxy.latest_version
                    self.stats.pushes += 1
                    if version is not None:
                        self.timeline.pushed(proxy.id, version, time.time())
                    yield proxy.latest_frame or sse("snapshot", "{}")
                    continue
                proxy.wake.clear()
                try:
                    await asyncio.wait_for(proxy.wake.wait(), self.ping_interval)
                except TimeoutError:
                    yield PING
        finally:
            if proxy.generation == generation:
                proxy.connected, proxy.disconnected_at = False, time.time()
                self._proxies_changed()

    # -- ACK / NACK -----------------------------------------------------------------------------

    async def respond(self, body: object) -> ProxyState:
        """Record ``{"id", "version", "status": "ACK"|"NACK", "reason"?}``; ConfigError/NotFound if bad."""
        proxy_id, version, status, reason = self._parse_response(body)
        proxy = self._proxies.get(proxy_id)
        if proxy is None:
            raise NotFoundError([Message(codes.MK0921, Severity.ERROR, f"proxy {proxy_id}", "id",
                                         f"proxy {proxy_id} has never connected to this control plane")])
        proxy.last_response_at = time.time()
        self.timeline.responded(proxy_id, version, ack=status == "ACK", reason=reason,
                                now=proxy.last_response_at)
        if status == "ACK":
            self.stats.acks += 1
            proxy.acked_version = version
            if proxy.nack_version == version:
                proxy.nack_version = proxy.nack_reason = None
        else:
            self.stats.nacks += 1
            proxy.nack_version, proxy.nack_reason = version, reason
        self._proxies_changed()
        return proxy

    @staticmethod
    def _parse_response(body: object) -> tuple[str, str, str, str | None]:
        where = "xds/ack"
        if not isinstance(body, dict):
            raise ConfigError([Message(codes.MK0920, Severity.ERROR, where, "",
                                       f"expected a JSON object, got {type(body).__name__}")])
        messages = []
        for name in ("id", "version", "status"):
            if not isinstance(body.get(name), str) or not body.get(name):
                messages.append(Message(codes.MK0920, Severity.ERROR, where, name,
                                        f"{name}: required non-empty string, got {body.get(name)!r}"))
        status = body.get("status")
        if isinstance(status, str) and status and status not in ("ACK", "NACK"):
            messages.append(Message(codes.MK0920, Severity.ERROR, where, "status",
                                    f"status: expected ACK or NACK, got {status!r}"))
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            messages.append(Message(codes.MK0920, Severity.ERROR, where, "reason",
                                    f"reason: expected a string, got {reason!r}"))
        if messages:
            raise ConfigError(messages)
        if status == "NACK" and not reason:
            reason = "(no reason given)"
        return body["id"], body["version"], str(status), reason

    # -- status ---------------------------------------------------------------------------------

    def proxy(self, proxy_id: str) -> ProxyState | None:
        return self._proxies.get(proxy_id)

    def proxy_status(self) -> list[dict[str, Any]]:
        """Every connected or recently disconnected proxy, sorted by id."""
        self._forget_expired()
        return [self._proxies[k].to_dict() for k in sorted(self._proxies)]

    async def wait_synced(self, proxy_ids: list[str] | None = None, within: float = 10.0) -> bool:
        """Wait until the given (default: every connected) proxies are SYNCED; False on timeout."""
        deadline = time.monotonic() + within
        while True:
            connected = [p.id for p in self._proxies.values() if p.connected]
            ids = proxy_ids if proxy_ids is not None else connected
            if not self.busy and all(
                (p := self._proxies.get(i)) is not None and p.status == SYNCED for i in ids
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
