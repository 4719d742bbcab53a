"""Where a config change's CPU-heavy preparation runs: parsing the body, the analyzer, the diff.

An apply body under `Preparation.threshold` bytes is prepared on a worker thread (a process hop
costs milliseconds). A larger one goes to one worker *process* (spawn context; at most
`MAX_QUEUED` preparations waiting for it): a thread shares the GIL with the event loop that serves
pushes and signs certificates, and a 1 MB apply held it for hundreds of milliseconds at a time.
The first large body is prepared on a thread; then the worker is started (starting a Python
process with the config models takes a second or more of CPU, which would compete with that
preparation) and decodes the config that body made; once it answers, large bodies go to it. A
worker that died is started again; one unused for `Preparation.idle` seconds is stopped (its
memory, about 50 MiB plus 50-100 MiB per MB of config it holds, is only spent while large
documents are being applied).

Only pure functions cross the boundary, with picklable inputs and outputs: the body, the store's
current config as its stored JSON plus a token naming it (the worker keeps the config it last
decoded or prepared by token, so a run of large applies decodes the config once), the registry
view; back come the loader's warnings and a `PreparedChange` whose unchanged entries are left out
(``kept``: the store has them). The SQLite write, `ConfigStore.commit`, stays in the control
plane's process, under the API's write lock.

The worker is kept warm: once started, it follows the store, and each committed config it does not
hold (one a thread prepared: a small change, a delete, a rollback, the body that started it) is
sent to it while it is idle (`learn`): it decodes it and computes each resource's dict and JSON
then, not while the next large body waits (a 1 MB VirtualService's: 70-130 ms and 50 ms of CPU). A
job names its base by token, so a job queued while the worker learns an older config decodes its
own base: the worker never prepares against a config it merely happens to hold. One `learn` is in
flight at a time (the latest commit is sent when it ends). A worker found dead when a commit is
sent is started again with the store's config.

The worker sends back no models of the body's resources (``fresh``: their keys and creation
times): pickling a 1 MB VirtualService's models there and unpickling them here cost 120-210 and
80-160 ms of CPU while the change waited. The control plane parses the same body itself, on a
thread, while the worker prepares it (`with_parsed` puts those resources into the change). With
them, and given a `SnapshotJob` (the push server's inputs and the nodes of the proxies it tracked
when the apply came in), it then compiles those proxies' snapshots for the config the body makes
over the store's (`compile_ahead`, with `rendering.compile_rendered` as the push server uses it),
still while the worker prepares; the worker's change names that config (`named_ahead`: same base,
nothing but the base's entries and the body's resources), and the push server takes them only if
its own inputs are those (`PushServer.expect`). The compile (~90 ms of CPU for a 1 MB
VirtualService) runs beside the worker's preparation (~340 ms) instead of after it, so the push
follows the commit at once. A large body prepared on a thread (the worker is not up yet) has its
snapshots compiled on that thread before the answer (`prepare_and_compile_here`), for the same
reason, if the proxies have at most `PRECOMPILE_ON_THREAD_SHAPES` node shapes (each delays the answer).

Python's cyclic garbage collector, triggered by the hundreds of thousands of objects a 1 MB
document makes, cost more than half of a large preparation (each pass walks the whole heap); it is
paused while one runs (`GC_PAUSED`), in the worker process and on the thread alike. Reference
counting still frees everything; the collector runs again afterwards. When a paused section leaves
many new objects alive (over `FREEZE_ABOVE`: a new large config, a compiled large snapshot), they
are moved out of the collector's sight (`gc.freeze`, which costs nothing) before it runs again:
otherwise its next young, middle and full passes each walk them all in one call that holds the
GIL, and a 1 MB config's objects stalled the event loop for 100-360 ms per pass. Frozen objects are
still freed by reference counting; only cycles among them would never be collected, and a config,
its documents and its compiled snapshots hold none (tests/control/test_loop_stalls.py checks).

Must not: touch the store's database or the event loop from the worker; import aiohttp (the
worker imports this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from meshkit.config import codes
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import Node, RegistryView
from meshkit.config.resources import Resource
from meshkit.control.rendering import CompileInputs, compile_rendered
from meshkit.control.store import (
    ChangeResult,
    ConfigStore,
    Documents,
    Key,
    PreparedChange,
    StoredResource,
    encode_messages,
    prepare_apply_to,
)

log = logging.getLogger("meshkit.control.preparation")

PREPARE_IN_PROCESS_ABOVE = 128 * 1024  # bytes of body; smaller bodies stay on a worker thread
IDLE_SECONDS = 120.0  # an unused worker process is stopped after this long (memory)
MAX_QUEUED = 4  # preparations waiting for the worker process; more wait on the loop, not in a queue
# node shapes whose snapshots a large body prepared on a thread has compiled before the answer
# (each costs the answer a compile, ~200 ms for a 1 MB VirtualService); more: compiled after it
PRECOMPILE_ON_THREAD_SHAPES = 2


FREEZE_ABOVE = 20_000  # objects left alive by a paused section above which they are frozen (gc.freeze)


class _GcPause:
    """Pauses the cyclic garbage collector while at least one holder is inside (thread-safe); when
    the last one leaves, freezes what the section left alive if that is over ``freeze_above``
    objects (see the module docstring)."""

    def __init__(self, freeze_above: int = FREEZE_ABOVE) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False
        self.freeze_above = freeze_above
        self.frozen = 0  # times a section's survivors were frozen (for tests and benchmarks)

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                if gc.get_count()[0] > self.freeze_above:  # tracked objects made, net, since the last pass
                    gc.freeze()
                    self.frozen += 1
                gc.enable()


GC_PAUSED = _GcPause()  # the collector is one per process, and so is its pause


def _bad_request(text: str) -> ConfigError:
    return ConfigError([Message(codes.MK0940, Severity.ERROR, "request body", "", text)])


def parse_resources(raw: bytes, as_json: bool, warnings: list[Message], *,
                    required: bool = True) -> list[Resource]:
    """A JSON body through the (much faster) JSON parser, YAML through the bounded YAML loader;
    kinds the mesh does not model are left out with a warning appended to ``warnings``."""
    if not raw.strip():
        if required:
            raise _bad_request("request body is empty: send YAML or JSON resources")
        return []
    with GC_PAUSED:
        if as_json:
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError) as error:
                raise _bad_request(f"body is not valid JSON: {error}") from None
            if not isinstance(doc, dict | list):
                raise _bad_request("body: expected a JSON object or a list of objects")
            resources = load_resources(doc, origin="request body", warnings=warnings)
        else:
            resources = load_resources(raw, origin="request body", warnings=warnings)
    if required and not resources and not warnings:
        raise _bad_request("request body holds no resources (only empty documents)")
    return resources


Outcome = tuple[list[Message], PreparedChange | ChangeResult]  # (the loader's warnings, the change)


def prepare_apply_here(store: ConfigStore, raw: bytes, as_json: bool,
                       registry: RegistryView | None, expected_revision: int | None) -> Outcome:
    """Parse and prepare an apply in this process (a worker thread; the store is only read)."""
    warnings: list[Message] = []
    resources = parse_resources(raw, as_json, warnings)
    with GC_PAUSED:
        return warnings, store.prepare_apply(resources, registry, expected_revision=expected_revision)


# -- the worker process -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplyJob:
    """What the worker process needs to prepare an apply (picklable)."""

    raw: bytes
    as_json: bool
    base: int  # the store's revision
    token: str  # names the store's config
    document: str  # the store's config as stored (decoded only when the worker does not know `token`)
    registry: RegistryView | None


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    """The push server's inputs when an apply was submitted (`PushServer.snapshot_job`): the
    snapshots of these nodes are compiled for the config that apply makes while it is prepared."""

    inputs: CompileInputs
    groups: tuple[tuple[Node, ...], ...]  # the tracked proxies' nodes, by shape


@dataclass(frozen=True, slots=True)
class Precompiled:
    """What `compile_ahead` or `prepare_and_compile_here` made: per proxy id, (the node it was compiled
    for, version, SSE event) of revision ``revision``, whose config the store's token ``token`` names
    (empty: none yet, or not the config committed). A shape whose compile failed is left out (the
    push server compiles it and reports the error)."""

    token: str
    revision: int
    rendered: dict[str, tuple[Node, str, bytes]]
    # the snapshots' objects, for the push server to free a slice at a time (dropping them at once
    # holds the GIL for tens of milliseconds)
    retired: list[Any] = dataclasses.field(default_factory=list, compare=False)


# In the worker process only: the config it last decoded or prepared, by token, and those it no
# longer needs, freed at the start of the next job (not while the caller waits); the last change
# prepared (its token and revision), for the `SnapshotJob` queued right behind its job.
_KNOWN: dict[str, tuple[dict[Key, StoredResource], Documents]] = {}
_DROPPED: list[Any] = []
_DECODED: list[int] = []  # the revisions this worker decoded, in order (for tests)


def _decode(base: int, document: str, *, eager: bool) -> tuple[dict[Key, StoredResource], Documents]:
    """The stored config ``document`` of revision ``base``, and its resources' documents: with
    ``eager``, each one's dict and JSON computed now (a change's document and diff need them; a
    1 MB VirtualService's cost 50 ms, better spent before the change than while it waits)."""
    with GC_PAUSED:
        current = {s.resource.key: s for s in ConfigStore.decode(document, base)}
        docs = Documents()
        if eager:
            for stored in current.values():
                docs.json(stored.resource)
    _DECODED.append(base)
    return current, docs


