"""``--concurrency N``: the sidecar's N-1 extra worker processes, seen from the first process.

Envoy runs N worker threads on the listeners of one process; CPython runs one thread of Python at
a time, so the sidecar runs N processes instead. ``bind`` makes, before any event loop exists, N
listening sockets per traffic listener (outbound, inbound and a gateway's https/tcp) on the same
port with ``SO_REUSEPORT`` (the kernel spreads new connections over them by their addresses and
ports); ``fork_workers`` then forks N-1 children, each keeping its own sockets and one end of a
``socketpair``, the first process keeping the first socket of each listener and the other ends.
Each child runs ``worker.run``: its own uvloop loop and ``Proxy`` serving its sockets.

The first process alone keeps the xDS stream (one ACK per proxy), the certificate rotation (one CSR
per rotation) and the admin and health ports. ``Pool`` (in the first process's loop) hands every
snapshot applied and every certificate installed to the workers over their pipe (JSON lines), keeps
which of them each worker has applied (``/ready`` waits for all: ``lagging``), asks them for their
counters when ``/stats`` or ``/stats/prometheus`` is scraped (``reports``; summed by
``stats_merge``), forwards the spans they record to the control plane and reports memory per
process (``memory``, the admin ``/memory`` page).

A worker that dies ends the sidecar (as Envoy, whose process ends when a worker thread crashes):
the first process logs which worker, its pid and how it ended, stops the others and exits 1, so
whatever supervises the sidecar (the local mesh, the kubelet) restarts it whole. A worker whose
pipe reaches EOF (the first process ended, even by SIGKILL) stops: no worker outlives it.

It must not do: request handling (``listener``), certificate work (``tls``), or anything with
concurrency 1 (this module is imported only when N > 1, or by the admin ``/memory`` page for
``process_memory``: one process costs nothing more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from meshkit.proxy.main import Proxy
    from meshkit.proxy.snapshot import Snapshot
    from meshkit.proxy.tls.manager import CertificateBundle

log = logging.getLogger("meshkit.proxy.workers")

BACKLOG = 1024
PIPE_LIMIT = 1 << 26  # a message is one JSON line: a snapshot of a large mesh fits
REPORT_TIMEOUT = 2.0  # a worker that does not answer a stats query within this is left out (logged)
REAP_EXTRA = 2.0  # after the drain: how long a stopping worker may take before SIGKILL

Sockets = dict[str, socket.socket]


def served_listeners(args: argparse.Namespace) -> list[str]:
    """The listeners every worker serves (the admin and health ports stay in the first process)."""
    names = ["outbound", "inbound"]
    if getattr(args, "https_port", None) is not None:
        names.append("https")
    if getattr(args, "tcp_port", None) is not None:
        names.append("tcp")
    return names


def bind(args: argparse.Namespace, count: int) -> list[Sockets]:
    """``count`` sets of listening sockets, one per process, each listener's on one port
    (``SO_REUSEPORT``; a port 0 is chosen by the first bind and shared by the others)."""
    sets: list[Sockets] = [{} for _ in range(count)]
    host = args.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        for name in served_listeners(args):
            port = int(getattr(args, f"{name}_port"))
            for index in range(count):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sets[index][name] = sock
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
                port = int(sock.getsockname()[1])
                sock.listen(BACKLOG)
    except OSError as exc:
        for group in sets:
            for sock in group.values():
                sock.close()
        raise SystemExit(f"meshkit proxy: --concurrency {count}: cannot listen on {host}: {exc}") from None
    return sets


class WorkerHandle:
    """What the first process knows of one worker."""

    def __init__(self, index: int, pid: int, channel: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.channel = channel
        self.writer: asyncio.StreamWriter | None = None
        self.snapshot_seq = 0  # the last snapshot it applied (Pool.snapshot_seq when current)
        self.certificate_seq = 0
        self.last_error: str | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def fork_workers(args: argparse.Namespace, sets: list[Sockets]) -> list[WorkerHandle]:
    """Fork one worker per socket set after the first; in a child this never returns (``os._exit``)."""
    handles: list[WorkerHandle] = []
    for index in range(1, len(sets)):
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                ours.close()
                for handle in handles:  # the pipes of the workers forked before: not this one's
                    handle.channel.close()
                for other, group in enumerate(sets):
                    if other != index:
                        for sock in group.values():
                            sock.close()
                from meshkit.proxy import worker  # noqa: PLC0415

                code = worker.run(args, index, sets[index], theirs)
            except BaseException:  # a child must never return into the parent's code
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        for sock in sets[index].values():
            sock.close()
        handles.append(WorkerHandle(index, pid, ours))
    return handles


class Pool:
    """The first process's side of its workers (see the module docstring)."""

    def __init__(self, handles: list[WorkerHandle], on_death: Callable[[], None]) -> None:
        self.workers = handles
        self.on_death = on_death  # a worker died: stop the sidecar
        self.died: str | None = None  # how, for the exit message
        self.snapshot_seq = 0
        self.certificate_seq = 0
        self._last_snapshot: dict[str, Any] | None = None
        self._last_certificate: dict[str, Any] | None = None
        self._query_id = 0
        self._stopping = False
        self._posts: set[asyncio.Task[None]] = set()
        self.proxy: Proxy | None = None

    async def start(self, proxy: Proxy) -> None:
        """Open the pipes and follow ``proxy``'s snapshots and certificates (before it loads any)."""
        self.proxy = proxy
        for handle in self.workers:
            reader, handle.writer = await asyncio.open_unix_connection(sock=handle.channel, limit=PIPE_LIMIT)
            handle.task = asyncio.ensure_future(self._read(handle, reader))
        proxy.state.listeners.append(self._on_snapshot)
        if proxy.state.current is not None:
            self._on_snapshot(proxy.state.current)
        certificates = proxy.sidecar_certificates
        if certificates is not None:
            certificates.on_install.append(self._on_certificate)
            if certificates.manager is not None and certificates.manager.current is not None:
                self._on_certificate(certificates.manager.current)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot_seq += 1
        self._last_snapshot = {"op": "snapshot", "seq": self.snapshot_seq, "doc": snapshot.doc}
        for handle in self.workers:
            handle.send(self._last_snapshot)

    def _on_certificate(self, bundle: CertificateBundle) -> None:
        self.certificate_seq += 1
        self._last_certificate = {
            "op": "certificate", "seq": self.certificate_seq, "identity": bundle.identity,
            "chain": bundle.cert_chain_pem, "key": bundle.key_pem, "root": bundle.root_pem,
        }
        for handle in self.workers:
            handle.send(self._last_certificate)

    async def _read(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("worker %d: not a JSON line on its pipe: %.80r", handle.index, line)
                continue
            self._received(handle, message)
        for future in handle.pending.values():
            if not future.done():
                future.cancel()
        if not self._stopping:
            self._worker_died(handle)

    def _received(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "applied":
            handle.snapshot_seq = int(message.get("seq", 0))
            handle.last_error = message.get("error")
            if handle.last_error:
                log.warning("worker %d refused snapshot %s: %s", handle.index, message.get("seq"),
                            handle.last_error)
        elif op == "certificate":
            handle.certificate_seq = int(message.get("seq", 0))
            if message.get("error"):
                handle.last_error = message["error"]
                log.warning("worker %d refused certificate %s: %s", handle.index, message.get("seq"),
                            message["error"])
        elif op == "report":
            future = handle.pending.pop(int(message.get("id", -1)), None)
            if future is not None and not future.done():
                future.set_result(message)
        elif op == "post":  # spans a worker recorded: shipped by the first process's xDS client
            self._forward(str(message.get("path", "")), str(message.get("body", "")).encode())

    def _forward(self, path: str, body: bytes) -> None:
        xds = self.proxy.xds if self.proxy is not None else None
        if xds is None:
            return

        async def post() -> None:
            try:
                await xds.post(path, body)
            except (OSError, TimeoutError) as exc:
                log.info("could not ship a worker's spans: %s", exc)

        task = asyncio.ensure_future(post())
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    def _worker_died(self, handle: WorkerHandle) -> None:
        status = _reap(handle.pid, wait=1.0)
        how = _describe_status(status)
        self.died = (f"meshkit proxy: worker {handle.index} (pid {handle.pid}) {how}: the sidecar stops "
                     "(as Envoy when a worker dies), to be restarted whole")
        log.error("%s", self.died)
        self.on_death()

    def lagging(self) -> str | None:
        """Why not every worker serves the current snapshot and certificate yet (None: they do)."""
        for handle in self.workers:
            who = f"worker {handle.index} (pid {handle.pid})"
            if handle.snapshot_seq != self.snapshot_seq:
                return f"{who} has not applied the current snapshot yet"
            if handle.certificate_seq != self.certificate_seq:
                return f"{who} has not installed the current certificate yet"
        return None

    async def reports(self) -> list[dict[str, Any]]:
        """Each worker's ``{"pid", "prometheus", "stats"}``, asked now over its pipe (a worker that
        does not answer in time is left out, and logged)."""
        loop = asyncio.get_running_loop()
        futures = []
        for handle in self.workers:
            self._query_id += 1
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            handle.pending[self._query_id] = future
            handle.send({"op": "report", "id": self._query_id})
            futures.append(future)
        done, pending = await asyncio.wait(futures, timeout=REPORT_TIMEOUT) if futures else (set(), set())
        for future in pending:
            future.cancel()
        if pending:
            log.warning("%d worker(s) did not report their counters within %.0f s", len(pending),
                        REPORT_TIMEOUT)
        return [future.result() for future in futures if future in done and not future.cancelled()]

    def describe(self) -> list[dict[str, Any]]:
        first = {"index": 0, "pid": os.getpid(), "snapshot_seq": self.snapshot_seq,
                 "certificate_seq": self.certificate_seq, "role": "xDS, certificates, admin, listeners"}
        return [first] + [
            {"index": h.index, "pid": h.pid, "snapshot_seq": h.snapshot_seq,
             "certificate_seq": h.certificate_seq, "role": "listeners", "last_error": h.last_error}
            for h in self.workers]

    def memory(self) -> dict[str, Any]:
        """RSS and PSS of every process of the sidecar (``/proc``; PSS shares the pages the fork left
        shared between them, so the PSS figures add up to what the sidecar costs)."""
        processes = [{"index": 0, "pid": os.getpid(), **process_memory(os.getpid())}]
        processes += [{"index": h.index, "pid": h.pid, **process_memory(h.pid)} for h in self.workers]
        return {
            "concurrency": len(processes), "processes": processes,
            "rss_bytes": sum(p.get("rss_bytes") or 0 for p in processes),
            "pss_bytes": sum(p.get("pss_bytes") or 0 for p in processes),
        }

    async def stop(self, grace: float) -> None:
        """Stop every worker (SIGTERM: they drain for ``grace``), SIGKILL what is left after it."""
        self._stopping = True
        for handle in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + REAP_EXTRA
        left = list(self.workers)
        while left and time.monotonic() < deadline:
            left = [h for h in left if _reap(h.pid, wait=0.0) is None]
            if left:
                await asyncio.sleep(0.02)
        for handle in left:
            log.warning("worker %d (pid %d) did not stop within %.1f s: killed", handle.index, handle.pid,
                        grace + REAP_EXTRA)
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
            _reap(handle.pid, wait=1.0)
        for handle in self.workers:
            if handle.writer is not None:
                handle.writer.close()
            if handle.task is not None:
                handle.task.cancel()


def _reap(pid: int, wait: float) -> int | None:
    """The wait status of ``pid`` once it ended (polled up to ``wait`` seconds), else None."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _describe_status(status: int | None) -> str:
    if status is None:
        return "closed its pipe"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def process_memory(pid: int) -> dict[str, int | None]:
    """``rss_bytes`` (``/proc/PID/status`` VmRSS) and ``pss_bytes`` (``smaps_rollup`` Pss); None
    where the kernel does not say (another OS, a process gone)."""
    found: dict[str, int | None] = {"rss_bytes": None, "pss_bytes": None}
    for path, key, name in ((f"/proc/{pid}/status", "VmRSS:", "rss_bytes"),
                            (f"/proc/{pid}/smaps_rollup", "Pss:", "pss_bytes")):
        try:
            with open(path, encoding="ascii") as handle:
                for line in handle:
                    if line.startswith(key):
                        found[name] = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return found
