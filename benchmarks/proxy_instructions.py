"""Python cost of one outbound sidecar request, in process and without sockets: a steady A/B figure.

Usage::

    .venv/bin/python benchmarks/proxy_instructions.py                 # us per request (noisy)
    .venv/bin/python benchmarks/proxy_instructions.py --instructions  # instructions per request
    .venv/bin/python benchmarks/proxy_instructions.py --tree /tmp/old --instructions  # another checkout
    .venv/bin/python benchmarks/proxy_instructions.py --tracing 1 --instructions      # spans at 1%
    .venv/bin/python benchmarks/proxy_instructions.py --tracing 1 --access-log --instructions  # as shipped
    .venv/bin/python benchmarks/proxy_instructions.py --telemetry off --instructions  # no telemetry at all
    .venv/bin/python benchmarks/proxy_instructions.py --telemetry-cost   # the issue's two telemetry ratios

One request goes through the real listener (``DownstreamConnection`` parsing the bytes wrk
sends), the real outbound filter chain for the realistic benchmark snapshot
(``proxybench/snapshots.py``), the real upstream pool and the response framing. Only the
transports are fake: the downstream one records what is written, the upstream one answers
every request with nginx's 100-byte response on the next loop turn. So the figure is the
Python (and asyncio/uvloop) work of the request path, without the kernel.

``--tracing off|PERCENT``: ``off`` (default) runs the chain as a sidecar without a trace
collector (propagation only, nothing sampled); ``PERCENT`` gives the snapshot that sampling rate
and the listener a span recorder, whose buffer is turned into the JSON batch a sidecar ships
every 1,000 requests (the socket write itself is left out), so the figure includes recording
and encoding the sampled spans.

``--access-log``: the chain gets the access-log filter and a sink writing to a temporary file, as
``meshkit up`` ships every sidecar (``--tracing 1 --access-log`` is the shipped outbound chain;
mTLS is the transport's work, in C, and outside this figure).

``--telemetry off``: the chain without any telemetry filter (``metrics`` or ``tracing``: with only
that one, for the breakdown): no tracing filter (no ``x-request-id``,
no trace headers), no metrics, no access log; the rest of the chain (local reply, the gateway's JWT
and authorization checks, the route and its filters) unchanged. Against ``--tracing 1
--access-log`` it is what telemetry as shipped costs a request (the issue's "Telemetry on costs
<= 15% CPU per request against telemetry off"). ``--telemetry-cost`` counts the four chains with
valgrind and prints both of the issue's ratios: telemetry as shipped against off, and tracing at
1% against tracing off (the rest as shipped, access log and metrics on).

``--instructions`` runs the harness twice under ``valgrind --tool=cachegrind --cache-sim=no``
(500 and 3,500 requests) and prints the difference per request: deterministic to ~10
instructions, so a change of 0.3% shows, which end-to-end runs on a shared machine never do
(see benchmarks/README.md, "History: the sidecar's performance work"). Needs ``valgrind``
(Debian package). Without it, the best of 7 x 20,000 requests by ``time.process_time`` is
printed (only for big differences).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 03:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100
)
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"  # what wrk sends (proxy_overhead.py)


class FakeTransport:
    """The bits of ``asyncio.Transport`` the listener and the upstream pool use."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write
        self.closing = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def telemetry_free_filters(metrics: Any, keep: str = "") -> list[Any]:
    """``pipeline.outbound_filters`` without its telemetry filters (tracing, access log, metrics), or
    with only one of them (``keep``: ``tracing``, propagation only, or ``metrics``)."""
    from meshkit.proxy.pipeline import outbound_filters  # noqa: PLC0415

    return [f for f in outbound_filters(metrics, None)
            if f.__module__ not in TELEMETRY_MODULES or f.__module__ == f"meshkit.proxy.filters.{keep}"]


def no_telemetry_chain(terminal: Any, metrics: Any, keep: str = "") -> Any:
    """The outbound chain built from ``telemetry_free_filters`` and the route step, as pipeline does."""
    from meshkit.proxy.chain import build_chain  # noqa: PLC0415
    from meshkit.proxy.filters.route import route_step  # noqa: PLC0415
    from meshkit.proxy.pipeline import outbound_route_chains  # noqa: PLC0415

    return build_chain(telemetry_free_filters(metrics, keep), route_step(outbound_route_chains(terminal)))


