"""How long an apply takes for 10 KB / 100 KB / 1 MB documents, and whether the control plane stays
responsive meanwhile and under hostile uploads.

One `meshkit control` (with its CA) in a temporary MESHKIT_HOME. For each size, a DestinationRule
plus one VirtualService of that size is applied as JSON (what the CLI and notebooks send) and then
re-applied with every route changed (the case whose diff took minutes before), and changed back
(by then a large document goes to the worker process the first one started). CSRs
(``POST /api/v1/ca/sign``) are signed back to back and timed for ``IDLE_SECONDS`` with nothing
else going on ("idle"), then during each change: from sending the apply until the proxy's stream
got the new snapshot ("during"); the stream times that push after the apply answered ("its
push") and from sending the apply ("apply to push": what a user waits for until every proxy has
the change). The changes of one size follow each other at once, or ``--gap`` seconds apart (a
learner reads an answer before the next change; the control plane's worker process learns the
committed config meanwhile). Then hostile YAML documents under 1 MB are sent: each must get a 4xx,
and its time is reported. Output: a table, a verdict per target, and
``benchmarks/results/config_bounds.json``.

    .venv/bin/python benchmarks/config_bounds.py [--sizes 10000,100000,1000000] [--gap S] [--out FILE]

Targets (issue 15): apply of a 1 MB document <= 1 s; any hostile YAML under 1 MB answered in
<= 1 s with a 4xx; CSR and push latency unaffected while it runs. "Unaffected", as checked here
for the largest size: the slowest CSR during a change <= max(50 ms, 2x the slowest idle one), the
median during <= max(2x the idle median, idle median + 5 ms), and the new snapshot pushed <= 100 ms
after the apply answered. A 2-core machine shared with other work moves these figures: run it
several times and read them with the load average it prints. The CPU the control plane and its
worker process used until the answer and until the push is printed too (from /proc; the CSRs
signed meanwhile count in it): other work on the machine stretches times, not CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.push_latency import ControlPlaneProcess, percentile  # noqa: E402
from meshkit.control.auth import ensure_admin_token  # noqa: E402
from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, spiffe_identity  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "config_bounds.json"
IDLE_SECONDS = 3.0
APPLY_MAX_S, CSR_MAX_MS, PUSH_MAX_MS, HOSTILE_MAX_S = 1.0, 50.0, 100.0, 1.0
IDENTITY = spiffe_identity("default", "bookinfo-reviews")
DESTINATION_RULE = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                    "metadata": {"name": "reviews"},
                    "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                            {"name": "v2", "labels": {"version": "v2"}}]}}


def document(size: int, subset: str) -> bytes:
    """A List of the DestinationRule and one VirtualService, ``size`` bytes of JSON or just over."""
    routes: list[dict[str, Any]] = []
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "big"},
          "spec": {"hosts": ["reviews"], "http": routes}}
    route_size = len(json.dumps(_route(0, subset))) + 2
    routes.extend(_route(n, subset) for n in range(max(1, (size - 600) // route_size)))
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [DESTINATION_RULE, vs]}).encode()


def _route(n: int, subset: str) -> dict[str, Any]:
    return {"match": [{"uri": {"prefix": f"/route-{n:07d}/"}}],
            "route": [{"destination": {"host": "reviews", "subset": subset}}]}


def hostile() -> dict[str, str]:
    """YAML documents under 1 MB built to cost a parser time or memory."""
    bomb = "\n".join([f'a0: &a0 ["{"lol" * 3}"' + ', "lol"' * 8 + "]"]
                     + [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 9)]) + "\n"
    wide_bomb = "a: &a [" + ", ".join(["x"] * 1000) + "]\n" + "".join(f"k{n}: *a\n" for n in range(90_000))
    return {
        "alias bomb (647 B, 9**9 nodes)": bomb,
        "alias fan-out (~1 MB, 90k aliases)": wide_bomb[: 1000 * 1000],
        "deep flow nesting (~1 MB)": "[" * 999_000,
        "deep block nesting (~1 MB)": "".join("  " * n + f"k{n}:\n" for n in range(700)) * 1,
        "1 MB of one scalar": "kind: " + "x" * 999_000,
        "100k tiny documents (~1 MB)": "---\na: 1\n" * 100_000,
    }


def csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit")]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(IDENTITY)]),
                              critical=False)
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


async def probe_csr(session: aiohttp.ClientSession, url: str, token: str, stop: asyncio.Event,
                    latencies: list[float]) -> None:
    """Sign CSRs back to back until ``stop``; each round trip's latency in ms."""
    while not stop.is_set():
        body = {"csr": csr(), "token": token}
        start = time.perf_counter()
        async with session.post(f"{url}/api/v1/ca/sign", json=body) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"ca/sign answered {response.status}")
        latencies.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.01)


