"""Runs wrk against one target for one round and returns what it measured.

A tiny Lua ``done`` hook prints the summary as one JSON line (latencies in microseconds from
wrk's HdrHistogram), so nothing is scraped from wrk's human-readable output.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARKER = "PROXYBENCH "
DONE_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "mean_us": %.3f, "errors_connect": %d, "errors_read": %d, "errors_write": %d, '
    .. '"errors_status": %d, "errors_timeout": %d}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("MARKER", MARKER)
WRK_TIMEOUT_S = 5  # per request; far above any latency we expect on loopback


class LoadError(RuntimeError):
    """wrk failed or printed no summary."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: request count, rate, latency percentiles (µs) and error counts."""

    requests: int
    duration_s: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    errors: int          # connect/read/write/timeout errors
    non_2xx: int         # responses with a status outside 2xx/3xx

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class Wrk:
    """The wrk binary plus the summary script (written once into the work dir by ``prepare``)."""

    binary: str
    script: Path

    @classmethod
    def prepare(cls, binary: str, workdir: Path) -> Wrk:
        script = workdir / "summary.lua"
        script.write_text(DONE_SCRIPT)
        return cls(binary, script)

    def run(self, port: int, host: str, connections: int, seconds: int, path: str = "/") -> LoadResult:
        return run_wrk(self, port, host, connections, seconds, path=path)


def run_wrk(wrk: Wrk, port: int, host: str, connections: int, seconds: int, *, path: str = "/") -> LoadResult:
    """``wrk -t1 -cN -dS`` on http://127.0.0.1:port/path with ``Host: host``; bounded by a hard timeout."""
    argv = [wrk.binary, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s",
            "-s", str(wrk.script), "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {seconds + 30} s: {' '.join(argv)}") from exc
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(MARKER)), None)
    if result.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({result.returncode}): {' '.join(argv)}\n{result.stdout}{result.stderr}")
    data = json.loads(line[len(MARKER):])
    return LoadResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        p50_us=float(data["p50_us"]),
        p90_us=float(data["p90_us"]),
        p99_us=float(data["p99_us"]),
        max_us=float(data["max_us"]),
        mean_us=float(data["mean_us"]),
        errors=sum(data[key] for key in ("errors_connect", "errors_read", "errors_write", "errors_timeout")),
        non_2xx=data["errors_status"],
    )