def learn(base: int, token: str, document: str) -> str:
    """Know the config named ``token`` (the store's committed revision ``base``, sent while the worker
    is idle): decoded here unless it is known, so the next large body does not wait for that; the
    config known before is freed. Returns ``token``."""
    _DROPPED.clear()  # what the last change replaced: freed now, not while the next one waits
    if token not in _KNOWN:
        known = _decode(base, document, eager=True)
        _KNOWN.clear()
        _KNOWN[token] = known
    return token


WorkerState = tuple[int | None, tuple[str, ...], tuple[int, ...]]  # (pid, tokens known, revisions decoded)


def known_tokens() -> WorkerState:
    """(this worker's pid, the tokens of the configs it knows, the revisions it decoded so far)."""
    return os.getpid(), tuple(_KNOWN), tuple(_DECODED)


def warm_up(base: int, token: str, document: str) -> int:
    """Import this module (the config models, the analyzer) and learn the config named ``token``
    (the store's when the worker was started), so the next job finds it known."""
    learn(base, token, document)
    return os.getpid()


def run_apply_job(job: ApplyJob) -> tuple[int, bytes]:
    """(this process's pid, the pickled `Outcome` or (error class, messages)): runs in the worker."""
    with GC_PAUSED:
        try:
            result: Any = _apply_job(job)
        except ConfigError as error:
            result = (type(error), error.messages)
        return os.getpid(), pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)


