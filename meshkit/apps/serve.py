"""Running one app as a process: listen, announce readiness, stop cleanly on SIGTERM/SIGINT.

With ``--port 0`` the kernel picks a free port; the ready line on stdout says which, so a
supervisor (or a test) never races for a port. The line is JSON::

    {"ready": true, "app": "reviews", "instance": "reviews-v2-0", "version": "v2",
     "host": "127.0.0.1", "port": 41234}

(one line in reality).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiohttp import web

from meshkit.apps.identity import WORKLOAD

SHUTDOWN_TIMEOUT_S = 2.0


class ListenError(Exception):
    """The app could not bind its port."""


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT."""
    workload = app[WORKLOAD]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(
                f"{workload.instance}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        bound_host, bound_port = runner.addresses[0][:2]
        ready = {
            "ready": True,
            "app": workload.app,
            "instance": workload.instance,
            "version": workload.version,
            "host": bound_host,
            "port": bound_port,
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int) -> int:
    """Blocking entry point; returns the process exit code."""
    try:
        asyncio.run(serve(app, host, port))
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
