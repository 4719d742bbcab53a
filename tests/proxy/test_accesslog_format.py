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
        "upstream_host", "upstream_cluster", "route_name", "request_id", "bytes_received", "bytes_sent",
        "user_agent",
        "x_forwarded_for", "direction",
    ]
    for line, entry in zip(lines, (first, second), strict=True):
        assert line == json.dumps(entry, separators=(",", ":"))  # byte for byte what json.dumps writes
    assert (second["request_id"], second["user_agent"], second["upstream_host"]) == (None, None, None)


class _Clocks:
    """Stands in for the ``time`` module inside the access-log filter: chosen clock readings."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wall = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall


class _Upstream:
    """Answers with a given response, moving the fake clocks to the moment the request ends."""

    def __init__(self, clocks: _Clocks, now: float, wall: float, response: Response) -> None:
        self.clocks, self.now, self.wall, self.response = clocks, now, wall, response

    async def __call__(self, request: Request) -> Response:
        self.clocks.now, self.clocks.wall = self.now, self.wall
        return self.response


async def test_start_time_and_duration_match_datetime_and_round(tmp_path: Path, monkeypatch) -> None:
    """The filter's start time and duration are what datetime and round(ms, 3) give, and the
    cached parts of the line (request, upstream, client) never go stale: every line is compared with
    json.dumps of the entry built from scratch."""
    clocks = _Clocks()
    monkeypatch.setattr("meshkit.proxy.filters.accesslog.time", clocks)
    sink = AccessLogSink(str(tmp_path / "access.log"))
    filt = access_log(sink, "inbound")
    rng = random.Random(11)
    edges = [0.9999996, 0.0004999, 0.0009996, 0.5]  # the microsecond rounding edges of the start time
    durations = [0.0] * len(edges)
    durations += [0.0000004, 0.0000005, 0.0000015, 0.0010625, 0.0625, 0.0999995, 1.0, 12.3456785, 86400.25]
    durations += [rng.uniform(0, 2) for _ in range(300)] + [rng.expovariate(3000) for _ in range(300)]
    start = 5000.0
    expected: list[dict[str, object]] = []
    for index, duration in enumerate(durations):
        wall = 1_700_000_000.0 + (edges[index] if index < len(edges) else index * 0.3337 + rng.choice(edges))
        path = rng.choice(["/", "/a", '/b?x="1"', "/" + "p" * 600, f"/item/{index}"])
        agent = rng.choice([None, "curl/8.0", "ua \u00e9"])
        sent = b"x" * rng.choice([0, 3, 100])
        headers = Headers([("x-request-id", f"rid-{index}")] + ([("user-agent", agent)] if agent else []))
        request = Request(rng.choice(["GET", "POST"]), path, rng.choice(["a:80", "b"]), headers,
                          b"12" if index % 3 else b"", start=start, version=rng.choice(["1.1", "1.0"]))
        request.cluster = rng.choice([None, "inbound|9080||"])
        request.endpoint = rng.choice([None, Endpoint("127.0.0.1", 9)])
        status, flags = rng.choice([(200, ""), (503, "UF"), (404, "NR")])
        response = Response(status, Headers(), sent, flags=flags)
        await filt(request, _Upstream(clocks, start + duration, wall, response))
        elapsed = (start + duration) - start  # what the filter measures: the clock readings' difference
        expected.append({
            "start_time": datetime.fromtimestamp(wall - elapsed, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "method": request.method, "path": path, "authority": request.authority,
            "protocol": f"HTTP/{request.version}", "status": status, "response_flags": flags or "-",
            "duration_ms": float(round(elapsed * 1000.0, 3)),
            "upstream_host": request.endpoint.hostport if request.endpoint is not None else None,
            "upstream_cluster": request.cluster, "route_name": None, "request_id": f"rid-{index}",
            "bytes_received": len(request.body) if isinstance(request.body, bytes) else 0,
            "bytes_sent": len(sent), "user_agent": agent, "x_forwarded_for": None, "direction": "inbound",
        })
    sink.close()
    lines = (tmp_path / "access.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(expected)
    for line, entry in zip(lines, expected, strict=True):
        assert line == json.dumps(entry, separators=(",", ":")), entry