def _apply_job(job: ApplyJob) -> Outcome:
    _DROPPED.clear()
    warnings: list[Message] = []
    incoming = parse_resources(job.raw, job.as_json, warnings)
    known = _KNOWN.get(job.token)
    if known is None:  # not taught this base (`learn`): decoded now, while the caller waits
        known = _decode(job.base, job.document, eager=False)
        _DROPPED.extend(_KNOWN.values())
        _KNOWN.clear()
        _KNOWN[job.token] = known  # known even if this change is refused
    current, docs = known
    change = prepare_apply_to(job.base, current, incoming, job.registry, docs.copy())
    _DROPPED.extend(_KNOWN.values())
    _KNOWN.clear()  # one config known: the one this change makes (or the base, when nothing changed)
    # the loader's warnings and the analyzer's, as the answer lists them: encoding them here spares
    # the control plane unpickling and encoding them (8,000 for a 1 MB VirtualService: 100 ms of its CPU)
    if isinstance(change, PreparedChange):
        _KNOWN[change.token] = (change.entries, change.docs or Documents())
        # neither the base's entries (the store has them) nor the body's resources (the control
        # plane parses the body itself meanwhile: pickling a 1 MB VirtualService's models here and
        # unpickling them there took 120-210 and 80-160 ms of CPU while the change waited)
        body = {id(resource) for resource in incoming}
        kept: list[Key] = []
        fresh: list[tuple[Key, float]] = []
        changed: dict[Key, StoredResource] = {}
        for key, stored in change.entries.items():
            if current.get(key) is stored:
                kept.append(key)
            elif id(stored.resource) in body and stored.revision == change.base + 1:
                fresh.append((key, stored.created))
            else:
                changed[key] = stored
        change = dataclasses.replace(change, entries=changed, kept=tuple(kept), fresh=tuple(fresh),
                                     docs=None, messages=[],
                                     encoded_messages=encode_messages([*warnings, *change.messages]))
    else:
        _KNOWN[job.token] = known
        change = dataclasses.replace(change, warnings=[],
                                     encoded_warnings=encode_messages([*warnings, *change.warnings]))
    return [], change


