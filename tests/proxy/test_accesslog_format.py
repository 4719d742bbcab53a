"""The access-log line (unit): the hand-built JSON equals json.dumps of the documented entry, and
the cached wall clock formats exactly as datetime does."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from meshkit.proxy.balancer import Endpoint
from meshkit.proxy.filters.accesslog import AccessLogSink, WallClock, access_log
from meshkit.proxy.http import Handler, Headers, Request, Response


def test_wall_clock_matches_datetime_isoformat() -> None:
    clock = WallClock()
    rng = random.Random(7)
    base = time.time()
    walls = [base + rng.uniform(-5, 5) for _ in range(2000)]
    walls += [1_700_000_000.9999996, 1_700_000_000.0004999, 1_700_000_001.0]  # rounding edges
    for wall in sorted(walls) + walls:  # in order (cache hits) and shuffled (cache misses)
        expected = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert clock.stamp(wall) == expected, wall


async def test_line_equals_json_dumps_of_the_entry(tmp_path: Path) -> None:
    sink = AccessLogSink(str(tmp_path / "access.log"))
    filt = access_log(sink, "outbound")
    headers = Headers([
        ("user-agent", 'curl "quoted" \\ é ☃'), ("x-request-id", "rid-1"), ("x-request-id", "rid-2"),
        ("x-forwarded-for", "127.0.0.1"),
    ])
    request = Request("POST", "/p?q=\"1\"&x=\u00e9", "reviews:9080", headers, b"12345",
                      start=time.monotonic() - 0.0123, version="1.0")
    request.cluster = "reviews|v1"
    request.endpoint = Endpoint("127.0.0.1", 9)
    request.flags = "DI"

    async def upstream(req: Request) -> Response:
        return Response(503, Headers(), b"abc", flags="UF", upstream_host="")

    handler: Handler = upstream
    await filt(request, handler)
    bare = Request("GET", "/", "", Headers(), start=time.monotonic())  # no headers, no endpoint
    await filt(bare, handler)
    sink.close()
    lines = (tmp_path / "access.log").read_text(encoding="utf-8").splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first == first | {
        "method": "POST", "path": "/p?q=\"1\"&x=\u00e9", "authority": "reviews:9080", "protocol": "HTTP/1.0",
        "status": 503, "response_flags": "DI,UF", "upstream_host": "127.0.0.1:9",
        "upstream_cluster": "reviews|v1", "request_id": "rid-1", "bytes_received": 5, "bytes_sent": 3,
        "user_agent": 'curl "quoted" \\ é ☃', "x_forwarded_for": "127.0.0.1", "direction": "outbound",
    }
    assert 12.0 <= first["duration_ms"] < 5000
    assert list(first) == [
        "start_time", "method", "path", "authority", "protocol", "status", "response_flags", "duration_ms",
        "upstream_host", "upstream_cluster", "request_id", "bytes_received", "bytes_sent", "user_agent",
        "x_forwarded_for", "direction",
    ]
    for line, entry in zip(lines, (first, second), strict=True):
        assert line == json.dumps(entry, separators=(",", ":"))  # byte for byte what json.dumps writes
    assert (second["request_id"], second["user_agent"], second["upstream_host"]) == (None, None, None)
