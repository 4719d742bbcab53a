"""`fortio load` from a workload of the local mesh, as Istio's circuit-breaking task runs it.

``kubectl exec "$FORTIO_POD" -c fortio -- /usr/bin/fortio load -c 2 -qps 0 -n 20 -loglevel Warning
http://httpbin:8000/get`` becomes ``meshkit exec fortio-deploy -- fortio load ...`` (the same words
after ``--``; `meshkit.runtime.exec_command` parses them into a `LoadSpec`). `run_load` sends the
calls the way fortio does from inside the pod: ``connections`` keep-alive connections, each a
thread, through the workload's sidecar (its outbound port as the HTTP proxy, as the pod's
capture would), at ``qps`` in total (0: as fast as possible), for ``calls`` calls or ``seconds``.
`LoadResult.report` prints fortio's summary lines (the histogram's targets, ``Sockets used``,
``Code 200 : 17 (85.0 %)``...) so the task's expected output can be compared line for line.

It must not: run without bounds (calls, seconds and connections are capped), or send anywhere
but the workload's own sidecar on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_CONNECTIONS = 64
MAX_CALLS = 100_000
MAX_SECONDS = 300.0
TIMEOUT_S = 3.0  # fortio's default -timeout
SOCKET_ERROR = -1  # fortio reports a call that got no HTTP answer as "Code -1"


@dataclass(frozen=True)
class LoadSpec:
    """One ``fortio load``: what to call and how hard (fortio's flags, defaults included)."""

    url: str
    connections: int = 4  # -c
    qps: float = 8.0  # -qps (0 or negative: as fast as possible)
    calls: int | None = None  # -n (else -t)
    seconds: float = 5.0  # -t
    headers: tuple[tuple[str, str], ...] = ()  # -H

    def check(self) -> None:
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"-c: 1 to {MAX_CONNECTIONS} connections, got {self.connections}")
        if self.calls is not None and not 1 <= self.calls <= MAX_CALLS:
            raise ValueError(f"-n: 1 to {MAX_CALLS} calls, got {self.calls}")
        if self.calls is None and not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"-t: up to {MAX_SECONDS:g}s, got {self.seconds:g}s")


@dataclass
class LoadResult:
    spec: LoadSpec
    codes: Counter[int] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    sockets: int = 0
    elapsed: float = 0.0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.durations)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    def report(self) -> list[str]:
        """fortio's summary, in its words and order."""
        spec, calls = self.spec, self.calls
        qps = calls / self.elapsed if self.elapsed > 0 else 0.0
        pace = "max qps" if spec.qps <= 0 else f"{spec.qps:g} queries per second"
        amount = f"for {spec.calls} calls" if spec.calls is not None else f"for {spec.seconds:g}s"
        lines = [f"Fortio (meshkit) running at {max(spec.qps, 0):g} queries per second, {amount}: {spec.url}",
                 f"Starting at {pace} with {spec.connections} thread(s)",
                 f"Ended after {self.elapsed * 1000:.1f}ms : {calls} calls. qps={qps:.2f}"]
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            spread = math.sqrt(sum((d - mean) ** 2 for d in self.durations) / len(self.durations))
            lines.append(f"Aggregated Function Time : count {len(self.durations)} avg {mean:.6g} +/- "
                         f"{spread:.4g} min {min(self.durations):.6g} max {max(self.durations):.6g} "
                         f"sum {sum(self.durations):.6g}")
            lines += [f"# target {label} {self.percentile(p):.6g}"
                      for label, p in (("50%", 0.5), ("75%", 0.75), ("90%", 0.9), ("99%", 0.99),
                                       ("99.9%", 0.999))]
        lines.append(f"Sockets used: {self.sockets} (for perfect keepalive, would be {spec.connections})")
        lines += [f"Code {code} : {count} ({100.0 * count / calls:.1f} %)"
                  for code, count in sorted(self.codes.items())]
        average = 1000 * sum(self.durations) / len(self.durations) if self.durations else 0.0
        lines.append(f"All done {calls} calls (plus 0 warmup) {average:.3f} ms avg, {qps:.1f} qps")
        return lines


class _Worker:
    """One fortio connection: keep-alive through the sidecar, reconnecting when it is closed."""

    def __init__(self, proxy: tuple[str, int], spec: LoadSpec, result: LoadResult,
                 lock: threading.Lock) -> None:
        self.proxy, self.spec, self.result, self.lock = proxy, spec, result, lock
        self.conn: http.client.HTTPConnection | None = None

    def call(self) -> None:
        began = time.monotonic()
        code = SOCKET_ERROR
        if self.conn is None:
            self.conn = http.client.HTTPConnection(*self.proxy, timeout=TIMEOUT_S)
            with self.lock:
                self.result.sockets += 1
        try:
            self.conn.putrequest("GET", self.spec.url, skip_accept_encoding=True)
            for name, value in self.spec.headers:
                self.conn.putheader(name, value)
            self.conn.endheaders()
            response = self.conn.getresponse()
            response.read()
            code = response.status
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
        with self.lock:
            self.result.codes[code] += 1
            self.result.durations.append(time.monotonic() - began)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(proxy: tuple[str, int], spec: LoadSpec) -> LoadResult:
    """Run ``spec`` through the sidecar at ``proxy`` (its outbound port); bounded by calls or time."""
    spec.check()
    result = LoadResult(spec)
    lock = threading.Lock()
    began = time.monotonic()
    deadline = began + (MAX_SECONDS if spec.calls is not None else spec.seconds)
    per_thread_interval = spec.connections / spec.qps if spec.qps > 0 else 0.0
    shares = [spec.calls // spec.connections + (1 if i < spec.calls % spec.connections else 0)
              for i in range(spec.connections)] if spec.calls is not None else [None] * spec.connections

    def loop(share: int | None) -> None:
        worker = _Worker(proxy, spec, result, lock)
        done = 0
        try:
            while (share is None or done < share) and time.monotonic() < deadline:
                if per_thread_interval:
                    wait = began + done * per_thread_interval - time.monotonic()
                    if wait > 0:
                        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                        if time.monotonic() >= deadline:
                            break
                worker.call()
                done += 1
        finally:
            worker.close()

    threads = [threading.Thread(target=loop, args=(share,), daemon=True) for share in shares if share != 0]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(MAX_SECONDS + TIMEOUT_S * 2)
    result.elapsed = time.monotonic() - began
    return result