def _precompile(token: str, revision: int, resources: Sequence[Resource], job: SnapshotJob) -> Precompiled:
    rendered: dict[str, tuple[Node, str, bytes]] = {}
    retired: list[Any] = []
    with GC_PAUSED:
        for nodes in job.groups:
            try:
                compiled = compile_rendered(resources, revision, job.inputs, nodes)
            except Exception:  # the push server compiles this shape itself and reports the error
                continue
            for node, (snapshot, frame) in zip(nodes, compiled, strict=True):
                rendered[node.id] = (node, snapshot["version"], frame)
                retired.append(snapshot)
            del compiled
    return Precompiled(token, revision, rendered, retired)


def prepare_and_compile_here(store: ConfigStore, raw: bytes, as_json: bool, registry: RegistryView | None,
                             expected_revision: int | None, *,
                             job: SnapshotJob) -> tuple[Outcome, Precompiled | None]:
    """`prepare_apply_here`, then the snapshots of ``job``'s nodes for the config it prepared (a
    large body prepared on a thread: the worker process is not up; compiling them before the
    answer lets the push follow the commit at once)."""
    warnings, change = prepare_apply_here(store, raw, as_json, registry, expected_revision)
    if not isinstance(change, PreparedChange):
        return (warnings, change), None
    entries = change.entries
    return (warnings, change), _precompile(change.token, change.base + 1,
                                           [entries[key].resource for key in sorted(entries)], job)


def compile_ahead(base: Sequence[Resource], incoming: Sequence[Resource], revision: int,
                  job: SnapshotJob) -> Precompiled:
    """The snapshots of ``job``'s nodes for the config ``incoming`` applied over ``base`` makes, as
    revision ``revision``; its token is left empty until the worker's change names that config
    (`named_ahead`). Runs on a thread of the control plane while the worker prepares the change."""
    config = {resource.key: resource for resource in base}
    config.update((resource.key, resource) for resource in incoming)
    return _precompile("", revision, [config[key] for key in sorted(config)], job)


def named_ahead(precompiled: Precompiled | None, change: PreparedChange | ChangeResult | None
                ) -> Precompiled | None:
    """``precompiled`` (`compile_ahead`) named by the token of the config the worker's ``change``
    makes, when that config is the one compiled: prepared against the same base, and made only of
    the base's entries (``kept``) and the body's resources (``fresh``), none sent as models. Else
    it keeps its empty token, which no store has, so the push server only releases it."""
    if precompiled is None or not isinstance(change, PreparedChange) or change.entries \
            or change.base + 1 != precompiled.revision:
        return precompiled
    return dataclasses.replace(precompiled, token=change.token)


async def _compile_ahead(parsing: asyncio.Future[list[Resource]], base: list[Resource], revision: int,
                         job: SnapshotJob) -> Precompiled | None:
    try:
        incoming = await asyncio.shield(parsing)
    except Exception:  # an invalid body: the worker's error answers it
        return None
    return await asyncio.to_thread(compile_ahead, base, incoming, revision, job)


def with_parsed(change: PreparedChange, resources: Sequence[Resource]) -> PreparedChange:
    """``change``, prepared by the worker process, with its ``fresh`` entries made of ``resources``:
    the same body, parsed by the control plane (the same bytes through the same loader: equal
    resources) while the worker prepared it."""
    if not change.fresh:
        return change
    parsed = {resource.key: resource for resource in resources}
    entries = dict(change.entries)
    for key, created in change.fresh:
        entries[key] = StoredResource(parsed[key], created, change.base + 1)
    return dataclasses.replace(change, entries=entries, fresh=())


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an invalid body: the worker's error answers it


def _name_when_compiled(ahead: asyncio.Future[Precompiled | None],
                        compiling: asyncio.Future[Precompiled | None],
                        change: PreparedChange | ChangeResult | None) -> None:
    """Resolve ``ahead`` (what the push server waits for) with ``compiling``'s snapshots named for
    ``change`` (`named_ahead`), once they are compiled."""
    def done(compiled: asyncio.Future[Precompiled | None]) -> None:
        if not ahead.done():
            failed = compiled.cancelled() or compiled.exception() is not None
            ahead.set_result(None if failed else named_ahead(compiled.result(), change))

    compiling.add_done_callback(done)


