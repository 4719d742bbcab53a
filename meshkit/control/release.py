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

Must not: walk anything it was not handed; run off the loop (the objects may be touched by the
loop's callbacks until they are handed over, never after).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import deque
from typing import Any

SLICE_SECONDS = 0.002  # the longest the loop is kept by one slice of freeing
_OWN_REFERENCES = 2  # sys.getrefcount(obj) of an object only the walk holds: `obj` and the call's argument


class GradualRelease:
    """Frees what is handed to `put` on the running loop, in slices of ``slice_seconds``."""

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self.freed = 0  # objects walked (for tests and benchmarks)
        self._queue: deque[Any] = deque()
        self._task: asyncio.Task[None] | None = None

    def put(self, objects: list[Any]) -> None:
        """Take ownership of ``objects`` (the list is emptied: the caller must hold no other
        reference to them) and free them gradually; without a running loop, at once."""
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
