"""One ``--concurrency`` worker process: listeners only, fed by the first process over a pipe.

``run`` is called in the child right after ``workers.fork_workers`` (no event loop existed before
the fork): a fresh uvloop loop, a ``Proxy`` built as the first process's is (same filters, same
access log file, opened here in append mode), serving this worker's ``SO_REUSEPORT`` sockets.
From the pipe (JSON lines) it takes:

- ``snapshot``: applied to its own ``ConfigState``; answered ``applied`` with the sequence number
  (and the NACK reason if it refused it, which the first process logs);
- ``certificate``: installed (``tls.relayed``), answered ``certificate``;
- ``report``: answered with its Prometheus text and ``/stats`` document (``stats_merge`` sums them).

It sends the spans it records as ``post`` messages (the first process ships them). SIGTERM/SIGINT
drain it as they drain a sidecar; EOF on the pipe (the first process is gone) stops it at once, so
no worker outlives its sidecar. SIGHUP (a ``--config`` reload) is the first process's: ignored here.

It must not do: talk to the control plane or the CA, or bind a port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshkit.proxy.workers import PIPE_LIMIT, Sockets

if TYPE_CHECKING:
    import argparse

    from meshkit.proxy.main import Proxy

log = logging.getLogger("meshkit.proxy.worker")


def run(args: argparse.Namespace, index: int, sockets: Sockets, channel: socket.socket) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return asyncio.run(_serve(args, index, sockets, channel))


async def _serve(args: argparse.Namespace, index: int, sockets: Sockets, channel: socket.socket) -> int:
    from meshkit.proxy.main import Proxy  # noqa: PLC0415 - main forks before it needs this module

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = Proxy(args, worker=True)
    proxy.sockets = sockets
    reader, writer = await asyncio.open_unix_connection(sock=channel, limit=PIPE_LIMIT)
    grace = args.drain_seconds

    def send(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def post(path: str, body: bytes) -> int:
        send({"op": "post", "path": path, "body": body.decode()})
        return 202

    tasks = [asyncio.ensure_future(_follow(proxy, reader, send, stop))]
    try:
        await proxy.start()
        if proxy.spans is not None:
            tasks.append(asyncio.ensure_future(proxy.spans.ship(post)))
        await stop.wait()
        if reader.at_eof():  # the first process is gone: nobody to drain for
            grace = 0.0
    finally:
        for task in tasks:
            task.cancel()
        if proxy.spans is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proxy.spans.flush(post), 1.0)
        proxy.args.drain_seconds = grace
        await proxy.stop()
        writer.close()
    log.info("worker %d stopped", index)
    return 0


async def _follow(
    proxy: Proxy, reader: asyncio.StreamReader, send: Callable[[dict[str, Any]], None], stop: asyncio.Event
) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            message = json.loads(line)
            op = message.get("op")
            if op == "snapshot":
                error = proxy.state.apply(message["doc"])
                send({"op": "applied", "seq": message["seq"], "error": error})
            elif op == "certificate":
                send({"op": "certificate", "seq": message["seq"], "error": _install(proxy, message)})
            elif op == "report":
                admin = proxy.admin
                send({"op": "report", "id": message["id"], "pid": os.getpid(),
                      "prometheus": admin.worker_prometheus(), "stats": admin.stats_document()})
    except (OSError, ValueError) as exc:
        log.error("worker pipe broken: %s", exc)
    finally:
        stop.set()  # EOF: the first process ended (or closed the pipe): stop now


def _install(proxy: Proxy, message: dict[str, Any]) -> str | None:
    from meshkit.proxy.tls import CertificateError  # noqa: PLC0415 - only a worker of an mTLS sidecar
    from meshkit.proxy.tls.relayed import RelayedCertificates  # noqa: PLC0415

    certificates = proxy.certificates
    if not isinstance(certificates, RelayedCertificates):
        return "this worker runs without mTLS"
    try:
        certificates.install(message["identity"], message["chain"], message["key"], message["root"])
    except CertificateError as exc:
        return str(exc)
    return None
