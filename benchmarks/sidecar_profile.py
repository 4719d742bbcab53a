"""Where a real sidecar's CPU goes at Istio's load point: CPU per request, and perf's split by library.

Usage: ``.venv/bin/python benchmarks/sidecar_profile.py [--traffic 1000x16] [--seconds 8] [--py-spy PATH]``

Starts the mesh as shipped (``proxybench/shipped.py``: httpbin and the clients, mutual TLS, access
logs and telemetry on), sends open-loop traffic through sleep's sidecar -(mTLS)-> httpbin's sidecar
-> httpbin (``proxybench/background_load.py``), and while it flows records each sidecar with
``perf record -e cpu-clock`` (Debian's ``linux-perf``; software clock, so it works without hardware
counters) and, if given, ``py-spy record`` (PyPI; not a dependency). It prints per sidecar the CPU
time per request (``/proc``), the share of each shared object in perf's samples (the Python
interpreter, the kernel, uvloop, OpenSSL, httptools...) and perf's top symbols, and with py-spy the
Python lines with the most samples. ``proxy_instructions.py`` counts only the Python request path in
process; this shows what that path is of the whole.

Bounded: the traffic runs at most ``--seconds`` + 30 s; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from proxybench.background_load import BackgroundLoad
from proxybench.openloop import Point
from proxybench.processes import cpu_seconds
from proxybench.shipped import HOST, PATH, outbound_port, start_mesh

SIDECARS = {"sleep (outbound)": "sleep-v1-0", "httpbin (inbound)": "httpbin-v1-0"}


def perf_shares(data: Path, sort: str, top: int) -> list[str]:
    """perf report's lines for ``sort`` (``dso`` or ``dso,symbol``), self time, ``top`` of them."""
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", sort, "--no-children", "--stdio",
                             "-g", "none"], capture_output=True, text=True, check=False, timeout=120)
    lines = [line.rstrip() for line in report.stdout.splitlines() if "%" in line and not line.startswith("#")]
    return [" ".join(word for word in line.split() if word != "-") for line in lines[:top]]


def spy_lines(raw: Path, top: int) -> list[str]:
    """py-spy's raw (collapsed) stacks: the innermost frames with the most samples."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.split(";")[-1]] += int(count)
            total += int(count)
    return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)] if total else []


async def profile(point: Point, seconds: float, py_spy: str | None, workdir: Path) -> int:
    mesh, workloads = await asyncio.to_thread(start_mesh, workdir / "mesh")
    try:
        pids = {label: workloads[name]["sidecar_pid"] for label, name in SIDECARS.items()}
        load = BackgroundLoad(Point(point.rate, point.connections, seconds + 30),
                              ("127.0.0.1", outbound_port(workloads["sleep-v1-0"])), PATH, HOST)
        await load.start()
        try:
            await asyncio.sleep(2)  # connections open, pools warm
            before = {label: cpu_seconds([pid]) for label, pid in pids.items()}
            recorders = []
            for index, pid in enumerate(pids.values()):
                recorders.append(await asyncio.create_subprocess_exec(
                    "perf", "record", "-q", "-e", "cpu-clock", "-F", "2000",
                    "-o", str(workdir / f"perf{index}"), "-p", str(pid), "--", "sleep", f"{seconds:g}",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if py_spy:
                    recorders.append(await asyncio.create_subprocess_exec(
                        py_spy, "record", "--nonblocking", "-r", "500", "-d", f"{seconds:g}", "-f", "raw",
                        "-o", str(workdir / f"spy{index}"), "-p", str(pid),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(recorder.wait() for recorder in recorders))
            elapsed = asyncio.get_running_loop().time() - started
            after = {label: cpu_seconds([pid]) for label, pid in pids.items()}
        finally:
            served = await load.stop()
    finally:
        await asyncio.to_thread(mesh.down)
    requests = served["achieved_rps"] * elapsed
    print(f"traffic: {served['achieved_rps']} req/s of {point.rate:g} over {point.connections} connections, "
          f"{served['errors']} errors, {served['non_2xx']} non-2xx; 1-min load {os.getloadavg()[0]:.2f}")
    for index, label in enumerate(pids):
        print(f"\n== {label}: {(after[label] - before[label]) / requests * 1e6:.0f} us of CPU per request")
        print("  by shared object (perf, self time):")
        print("\n".join(f"    {line}" for line in perf_shares(workdir / f"perf{index}", "dso", 10)))
        print("  top symbols:")
        print("\n".join(f"    {line}" for line in perf_shares(workdir / f"perf{index}", "dso,symbol", 12)))
        if py_spy and (workdir / f"spy{index}").exists():
            print("  Python lines with the most samples (py-spy; a line's time includes the C it calls):")
            print("\n".join(f"    {line}" for line in spy_lines(workdir / f"spy{index}", 12)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--traffic", default="1000x16", metavar="RATExCONNECTIONS")
    parser.add_argument("--seconds", type=float, default=8.0, help="recorded seconds (1..60)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy's path (optional)")
    args = parser.parse_args(argv)
    rate, _, connections = args.traffic.partition("x")
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds: 1..60")
    if shutil.which("perf") is None:
        parser.error("needs perf (Debian: apt-get install linux-perf)")
    try:
        point = Point(float(rate), int(connections), args.seconds)
    except ValueError:
        parser.error(f"--traffic: expected RATExCONNECTIONS like 1000x16, got {args.traffic!r}")
    with tempfile.TemporaryDirectory(prefix="meshkit-sidecar-profile-") as workdir:
        return asyncio.run(profile(point, args.seconds, args.py_spy, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
