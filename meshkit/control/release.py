"""Freeing a large retired object graph (the old config, an old snapshot) on the event loop, a
slice at a time.

Dropping the last reference to a 1 MB VirtualService's objects frees all of them in one C call
that holds the GIL: 30-70 ms on the loop at commit, whichever thread drops it (a thread would not
help). `GradualRelease.put` takes the objects instead; a task on the loop walks them breadth
first, for at most ``slice_seconds`` at a time, and yields between slices. It never changes an
object: it only holds references to an object's referents (`gc.get_referents`) before dropping
its own reference to the object, so each object's dealloc frees only that object; the referents
come next. An object someone else still references (a count above the walk's own) is dropped
without being walked: it is not garbage, and the last holder frees it as usual (a module, a
class, a resource the new config kept).

Walking costs more per object than a plain dealloc (about 1 µs against 0.25 µs, measured on
this machine with snapshots of the benchmark's shape), and most retired graphs are small: a
Bookinfo snapshot is ~9 KB of JSON, a hundred-odd objects. So what its caller knows to be small
(``size``, about the bytes of its JSON, below ``AT_ONCE_BYTES``) is dropped at once, where its
dealloc takes microseconds; only large or unknown graphs are walked.

Must not: walk anything it was not handed; run off the loop (the objects may be touched by the
loop's callbacks until they are handed over, never after).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import deque
from typing import Any, Protocol

SLICE_SECONDS = 0.002  # the longest the loop is kept by one slice of freeing
AT_ONCE_BYTES = 256 * 1024  # JSON this small is ~10,000 objects at most: well under a slice to free
_OWN_REFERENCES = 2  # sys.getrefcount(obj) of an object only the walk holds: `obj` and the call's argument


class Release(Protocol):
    """Takes ownership of ``objects`` (the list is emptied) to free them; ``size`` is about the bytes
    of their JSON when the caller knows it (None: unknown, treated as large)."""

    def __call__(self, objects: list[Any], size: int | None = None) -> None: ...


def release_at_once(objects: list[Any], size: int | None = None) -> None:
    """The `Release` without a loop: drop everything now (tests, tools)."""
    objects.clear()


class GradualRelease:
    """Frees what is handed to `put` on the running loop, in slices of ``slice_seconds``."""

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self.freed = 0  # objects walked (for tests and benchmarks)
        self._queue: deque[Any] = deque()
        self._task: asyncio.Task[None] | None = None

    def put(self, objects: list[Any], size: int | None = None) -> None:
        """Take ownership of ``objects`` (the list is emptied: the caller must hold no other
        reference to them) and free them gradually; at once when ``size`` is below
        ``AT_ONCE_BYTES`` or there is no running loop. Satisfies `Release`."""
        if size is not None and size < AT_ONCE_BYTES:
            objects.clear()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            objects.clear()
            return
        while objects:
            self._queue.append(objects.pop())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())

    @property
    def pending(self) -> int:
        """Objects waiting to be walked."""
        return len(self._queue)

    async def _run(self) -> None:
        while self._queue:
            self._slice()
            await asyncio.sleep(0)

    def _slice(self) -> None:
        queue, deadline = self._queue, time.perf_counter() + self.slice_seconds
        while queue and time.perf_counter() < deadline:
            for _ in range(min(256, len(queue))):
                obj = queue.popleft()
                self.freed += 1
                if sys.getrefcount(obj) <= _OWN_REFERENCES:
                    queue.extend([ref for ref in gc.get_referents(obj) if gc.is_tracked(ref)])
                del obj

    def close(self) -> None:
        """Stop the task; what is left is freed at once."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._queue.clear()