TELEMETRY_MODULES = frozenset({
    "meshkit.proxy.filters.tracing", "meshkit.proxy.filters.metrics", "meshkit.proxy.filters.accesslog",
})


async def drive(requests: int, rounds: int, tracing: str = "off", access_log: str | None = None,
                telemetry: str = "on") -> float:
    """Serve ``rounds`` x ``requests`` requests; the best round's process time per request (us)."""
    from proxybench import snapshots  # noqa: PLC0415 (sys.path is set in main)

    from meshkit.proxy.listener import DownstreamConnection, Listener  # noqa: PLC0415
    from meshkit.proxy.pipeline import build_outbound  # noqa: PLC0415
    from meshkit.proxy.stats import IstioMetrics  # noqa: PLC0415
    from meshkit.proxy.upstream import Upstream, UpstreamConnection  # noqa: PLC0415
    from meshkit.proxy.xds import ConfigState  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    port = 9  # never connected to: the pool holds one fake connection for it
    state = ConfigState()
    snapshot = snapshots.client_snapshot(snapshots.Destination(port=port, has_sidecar=False), port)
    recorder: Any = None
    if tracing != "off":
        from meshkit.proxy.spans import SpanRecorder  # noqa: PLC0415 (absent from older trees)

        snapshot["tracing"] = {"sampling": float(tracing)}
        recorder = SpanRecorder("bench-0.default")
    reason = state.apply(snapshot)
    if reason is not None:
        raise SystemExit(f"benchmark snapshot rejected: {reason}")
    sink: Any = None
    if access_log is not None:
        from meshkit.proxy.filters.accesslog import AccessLogSink  # noqa: PLC0415

        sink = AccessLogSink(access_log)
    upstream = Upstream()
    if telemetry != "on":
        chain = no_telemetry_chain(upstream.send, IstioMetrics(), "" if telemetry == "off" else telemetry)
    elif recorder is not None:
        chain = build_outbound(upstream.send, IstioMetrics(), sink, recorder)
    else:
        chain = build_outbound(upstream.send, IstioMetrics(), sink)
    listener = Listener("outbound", chain, state)
    pooled = UpstreamConnection(upstream, ("127.0.0.1", port, False))
    answer = FakeTransport(lambda _data: loop.call_soon(pooled.data_received, UPSTREAM_RESPONSE))
    pooled.connection_made(answer)  # type: ignore[arg-type]
    upstream._all.add(pooled)
    upstream._release(pooled)

    answered: list[asyncio.Future[bytes] | None] = [None]

    def on_downstream_write(data: bytes) -> None:
        future = answered[0]
        if future is not None and not future.done():
            future.set_result(data)

    downstream = DownstreamConnection(listener)
    downstream.connection_made(FakeTransport(on_downstream_write))  # type: ignore[arg-type]

    async def one() -> bytes:
        answered[0] = loop.create_future()
        downstream.data_received(REQUEST)
        return await answered[0]

    first = await one()
    if not first.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected response: {first[:200]!r}")
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for i in range(requests):
            await one()
            if recorder is not None and i % 1000 == 999:
                json.dumps(recorder.take(), separators=(",", ":")).encode()  # what ship() posts
        best = min(best, (time.process_time() - started) / requests * 1e6)
    if sink is not None:
        sink.close()
    if recorder is not None:
        print(f"spans recorded: {recorder.recorded} of {rounds * requests + 1} requests", file=sys.stderr)
    return best


def run_inline(
    tree: Path, requests: int, rounds: int, tracing: str = "off", access_log: bool = False,
    *, telemetry: str = "on",
) -> float:
    sys.path[:0] = [str(tree), str(HERE)]  # ahead of the editable install: measure ``tree``
    with tempfile.TemporaryDirectory(prefix="meshkit-instr-") as scratch:
        log = str(Path(scratch) / "access.log") if access_log else None
        try:
            import uvloop  # noqa: PLC0415

            return uvloop.run(drive(requests, rounds, tracing, log, telemetry))
        except ImportError:
            return asyncio.run(drive(requests, rounds, tracing, log, telemetry))


