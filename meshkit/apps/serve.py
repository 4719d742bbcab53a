"""Running one app as a process: listen, announce readiness, stop cleanly on SIGTERM/SIGINT.

With ``--port 0`` the kernel picks a free port; the ready line on stdout says which, so a
supervisor (or a test) never races for a port. The line is JSON::

    {"ready": true, "app": "reviews", "instance": "reviews-v2-0", "version": "v2",
     "host": "127.0.0.1", "port": 41234}

(one line in reality). With ``tls`` (the external stand-ins' ``--tls-port``), the same app is
also served over HTTPS on a second port, and the ready line adds ``"tls_port"``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from aiohttp import web

from meshkit.apps.identity import WORKLOAD

SHUTDOWN_TIMEOUT_S = 2.0


class ListenError(Exception):
    """The app could not bind its port."""


async def serve(app: web.Application, host: str, port: int, tls: tuple[int, Any] | None = None) -> None:
    """Serve ``app`` on ``host:port`` (and over HTTPS on ``tls``: (port, SSLContext)) until SIGTERM/SIGINT."""
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
        extra: dict[str, Any] = {}
        if tls is not None:
            tls_site = web.TCPSite(runner, host, tls[0], reuse_address=True, ssl_context=tls[1])
            try:
                await tls_site.start()
            except OSError as exc:
                raise ListenError(
                    f"{workload.instance}: cannot listen on {host}:{tls[0]}: {exc.strerror or exc}"
                ) from exc
            extra["tls_port"] = runner.addresses[-1][1]
        ready = {
            "ready": True,
            "app": workload.app,
            "instance": workload.instance,
            "version": workload.version,
            "host": bound_host,
            "port": bound_port,
            **extra,
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, tls: tuple[int, Any] | None = None) -> int:
    """Blocking entry point; returns the process exit code."""
    try:
        asyncio.run(serve(app, host, port, tls))
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