class Snapshots:
    """Whole SSE snapshot events off a stream (a 1 MB config makes one line of over 1 MB), read in
    linear time: each chunk is appended once and searched once (copying and searching the whole
    buffer per chunk took this client ~100 ms of its own for a 3.9 MB event under load)."""

    def __init__(self, stream: aiohttp.ClientResponse) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.searched = 0  # the end of the event is not before this offset

    async def next(self, within: float = 30.0) -> int | None:
        """Wait for the next complete ``snapshot`` event; its size in bytes (None: none came)."""
        deadline = time.monotonic() + within
        while True:
            start = self.buffer.find(b"data: ")
            end = self.buffer.find(b"\n\n", max(start, self.searched - 1)) if start >= 0 else -1
            if end >= 0:
                size = end - start
                del self.buffer[:end + 2]
                self.searched = 0
                return size
            self.searched = len(self.buffer)
            try:
                chunk = await asyncio.wait_for(self.stream.content.readany(), deadline - time.monotonic())
            except TimeoutError:
                return None
            if not chunk:
                raise RuntimeError("the stream ended")
            self.buffer += chunk


def _latencies(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5), 1) if values else None,
            "max_ms": round(max(values), 1) if values else None}


async def measure_idle(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    """CSR latency with nothing else going on, for ``IDLE_SECONDS``."""
    stop = asyncio.Event()
    csr_ms: list[float] = []
    probe = asyncio.ensure_future(probe_csr(session, url, token, stop, csr_ms))
    await asyncio.sleep(IDLE_SECONDS)
    stop.set()
    await probe
    return _latencies(csr_ms)


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid`` and by its child processes that are
    still running (the control plane's worker), from /proc; (0, 0) where it cannot be read."""
    if pid is None:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def of(one: int | str) -> float:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    try:
        children = [c for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        children = []
    return of(pid), sum(of(child) for child in children)


async def measure_change(session: aiohttp.ClientSession, url: str, admin: dict[str, str], token: str,
                         body: bytes, *, snapshots: Snapshots, pid: int | None = None) -> dict[str, Any]:
    """One apply: its time, its push after the answer, CSR latency from sending it until that push,
    and the CPU the control plane (``pid``) and its worker process used meanwhile (a busy machine
    stretches the times, not the CPU)."""
    stop = asyncio.Event()
    csr_ms: list[float] = []
    probe = asyncio.ensure_future(probe_csr(session, url, token, stop, csr_ms))
    cpu_start = cpu_seconds(pid)
    start = time.perf_counter()
    async with session.post(f"{url}/api/v1/apply", data=body,
                            headers={**admin, "Content-Type": "application/json"}) as response:
        answer = await response.json()
    answered = time.perf_counter()
    cpu_answered = cpu_seconds(pid)
    in_apply = len(csr_ms)
    snapshot_bytes = await snapshots.next(10.0) if response.status == 200 else None  # the apply's own push
    pushed = time.perf_counter()
    cpu_pushed = cpu_seconds(pid)
    stop.set()
    await probe
    if response.status != 200:
        raise RuntimeError(f"apply answered {response.status}: {str(answer)[:300]}")
    during = _latencies(csr_ms)
    return {"bytes": len(body), "apply_s": round(answered - start, 3), "revision": answer["revision"],
            "snapshot_bytes": snapshot_bytes, "its_push_ms": round((pushed - answered) * 1000, 1),
            # what a user waits for: from sending the apply until the proxy has the new snapshot
            "end_to_end_s": round(pushed - start, 3),
            "csr_during_apply": in_apply, "csr_ms_p50_apply": _latencies(csr_ms[:in_apply])["p50_ms"],
            "csr_ms_max_apply": _latencies(csr_ms[:in_apply])["max_ms"],
            "csr_during_change": during["n"], "csr_ms_p50": during["p50_ms"], "csr_ms_max": during["max_ms"],
            # CPU ms until the answer and from the answer to the push: control plane, worker process
            "cpu_ms_apply": [round((cpu_answered[i] - cpu_start[i]) * 1000) for i in (0, 1)],
            "cpu_ms_push": [round((cpu_pushed[i] - cpu_answered[i]) * 1000) for i in (0, 1)]}


def verdicts(results: dict[str, Any], largest: int) -> list[dict[str, Any]]:
    """Met/missed per target, for the largest document size (see the module docstring)."""
    rows = [r for r in results["applies"] if r["bytes"] >= largest * 0.9]
    idle = results["idle"].get(str(largest)) or {}
    out: list[dict[str, Any]] = []

    def add(target: str, worst: float | None, bound: float, unit: str) -> None:
        met = worst is not None and worst <= bound
        out.append({"target": target, "worst": worst, "bound": round(bound, 1), "unit": unit, "met": met})

    if rows:
        add(f"apply of {largest // 1000} KB <= {APPLY_MAX_S:g} s", max(r["apply_s"] for r in rows),
            APPLY_MAX_S, "s")
        idle_max, idle_p50 = idle.get("max_ms") or 0.0, idle.get("p50_ms") or 0.0
        add(f"CSR max during a change <= max({CSR_MAX_MS:g} ms, 2x idle max {idle_max} ms)",
            max(r["csr_ms_max"] or 0.0 for r in rows), max(CSR_MAX_MS, 2 * idle_max), "ms")
        add(f"CSR p50 during a change <= max(2x, +5 ms) idle p50 {idle_p50} ms",
            max(r["csr_ms_p50"] or 0.0 for r in rows), max(2 * idle_p50, idle_p50 + 5), "ms")
        add(f"its push <= {PUSH_MAX_MS:g} ms after the apply answered", max(r["its_push_ms"] for r in rows),
            PUSH_MAX_MS, "ms")
    if results["hostile"]:
        slowest = max(r["seconds"] for r in results["hostile"])
        add(f"hostile YAML answered <= {HOSTILE_MAX_S:g} s", slowest, HOSTILE_MAX_S, "s")
        out.append({"target": "hostile YAML answered with a 4xx", "met": all(
            400 <= r["status"] < 500 for r in results["hostile"])})
    return out


def _worker_rss(plane: ControlPlaneProcess) -> float | None:
    """RSS in MiB of the control plane's child processes (its worker for large documents), if any."""
    pid = plane.process.pid if plane.process is not None else None
    if pid is None:
        return None
    total, found = 0, False
    try:
        children = [c for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        for child in children:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total, found = total + int(line.split()[1]), True
    except OSError:
        return None
    return round(total / 1024, 1) if found else None


async def run(sizes: list[int], gap: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshkit-bounds-") as home:
        control_dir = Path(home) / "control"
        admin = {"Authorization": f"Bearer {ensure_admin_token(control_dir)}"}
        token = BootstrapTokens.open(control_dir / "ca" / TOKENS_FILE).issue_token(IDENTITY)
        plane = ControlPlaneProcess(home, ca=True)
        results: dict[str, Any] = {"idle": {}, "applies": [], "hostile": []}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            try:
                await plane.start()
                url = plane.url
                stream = await session.get(f"{url}/api/v1/xds/stream", params={"id": "reviews-v1-0.default"},
                                           headers=admin, timeout=aiohttp.ClientTimeout(total=None))
                snapshots = Snapshots(stream)
                await snapshots.next()  # the first snapshot
                for size in sizes:
                    idle = results["idle"][str(size)] = await measure_idle(session, url, token)
                    print(f"{size // 1000} KB: idle CSRs {idle['n']:>4} (p50 {idle['p50_ms']} ms, "
                          f"max {idle['max_ms']} ms)   load {os.getloadavg()[0]:.2f}", flush=True)
                    for round_number, subset in enumerate(("v1", "v2", "v1")):
                        if round_number:
                            await asyncio.sleep(gap)  # a learner reads the answer before the next change
                        body = document(size, subset)
                        row = await measure_change(session, url, admin, token, body, snapshots=snapshots,
                                                   pid=plane.process.pid if plane.process else None)
                        row["worker_rss_mib"] = _worker_rss(plane)
                        change = ("create", "every route changed", "changed back")[round_number]
                        row["case"] = f"{size // 1000} KB, {change}"
                        results["applies"].append(row)
                        print(f"{row['case']:<30} apply {row['apply_s']:>6.3f} s   its push "
                              f"+{row['its_push_ms']:>6.1f} ms   apply to push {row['end_to_end_s']:>6.3f} s"
                              f"   CSRs during change "
                              f"{row['csr_during_change']:>4} "
                              f"(p50 {row['csr_ms_p50']} ms, max {row['csr_ms_max']} ms; idle: p50 "
                              f"{idle['p50_ms']} ms, max {idle['max_ms']} ms)   worker RSS "
                              f"{row['worker_rss_mib']} MiB   CPU ms (control plane/worker) to the answer "
                              f"{'/'.join(map(str, row['cpu_ms_apply']))}, to the push "
                              f"{'/'.join(map(str, row['cpu_ms_push']))}", flush=True)
                for name, text in hostile().items():
                    stop = asyncio.Event()
                    csr_ms: list[float] = []
                    probe = asyncio.ensure_future(probe_csr(session, url, token, stop, csr_ms))
                    start = time.perf_counter()
                    yaml_admin = {**admin, "Content-Type": "application/yaml"}
                    async with session.post(f"{url}/api/v1/apply", data=text.encode(),
                                            headers=yaml_admin) as response:
                        answer = await response.text()
                    seconds = time.perf_counter() - start
                    stop.set()
                    await probe
                    row = {"case": name, "bytes": len(text.encode()), "status": response.status,
                           "seconds": round(seconds, 3), "error": answer[:160],
                           "csr_ms_max": round(max(csr_ms), 1) if csr_ms else None}
                    results["hostile"].append(row)
                    print(f"{name:<36} {row['bytes']:>8} B  HTTP {row['status']}  {row['seconds']:>6.3f} s   "
                          f"CSR max {row['csr_ms_max']} ms", flush=True)
                stream.close()
            finally:
                await plane.stop()
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="document sizes in bytes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between the changes of one size (default 0: back to back)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    load_before = os.getloadavg()
    results = asyncio.run(run(sizes, args.gap))
    results["gap_s"] = args.gap
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_before": load_before, "load": os.getloadavg()}
    results["verdicts"] = verdicts(results, max(sizes))
    for verdict in results["verdicts"]:
        worst = f"  (worst {verdict['worst']} {verdict['unit']}, bound {verdict['bound']})" \
            if "worst" in verdict else ""
        print(f"{'met   ' if verdict['met'] else 'MISSED'}  {verdict['target']}{worst}")
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in results['machine']['load'])} ({os.cpu_count()} CPUs)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")
    bad = [r for r in results["hostile"] if not 400 <= r["status"] < 500]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