def count_instructions(
    tree: Path, tracing: str = "off", access_log: bool = False, *, telemetry: str = "on"
) -> int:
    """Instructions per request: cachegrind totals of two run lengths, differenced."""
    totals = []
    for requests in (500, 3500):
        argv = [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            sys.executable, __file__, "--tree", str(tree), "--requests", str(requests), "--rounds", "1",
            *(["--tracing", tracing] if tracing != "off" else []),
            *(["--access-log"] if access_log else []),
            *([] if telemetry == "on" else ["--telemetry", telemetry]),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=600)
        match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or match is None:
            raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
        totals.append(int(match.group(1).replace(",", "")))
    return (totals[1] - totals[0]) // 3000


def telemetry_cost(tree: Path) -> int:
    """The issue's two telemetry figures, from instruction counts (the Python work per request)."""
    off = count_instructions(tree, telemetry="off")
    no_tracing = count_instructions(tree, "off", access_log=True)
    shipped = count_instructions(tree, "1", access_log=True)
    print(f"{tree}: instructions per outbound request")
    print(f"  telemetry off (no tracing, metrics or access-log filter)  {off}")
    print(f"  as shipped, tracing off (propagation only)               {no_tracing}")
    print(f"  as shipped (tracing 1%, metrics, access log)             {shipped}")
    print(f"telemetry as shipped vs off: {100 * (shipped / off - 1):+.1f}% (target <= +15%)")
    print(f"tracing 1% vs tracing off:   {100 * (shipped / no_tracing - 1):+.1f}% (target <= +5%)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="checkout whose meshkit/ to measure")
    parser.add_argument("--instructions", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--tracing", default="off", metavar="off|PERCENT",
                        help="off (no collector), or a sampling percentage with spans recorded and encoded")
    parser.add_argument("--access-log", action="store_true",
                        help="with the access-log filter writing to a temporary file (as meshkit up ships)")
    parser.add_argument("--telemetry", choices=["on", "off", "metrics", "tracing"], default="on",
                        help="off: the chain without its tracing, metrics and access-log filters; "
                        "metrics / tracing: with only that one of them")
    parser.add_argument("--telemetry-cost", action="store_true",
                        help="count four chains with valgrind: telemetry shipped vs off, tracing 1%% vs off")
    parser.add_argument("--requests", type=int, default=20000, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tree = args.tree.resolve()
    if not (tree / "meshkit" / "proxy").is_dir():
        parser.error(f"--tree {tree}: no meshkit/proxy in it")
    if args.tracing != "off":
        try:
            ok = 0.0 <= float(args.tracing) <= 100.0
        except ValueError:
            ok = False
        if not ok:
            parser.error(f"--tracing {args.tracing}: expected off or a percentage from 0 to 100")
    telemetry = args.telemetry
    if telemetry != "on" and (args.tracing != "off" or args.access_log):
        parser.error(f"--telemetry {telemetry} has no span recorder and no access log: "
                     "drop --tracing and --access-log")
    if args.telemetry_cost:
        if shutil.which("valgrind") is None:
            print("valgrind is missing: apt-get install -y valgrind", file=sys.stderr)
            return 2
        return telemetry_cost(tree)
    label = (", access log on" if args.access_log else "") + (
        "" if telemetry == "on" else f", telemetry {telemetry}")
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("valgrind is missing: apt-get install -y valgrind", file=sys.stderr)
            return 2
        count = count_instructions(tree, args.tracing, args.access_log, telemetry=telemetry)
        print(f"{tree} (tracing {args.tracing}{label}): {count} instructions per request")
        return 0
    micros = run_inline(tree, args.requests, args.rounds, args.tracing, args.access_log, telemetry=telemetry)
    print(f"{tree} (tracing {args.tracing}{label}): {micros:.2f} us per request "
          f"(best of {args.rounds} x {args.requests}, process time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
