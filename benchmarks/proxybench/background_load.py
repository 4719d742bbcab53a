"""Open-loop traffic in a child process for as long as a measurement needs it.

``push_latency.py --traffic`` measures config pushes *while the mesh serves traffic*: the load must
run beside the measurement without sharing its event loop (a generator at 1000 requests/s in the
measuring process would delay the ACKs it times). So a child process runs ``openloop.run_point`` in
slices of ``SLICE_S`` seconds until its stdin is closed or ``max_seconds`` have passed, then prints
one JSON line: the slices merged (counts summed, latencies pooled, percentiles over all of them).

It must not start or stop the servers it loads; the caller does. Bounded: ``max_seconds`` is capped
by ``openloop.MAX_SECONDS``, and the parent kills the child if it has not answered in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxybench.openloop import MAX_SECONDS, TIMEOUT_S, OpenLoopResult, Point, get_request, run_point

SLICE_S = 2.0
HERE = Path(__file__).resolve().parent


def merge(results: list[OpenLoopResult], point: Point) -> OpenLoopResult:
    """The slices as one result: counts summed, latencies pooled, elapsed time added."""
    merged = OpenLoopResult(Point(point.rate, point.connections, sum(r.elapsed_s for r in results)))
    for result in results:
        merged.latencies_us.extend(result.latencies_us)
        merged.errors += result.errors
        merged.non_2xx += result.non_2xx
        merged.queued += result.queued
        merged.unsent += result.unsent
        merged.elapsed_s += result.elapsed_s
    return merged


async def run_until_stdin_closes(point: Point, address: tuple[str, int], request: bytes,
                                 max_seconds: float) -> OpenLoopResult:
    """Slices of ``point`` back to back until stdin reaches EOF or ``max_seconds`` have run."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    closed = asyncio.ensure_future(reader.read())  # b"" at EOF: the parent is done measuring
    results: list[OpenLoopResult] = []
    spent = 0.0
    try:
        while not closed.done() and spent < max_seconds:
            seconds = min(SLICE_S, max_seconds - spent)
            results.append(await run_point(Point(point.rate, point.connections, seconds), address, request))
            spent += seconds
    finally:
        closed.cancel()
    return merge(results, point)


@dataclass
class BackgroundLoad:
    """The parent's side: ``start()`` the child, ``stop()`` it and read its merged summary."""

    point: Point  # rate and connections; ``seconds`` is the most it may run
    address: tuple[str, int]
    path: str
    host: str
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if not 0 < self.point.seconds <= MAX_SECONDS:
            raise ValueError(f"background load: 0 < seconds <= {MAX_SECONDS}, got {self.point.seconds}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(HERE.parent), str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]))}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxybench.background_load", self.address[0], str(self.address[1]),
            f"{self.point.rate:g}", str(self.point.connections), f"{self.point.seconds:g}",
            self.path, self.host,
            env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> dict[str, Any]:
        """Close the child's stdin; its summary once the current slice ends (bounded)."""
        process = self.process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("background load was never started")
        process.stdin.close()
        try:
            out = await asyncio.wait_for(process.stdout.read(), SLICE_S + TIMEOUT_S + 10)
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError("background load did not stop in time") from None
        if process.returncode != 0 or not out.strip():
            raise RuntimeError(f"background load ended with code {process.returncode}: {out[-500:]!r}")
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary


def main(argv: list[str]) -> int:
    host, port, rate, connections, seconds, path, host_header = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent; it closes our stdin
    point = Point(float(rate), int(connections), float(seconds))
    result = asyncio.run(run_until_stdin_closes(point, (host, int(port)), get_request(path, host_header),
                                                float(seconds)))
    print(json.dumps(result.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
