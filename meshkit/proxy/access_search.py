"""The admin page ``/access_log?request_id=ID``: this sidecar's access-log lines of one request.

`meshkit explain` merges them into each hop (the control plane asks every proxy a trace passed
through). Only the last `TAIL_BYTES` of the file are read (recent requests; the read is bounded
whatever the file's size), and at most `LIMIT` lines are returned. It reads the log; it never writes
or rotates it, and it is off the request path (an admin request only).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

TAIL_BYTES = 4 * 1024 * 1024
LIMIT = 20
MAX_ID = 256


def find_lines(path: str, request_id: str, *, tail: int = TAIL_BYTES,
               limit: int = LIMIT) -> list[dict[str, Any]]:
    """The parsed lines of ``path`` whose ``request_id`` is exactly ``request_id`` (oldest first)."""
    needle = ('"request_id":' + json.dumps(request_id)).encode()
    with open(path, "rb") as log:
        size = os.fstat(log.fileno()).st_size
        start = max(0, size - tail - 1)  # one byte more: is the first line whole?
        log.seek(start)
        data = log.read(size - start)
    if start:
        data = data[data.find(b"\n") + 1:]  # a cut first line is left out
    found: list[dict[str, Any]] = []
    at = data.find(needle)
    while at >= 0 and len(found) < limit:
        begin = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        with contextlib.suppress(ValueError):  # a line being written right now
            found.append(json.loads(data[begin:end]))
        at = data.find(needle, end)
    return found