def _loads(data: bytes) -> Any:
    with GC_PAUSED:
        return pickle.loads(data)


def _report_failed_start(warm: Future[int]) -> None:
    error = None if warm.cancelled() else warm.exception()
    if error is not None:  # large bodies keep being prepared on a thread
        log.warning("the worker process for large config changes did not start: %s: %s",
                    type(error).__name__, error)


class Preparation:
    """Runs apply preparations on a thread or, for large bodies, in the worker process."""

    def __init__(self, threshold: int = PREPARE_IN_PROCESS_ABOVE, idle: float = IDLE_SECONDS) -> None:
        self.threshold = threshold
        self.idle = idle
        self.worker_pid: int | None = None  # the worker process that prepared the last large body
        self.in_worker = 0  # preparations the worker process ran
        self._executor: ProcessPoolExecutor | None = None
        self._warm: Future[int] | None = None
        self._retire: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(MAX_QUEUED)
        self._store: ConfigStore | None = None  # followed once the worker started: its commits are taught
        self._taught: str | None = None  # the token of the config the worker holds (or will, once queued)
        self._teaching: asyncio.Future[str] | None = None  # a `learn` in flight
        self.taught = 0  # `learn` jobs sent (for tests and benchmarks)

    async def apply(self, store: ConfigStore, raw: bytes, as_json: bool, registry: RegistryView | None,
                    expected_revision: int | None, *, snapshots: SnapshotJob | None = None,
                    precompiling: Callable[[SnapshotJob, asyncio.Future[Precompiled | None]], None]
                    | None = None) -> Outcome:
        """The loader's warnings and the prepared change (nothing committed). When the worker
        process prepares it and ``snapshots`` is given, the worker then compiles those snapshots
        for the new config; ``precompiling(snapshots, future)`` is told of the future (its result:
        `Precompiled`, or None when there is none to use)."""
        if len(raw) < self.threshold or not self.ready:
            if snapshots is not None and precompiling is not None \
                    and len(snapshots.groups) <= PRECOMPILE_ON_THREAD_SHAPES:
                outcome, precompiled = await asyncio.to_thread(
                    prepare_and_compile_here, store, raw, as_json, registry, expected_revision, job=snapshots)
                ready: asyncio.Future[Precompiled | None] = asyncio.get_running_loop().create_future()
                ready.set_result(precompiled)
                precompiling(snapshots, ready)
            else:
                outcome = await asyncio.to_thread(prepare_apply_here, store, raw, as_json, registry,
                                                  expected_revision)
            change = outcome[1]
            if len(raw) >= self.threshold and self._executor is None and isinstance(change, PreparedChange):
                # start the worker now, not while this body was prepared (both would compete for the CPU)
                self._follow(store)
                self._start((change.base + 1, change.token, change.document))
                self._schedule_retire()
            return outcome
        store.check_writable(expected_revision)
        self._follow(store)
        revision, token, document = store.state
        job = ApplyJob(raw, as_json, revision, token, document, registry)
        # the body's resources are parsed here too, on a thread, while the worker prepares the change,
        # and then the snapshots of the config it makes are compiled (`compile_ahead`)
        parsing = asyncio.ensure_future(asyncio.to_thread(parse_resources, raw, as_json, []))
        parsing.add_done_callback(_retrieved)
        ahead: asyncio.Future[Precompiled | None] | None = None
        compiling: asyncio.Future[Precompiled | None] | None = None
        if snapshots is not None and precompiling is not None:
            ahead = asyncio.get_running_loop().create_future()
            precompiling(snapshots, ahead)
            compiling = asyncio.ensure_future(
                _compile_ahead(parsing, store.resources(), revision + 1, snapshots))
        made: PreparedChange | ChangeResult | None = None
        try:
            pid, data = await self._in_worker(job)
            self.worker_pid, self.in_worker = pid, self.in_worker + 1
            result = await asyncio.to_thread(_loads, data)
            if isinstance(result[0], type):
                error_class, messages = result
                raise error_class(messages)
            warnings, made = result
        finally:
            if ahead is not None and compiling is not None:
                _name_when_compiled(ahead, compiling, made)
        assert made is not None
        # the worker now holds the config it made, or its base (a `learn` that ends meanwhile sends
        # nothing more: the store's token, the job's base, was taught; and were the worker to hold
        # another config, the next job, naming its base, would decode that)
        self._taught = made.token if isinstance(made, PreparedChange) else token
        if isinstance(made, PreparedChange) and made.fresh:
            made = with_parsed(made, await parsing)
        return warnings, made

    async def _in_worker(self, job: ApplyJob) -> tuple[int, bytes]:
        async with self._slots:
            if self._retire is not None:
                self._retire.cancel()
            for attempt in (1, 2):  # a worker that died (killed, out of memory) is replaced once
                executor = self._start((job.base, job.token, job.document))
                try:
                    return await asyncio.wrap_future(executor.submit(run_apply_job, job))
                except BrokenProcessPool:
                    self._stop(executor)
                    if attempt == 2:
                        raise ConfigError([Message(
                            codes.MK0940, Severity.ERROR, "request body", "",
                            "the worker process preparing this change died twice (out of memory?); "
                            "nothing was applied")]) from None
                finally:
                    self._schedule_retire()
        raise AssertionError("unreachable")

    @property
    def ready(self) -> bool:
        """The worker process is up and has answered (large bodies go to it)."""
        warm = self._warm
        return (self._executor is not None and warm is not None and warm.done() and not warm.cancelled()
                and warm.exception() is None)

    def _start(self, state: tuple[int, str, str]) -> ProcessPoolExecutor:
        """The worker process, started if needed; ``state``: (revision, token, document) it learns."""
        if self._executor is None:
            spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads and a loop
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
            self._warm = self._executor.submit(warm_up, *state)
            self._warm.add_done_callback(_report_failed_start)
            self._taught = state[1]  # one worker runs its jobs in order: any later job finds it known
        return self._executor

    # -- keeping the worker warm: it learns each committed config while idle ------------------------

    def _follow(self, store: ConfigStore) -> None:
        if self._store is None:
            self._store = store
            store.subscribe(self._committed)

    def _committed(self) -> None:
        """A store listener (called inside `ConfigStore.commit`): teach the worker, soon after."""
        if self._executor is not None:
            # (a commit made outside the loop: the next large body sends the config)
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._teach)

    def _teach(self) -> None:
        """Send the worker the store's committed config unless it holds it already (a change it
        prepared) or a `learn` is in flight (when that ends, this runs again). A worker found dead
        is started again with that config."""
        store, executor = self._store, self._executor
        if store is None or executor is None or self._teaching is not None:
            return
        revision, token, document = store.state
        if token == self._taught:
            return
        try:
            sent = executor.submit(learn, revision, token, document)
        except BrokenProcessPool:  # it died while idle (killed, out of memory)
            self._restart(executor)
            return
        self._taught, self.taught = token, self.taught + 1
        self._teaching = asyncio.wrap_future(sent)
        self._teaching.add_done_callback(lambda learnt: self._learnt(learnt, executor))

    def _learnt(self, learnt: asyncio.Future[str], executor: ProcessPoolExecutor) -> None:
        self._teaching = None
        if learnt.cancelled():  # stopped (idle, or the control plane closes)
            return
        error = learnt.exception()
        if isinstance(error, BrokenProcessPool):
            self._restart(executor)
        elif error is not None:
            self._taught = None
            log.warning("the worker process could not learn the committed config: %r", error)
        else:
            self._teach()  # the store may have moved on meanwhile

    def _restart(self, executor: ProcessPoolExecutor) -> None:
        """Replace a worker that died with one that learns the store's config as it starts."""
        if executor is not self._executor or self._store is None:
            return
        self._stop(executor)
        self._start(self._store.state)
        self._schedule_retire()

    async def worker_knows(self) -> WorkerState:
        """(the worker process's pid, the tokens of the configs it holds, the revisions it decoded so
        far), asked behind whatever it was sent before (for tests); (None, (), ()) without a live one."""
        if self._executor is None:
            return None, (), ()
        try:
            return await asyncio.wrap_future(self._executor.submit(known_tokens))
        except BrokenProcessPool:
            return None, (), ()

    def _schedule_retire(self) -> None:
        if self._retire is not None:
            self._retire.cancel()
        self._retire = asyncio.get_running_loop().call_later(self.idle, self.close)

    def _stop(self, executor: ProcessPoolExecutor) -> None:
        if executor is self._executor:
            self._executor, self._warm = None, None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker process (a later large body starts a new one)."""
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        if self._executor is not None:
            self._stop(self._executor)
