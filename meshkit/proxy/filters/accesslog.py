"""Access log: one JSON line per request, to a file or stdout, written in batches.

``AccessLogSink(target)`` opens ``target`` (a path, or ``-`` for stdout) and flushes the
lines of one event-loop iteration together; ``access_log(sink, direction)`` is the filter.
When access logging is off the pipeline simply leaves this filter out.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from meshkit.proxy.bodies import ObservedBody
from meshkit.proxy.filters.metrics import body_size, merged_flags
from meshkit.proxy.http import Filter, Handler, Request, Response


class AccessLogSink:
    """Buffers log lines and writes them once per loop iteration."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[str] = sys.stdout if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, entry: dict[str, Any]) -> None:
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            lines, self._pending = self._pending, []
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()


def access_log(sink: AccessLogSink, direction: str) -> Filter:
    """The access-log filter for one listener direction ("outbound" or "inbound")."""

    def emit(request: Request, response: Response | None, status: int, sent: int) -> None:
        now = time.monotonic()
        duration = (now - request.start) * 1000.0
        started = datetime.fromtimestamp(time.time() - (now - request.start), UTC)
        headers = request.headers
        endpoint = request.endpoint
        sink.write(
            {
                "start_time": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": request.method,
                "path": request.path,
                "authority": request.authority,
                "protocol": f"HTTP/{request.version}",
                "status": status,
                "response_flags": merged_flags(request, response),
                "duration_ms": round(duration, 3),
                "upstream_host": (response.upstream_host if response is not None else "")
                or (endpoint.hostport if endpoint is not None else None),
                "upstream_cluster": request.cluster,
                "request_id": headers.get("x-request-id"),
                "bytes_received": body_size(request.body),
                "bytes_sent": sent,
                "user_agent": headers.get("user-agent"),
                "x_forwarded_for": headers.get("x-forwarded-for"),
                "direction": direction,
            }
        )

    async def accesslog(request: Request, call_next: Handler) -> Response:
        try:
            response = await call_next(request)
        except BaseException:
            emit(request, None, 0, 0)
            raise
        body = response.body
        if isinstance(body, bytes):
            emit(request, response, response.status, len(body))
        else:
            response.body = ObservedBody.observe(
                body, lambda b: emit(request, response, response.status, b.sent)
            )
        return response

    return accesslog
