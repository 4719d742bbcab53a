"""Streamed message bodies: the async iterator a protocol feeds and a filter or writer consumes.

A ``BodyStream`` is what ``Request.body`` / ``Response.body`` hold when a body is not
small and complete: the parser side calls ``feed``/``finish``/``fail``; the consumer
iterates. It applies back-pressure to its producer through two callbacks (pause and
resume reading) so an unbounded body never sits in memory, and ``aclose`` tells the
producer the consumer walked away (the connection is then discarded, not reused).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

HIGH_WATER = 256 * 1024  # pause the producer above this many buffered bytes
LOW_WATER = 64 * 1024  # resume it below this


class BodyError(Exception):
    """The stream ended abnormally (peer reset, framing error, size limit)."""


class BodyStream:
    """An async iterator of body chunks fed by a protocol, with flow control."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_done",
        "_error",
        "_on_abandon",
        "_on_complete",
        "_pause",
        "_paused",
        "_resume",
        "_waiter",
        "bytes_received",
        "length",
    )

    def __init__(
        self,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._on_abandon = on_abandon
        self._on_complete: Callable[[], None] | None = None
        self.bytes_received = 0  # total fed so far (for access logs and byte metrics)
        self.length: int | None = None  # the declared Content-Length, None when chunked/close-delimited

    # -- producer side -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._done:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_received += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def detach(self) -> None:
        """Forget the producer (its connection moves on to other work); buffered chunks stay readable."""
        self._pause = self._resume = self._on_abandon = None

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._wake()

    @property
    def finished(self) -> bool:
        return self._done and not self._chunks

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side -------------------------------------------------------------
    def on_complete(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the consumer has read the whole body (or gave up)."""
        self._on_complete = callback

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._done:
                self._finish_consumer()
                if self._error is not None:
                    raise BodyError(str(self._error) or type(self._error).__name__) from self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < LOW_WATER and self._resume is not None:
            self._paused = False
            self._resume()
        return data

    async def aclose(self) -> None:
        """The consumer is done: if the body was not complete, the producer is told to abandon it."""
        if not self._done:
            self._done = True
            self._chunks.clear()
            if self._on_abandon is not None:
                self._on_abandon()
        self._finish_consumer()

    def _finish_consumer(self) -> None:
        callback = self._on_complete
        if callback is not None:
            self._on_complete = None
            callback()


async def drain(body: object) -> None:
    """Discard a response body that will not be sent (a replaced or mirrored response)."""
    if isinstance(body, BodyStream) or (body is not None and hasattr(body, "aclose")):
        await body.aclose()


class ObservedBody:
    """Wraps a streamed response body to count what was sent and run callbacks at its end.

    Metrics and access logs record a streamed exchange only once its body is done (as Envoy
    does); several observers share one wrapper via ``observe``.
    """

    __slots__ = ("_callbacks", "_done", "_inner", "length", "sent")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._callbacks: list[Callable[[ObservedBody], None]] = []
        self._done = False
        self.sent = 0
        self.length: int | None = getattr(inner, "length", None)

    @staticmethod
    def observe(body: Any, callback: Callable[[ObservedBody], None]) -> ObservedBody:
        wrapper = body if isinstance(body, ObservedBody) else ObservedBody(body)
        wrapper._callbacks.append(callback)
        return wrapper

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._inner.__anext__()
        except BaseException:
            self._finish()
            raise
        self.sent += len(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            if hasattr(self._inner, "aclose"):
                await self._inner.aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            for callback in self._callbacks:
                callback(self)
