"""An open-loop HTTP/1.1 load generator: a fixed request rate, evenly spaced, with coordinated-omission
correction (the idea of wrk2 and fortio's ``-qps``), for Istio's performance method.

``connections`` keep-alive connections share the rate: connection ``i`` sends its ``k``-th request at
``t0 + (k * connections + i) / rate``, so the sends of all connections interleave evenly (Debian's
``hey`` starts every worker's tick together, which makes bursts of ``connections`` requests; see
docs in benchmarks/README.md). Each connection has one request in flight, as fortio's do.

Latency of a request:

* sent on time (its connection was idle at the scheduled time): from the moment it was written
  to the moment its response was complete. The event loop's timers have a resolution of about a
  millisecond; charging that jitter to the proxy would add the generator's own noise to every
  target.
* sent late because its connection was still waiting for the previous response: from its
  **scheduled** time, so the queueing a slow response causes is counted, not omitted.

It must not start or stop the servers it measures; the caller does. Bounded: ``seconds`` is capped,
and a request still unanswered at ``seconds + TIMEOUT_S`` is counted as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httptools

TIMEOUT_S = 5.0
MAX_SECONDS = 600.0


@dataclass(frozen=True)
class Point:
    """One load point: ``rate`` requests per second over ``connections`` connections for ``seconds``."""

    rate: float
    connections: int
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.rate:g}rps x{self.connections}"


@dataclass
class OpenLoopResult:
    """What one point measured: latencies in microseconds, counts, and how late the sends were."""

    point: Point
    latencies_us: list[float] = field(default_factory=list)
    errors: int = 0
    non_2xx: int = 0
    queued: int = 0  # requests whose connection was still busy at their scheduled time
    unsent: int = 0  # requests still due when the time was up: the target could not keep the rate
    elapsed_s: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_us)

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (nearest rank) in microseconds; None without samples."""
        if not self.latencies_us:
            return None
        ordered = sorted(self.latencies_us)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> dict[str, float | int | None]:
        return {"rate": self.point.rate, "connections": self.point.connections,
                "seconds": self.point.seconds, "completed": self.completed,
                "achieved_rps": round(self.achieved_rps, 1), "errors": self.errors,
                "non_2xx": self.non_2xx, "queued": self.queued, "unsent": self.unsent,
                **{f"p{q:g}_us": _round(self.percentile(q)) for q in (50, 90, 99, 99.9)}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Exchange(asyncio.Protocol):
    """One keep-alive connection: write a request, resolve ``done`` with the status when complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection closed by the server"))
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done


async def _open(host: str, port: int) -> _Exchange:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Exchange, host, port)
    return protocol


@dataclass(frozen=True)
class _Target:
    address: tuple[str, int]
    request: bytes


async def _one_connection(index: int, point: Point, target: _Target, start: float,
                          result: OpenLoopResult) -> None:
    period = point.connections / point.rate
    end = start + point.seconds
    scheduled = start + index / point.rate
    exchange: _Exchange | None = None
    previous_done = start
    try:
        while scheduled < end:
            if time.perf_counter() >= end:  # behind schedule when the time is up: stop, count the rest
                result.unsent += int((end - scheduled) / period) + 1
                break
            now = time.perf_counter()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            queued = previous_done > scheduled  # the connection was busy when this request was due
            if exchange is None or exchange.transport is None or exchange.transport.is_closing():
                try:
                    exchange = await _open(*target.address)
                except OSError:
                    result.errors += 1
                    exchange = None
                    scheduled += period
                    continue
            sent = time.perf_counter()
            try:
                status = await asyncio.wait_for(exchange.send(target.request), TIMEOUT_S)
            except (OSError, TimeoutError, httptools.HttpParserError):
                result.errors += 1
                if exchange.transport is not None:
                    exchange.transport.close()
                exchange = None
                previous_done = time.perf_counter()
                scheduled += period
                continue
            previous_done = time.perf_counter()
            began = scheduled if queued else sent
            result.queued += queued
            result.latencies_us.append((previous_done - began) * 1e6)
            if not 200 <= status < 300:
                result.non_2xx += 1
            scheduled += period
    finally:
        if exchange is not None and exchange.transport is not None:
            exchange.transport.close()


async def run_point(point: Point, address: tuple[str, int], request: bytes) -> OpenLoopResult:
    """Send ``request`` to ``address`` at ``point``'s rate; return the latencies and counts."""
    if not 0 < point.seconds <= MAX_SECONDS or point.rate <= 0 or point.connections < 1:
        raise ValueError(f"bad load point {point}: 0 < seconds <= {MAX_SECONDS}, rate > 0, connections >= 1")
    result = OpenLoopResult(point)
    start = time.perf_counter() + 0.05  # let every connection task start before the first send
    target = _Target(address, request)
    tasks = [asyncio.create_task(_one_connection(i, point, target, start, result))
             for i in range(point.connections)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), point.seconds + TIMEOUT_S + 1)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.gather(*tasks, return_exceptions=True)
    result.elapsed_s = time.perf_counter() - start
    return result


def get_request(path: str, host: str) -> bytes:
    """A keep-alive HTTP/1.1 GET in origin form (what a client behind a sidecar sends)."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshkit-openloop\r\n\r\n".encode()
