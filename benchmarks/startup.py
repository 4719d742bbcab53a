"""How fast does `meshkit up` bring Bookinfo up, and how much memory does the mesh take?

Runs a cold `LocalMesh.up()` (fresh state dir each round, so the CA, the store and the registry
all start empty) several times, and for each round records:

- seconds from the call to "every app answers and every proxy ACKed the latest snapshot",
  plus the seconds to the first 200 from the ingress's ``/productpage``;
- the memory of every process of the mesh: RSS summed (what the issue's 500 MiB budget counts;
  it counts shared library pages once per process) and PSS summed (shared pages divided among
  the processes that share them: the memory the mesh really takes from the machine);
- the same per process kind (control plane, sidecars including the ingress gateway, apps):
  count, RSS and PSS summed, and how many of them have ``cryptography`` mapped (only the
  control plane should: sidecars make their keys in a short-lived helper process).

Usage: ``.venv/bin/python benchmarks/startup.py [--rounds 5] [--app bookinfo] [--out FILE]``.
Prints a table and writes JSON (default benchmarks/results/startup.json). Bounded: at most
20 rounds, each with a 60 s start-up limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from meshkit.runtime.local import LocalMesh
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def maps_cryptography(pid: int) -> bool:
    try:
        return "/cryptography/" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def kind_of(argv: tuple[str, ...]) -> str:
    """control, sidecar (the ingress gateway too) or app, from the process's ``-m`` module."""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if module.startswith("meshkit.proxy"):
        return "sidecar"
    if module.startswith("meshkit.apps"):
        return "app"
    return "control" if "control" in argv else "other"


def first_ok(url: str, limit: float = 30.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - began
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} never answered 200 within {limit}s")


def one_round(apps: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="meshkit-startup-") as home:
        mesh = LocalMesh(StateDir.open(home))
        base = next(free_bases(20), None)
        if base is None:
            raise RuntimeError("no free block of ports below the ephemeral range")
        began = time.monotonic()
        try:
            status = mesh.up(apps, base_port=base, timeout=60.0)
            ready = time.monotonic() - began
            page = ready + first_ok(f"{status['ingress']}/productpage")
            rec = mesh.record()
            assert rec is not None
            pids = [p.pid for p in rec.processes.values()]
            rss_by_name = mesh.memory()
            rss = sum(rss_by_name.values())
            pss = sum(pss_bytes(pid) for pid in pids)
            result = {"ready_s": ready, "first_page_s": page, "rss_mib": rss / 2**20, "pss_mib": pss / 2**20,
                      "processes": len(pids)}
            for name, proc in rec.processes.items():
                kind = kind_of(proc.argv)
                for key, value in (("n", 1.0), ("rss_mib", rss_by_name.get(name, 0) / 2**20),
                                   ("pss_mib", pss_bytes(proc.pid) / 2**20),
                                   ("with_cryptography", float(maps_cryptography(proc.pid)))):
                    result[f"{kind}.{key}"] = result.get(f"{kind}.{key}", 0.0) + value
            return result
        finally:
            mesh.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--app", action="append", dest="apps")
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args(argv)
    rounds = max(1, min(args.rounds, 20))
    apps = args.apps or ["bookinfo"]
    results = []
    for i in range(rounds):
        r = one_round(apps)
        results.append(r)
        print(f"round {i + 1}: ready {r['ready_s']:.2f}s, first page {r['first_page_s']:.2f}s, "
              f"RSS {r['rss_mib']:.0f} MiB, PSS {r['pss_mib']:.0f} MiB, {r['processes']:.0f} processes",
              flush=True)
    summary = {k: statistics.median(r.get(k, 0.0) for r in results) for k in results[0]}
    verdict = {"ready_le_5s": summary["ready_s"] <= 5.0, "rss_le_500mib": summary["rss_mib"] <= 500.0}
    print(f"median: ready {summary['ready_s']:.2f}s (target <= 5 s), RSS {summary['rss_mib']:.0f} MiB "
          f"(target <= 500), PSS {summary['pss_mib']:.0f} MiB")
    for kind in ("control", "sidecar", "app", "other"):
        n = summary.get(f"{kind}.n", 0.0)
        if n:
            rss, pss = summary[f"{kind}.rss_mib"], summary[f"{kind}.pss_mib"]
            crypto = summary[f"{kind}.with_cryptography"]
            print(f"  {kind:8} x{n:.0f}: RSS {rss:.0f} MiB ({rss / n:.1f} each), PSS {pss:.0f} MiB "
                  f"({pss / n:.1f} each), {crypto:.0f} with cryptography loaded")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"apps": apps, "rounds": results, "median": summary, "verdict": verdict},
                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
