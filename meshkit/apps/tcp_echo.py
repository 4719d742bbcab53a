"""Istio's tcp-echo sample (``samples/tcp-echo``, image ``docker.io/istio/tcp-echo-server``): plain TCP.

As the sample's Go server (``samples/tcp-echo/src/main.go``): for every line a client sends (up to
and including its ``\\n``) it writes back ``<prefix> <line>``, the prefix being the container's
second argument (``one`` for tcp-echo-v1, ``two`` for v2); it logs ``request: <line>`` and
``response: <prefix> <line>`` on stdout; when the client closes its side the server closes the
connection, and a last piece of data without a ``\\n`` gets no answer (Go's ``ReadBytes`` returns
it with ``io.EOF``, and the server returns without writing). So ``(date; sleep 1) | nc HOST 9000``
prints ``one Mon Nov 12 23:24:57 UTC 2022``.

The sample listens on every port of its first argument (``9000,9001,9002``); here the process
listens on the one port it is given (``--port``, the instance's app port on the local mesh), and
the ready line on stdout is the one every demo app prints (`meshkit.apps.serve`). It is no aiohttp
app: it answers no ``/healthz``, so the local mesh checks it is up with a TCP connect.

Bounded: at most ``MAX_CONNECTIONS`` connections at once (more are closed at once), lines up to
``MAX_LINE`` bytes (a longer one closes the connection), and a connection idle for ``IDLE_TIMEOUT_S``
is closed.

It must not import anything else from meshkit, nor aiohttp (this process does without it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence

MAX_CONNECTIONS = 256
MAX_LINE = 64 * 1024
IDLE_TIMEOUT_S = 300.0


def _log(text: str) -> None:
    print(text, end="" if text.endswith("\n") else "\n", flush=True)


class EchoServer:
    """The echo itself: one task per connection, each line answered with ``prefix + " " + line``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.connections: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= MAX_CONNECTIONS or task is None:
            writer.close()
            return
        self.connections.add(task)
        try:
            await self._echo(reader, writer)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            pass  # reset, a line over MAX_LINE, or idle too long: the connection ends
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
            if not line.endswith(b"\n"):
                return  # the client closed (a last piece without a newline gets no answer, as the sample)
            text = line.decode(errors="replace")
            _log(f"request: {text}")
            answer = self.prefix + b" " + line
            _log(f"response: {answer.decode(errors='replace')}")
            writer.write(answer)
            await writer.drain()


async def serve(host: str, port: int, prefix: str, *, instance: str, version: str) -> None:
    """Serve on ``host:port`` until SIGTERM/SIGINT; prints the JSON ready line once listening."""
    echo = EchoServer(prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(echo.handle, host, port, reuse_address=True, limit=MAX_LINE)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(json.dumps({"ready": True, "app": "tcp-echo", "instance": instance, "version": version,
                      "host": bound_host, "port": bound_port, "prefix": prefix}), flush=True)
    _log(f"listening on {bound_host}:{bound_port}, prefix: {prefix}")
    async with server:
        await stop.wait()
        server.close()
        for task in list(echo.connections):
            task.cancel()
        await asyncio.gather(*echo.connections, return_exceptions=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only tcp-echo takes (the common ones are the launcher's)."""
    parser.add_argument("--prefix", default="one",
                        help="written before every echoed line (the sample's second argument; default one)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m meshkit.apps tcp-echo",
                                  description="Istio's tcp-echo server: '<prefix> <line>' per line")
    top.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    top.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    top.add_argument("--version", default="v1", help="version label (default v1)")
    top.add_argument("--instance", help="pod name (default tcp-echo-<version>-0)")
    top.add_argument("--service-port", type=int, default=9000, help="accepted as by every app; unused")
    top.add_argument("--seed", type=int, help="accepted as by every app; unused")
    add_arguments(top)
    return top


def run(args: argparse.Namespace) -> int:
    """Blocking entry point for parsed arguments; the process exit code."""
    if not 0 <= args.port <= 65535:
        print(f"error: tcp-echo: --port must be 0-65535, got {args.port}", file=sys.stderr)
        return 2
    instance = args.instance or f"tcp-echo-{args.version}-0"
    try:
        asyncio.run(serve(args.host, args.port, args.prefix, instance=instance, version=args.version))
    except OSError as exc:
        print(f"error: {instance}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshkit.apps tcp-echo --port N --prefix one`` (argv without the app's name)."""
    return run(parser().parse_args(argv))
