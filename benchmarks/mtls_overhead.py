"""What does mutual TLS between two meshkit sidecars cost, next to nginx -> nginx over TLS?

Usage: ``.venv/bin/python benchmarks/mtls_overhead.py [--quick] [--out FILE]``

Same harness as benchmarks/proxy_overhead.py (proxybench: upstream nginx with 100-byte answers,
wrk -t1 at 1 and 16 connections, interleaved rounds, CPU per request from /proc), measuring in
ONE run:

* ``meshkit-mesh``       two sidecars, plaintext between them (outbound A -> inbound B -> upstream)
* ``meshkit-mesh-mtls``  the same two sidecars with mTLS between them (``--tls-dir`` certificates
                         from a throwaway CA: P-256 workload keys, SPIFFE ids, server id checked)
* ``nginx-x2``           two nginx in a row, plaintext
* ``nginx-x2-tls``       two nginx in a row, TLS between them with client certificates
                         (``proxy_ssl`` with verification, keep-alive and session reuse)

It reports each target's added p50 (vs direct) and req/s, and the ratios mTLS/plaintext for both
meshkit and nginx. Everything runs on 127.0.0.1 with free ports in a temporary directory; every
process it starts is stopped, even on errors. Writes JSON (default
benchmarks/results/mtls_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from proxybench import report, session, snapshots
from proxybench.processes import Child, HarnessError, http_get
from proxybench.runner import Plan
from proxybench.targets import (
    Direct,
    MeshkitMesh,
    NginxProxy,
    Stage,
    Target,
    start_sidecar,
)
from proxybench.tlsref import NginxTlsPair, ThrowawayCa
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mtls_overhead.json"
FULL = Plan(rounds=5, seconds=5)
QUICK = Plan(rounds=2, seconds=2)
PAIRS = (("meshkit-mesh-mtls", "meshkit-mesh"), ("nginx-x2-tls", "nginx-x2"),
         ("meshkit-mesh-mtls", "nginx-x2-tls"), ("meshkit-mesh", "nginx-x2"))


# -- meshkit: two sidecars with mTLS ---------------------------------------------------------------


def start_tls_sidecar(stage: Stage, name: str, snapshot: dict[str, Any],
                      tls_dir: Path) -> tuple[Child, dict[str, int]]:
    """``python -m meshkit.proxy --config ... --tls-dir DIR`` on ephemeral ports; waits for /ready."""
    return start_sidecar(stage, name, snapshot, ("--tls-dir", str(tls_dir)))


@dataclass
class MeshkitMeshMtls(Target):
    """The mesh path with mTLS: client sidecar outbound -(mTLS)-> server sidecar inbound -> upstream."""

    sidecar: bool = True

    def start(self, stage: Stage) -> None:
        ca = ThrowawayCa.create()
        server_id, client_id = snapshots.identity("bench-upstream"), snapshots.identity(snapshots.CLIENT)
        dirs = {}
        for role, identity in (("server", server_id), ("client", client_id)):
            dirs[role] = stage.subdir(f"{self.name}-{role}-certs")
            ca.issue(x509.UniformResourceIdentifier(identity), dirs[role], chain="cert-chain.pem",
                     key_file="key.pem", root="root-cert.pem")
        server, server_ports = start_tls_sidecar(
            stage, f"{self.name}-server", snapshots.server_snapshot(stage.upstream_port), dirs["server"])
        self.children.append(server)
        dest = snapshots.Destination(port=server_ports["inbound"], has_sidecar=True)
        tls = {"mode": "ISTIO_MUTUAL", "server_identities": [server_id]}
        client, client_ports = start_tls_sidecar(
            stage, f"{self.name}-client", snapshots.client_snapshot(dest, stage.upstream_port, tls=tls),
            dirs["client"])
        self.children.append(client)
        self.port = client_ports["outbound"]
        self.verify()
        status, body = http_get(client_ports["admin"], "localhost", "/stats")
        if status != 200 or json.loads(body)["upstream"]["cx_mtls_total"] < 1:
            raise HarnessError(f"{self.name}: the client sidecar opened no mTLS connection: {body[:300]!r}")


# -- the run -----------------------------------------------------------------------------------------


def targets() -> list[Target]:
    return [
        Direct("direct", "wrk -> upstream nginx (baseline)"),
        NginxProxy("nginx-x2", "two nginx in a row, plaintext", hops=2),
        NginxTlsPair("nginx-x2-tls", "two nginx in a row, TLS + client certs between them (proxy_ssl)"),
        MeshkitMesh("meshkit-mesh", "two meshkit sidecars, plaintext between them"),
        MeshkitMeshMtls("meshkit-mesh-mtls", "two meshkit sidecars, mTLS between them (--tls-dir)"),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.rounds} rounds x {QUICK.seconds} s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--rounds", type=int, choices=range(1, 61), metavar="1..60")
    parser.add_argument("--seconds", type=int, choices=range(1, 61), metavar="1..60")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    return parser.parse_args(argv)


def render(console: Console, summary: dict[str, Any], ratios: list[dict[str, Any]]) -> None:
    table = Table(title="added p50 (vs direct) at 1 connection, throughput at 16 connections")
    for column in ("target", "added p50 µs @1", "req/s @16", "p99 µs @16", "CPU µs/req @16", "errors"):
        table.add_column(column, justify="right" if column != "target" else "left")
    for name, per in summary.items():
        low, high = per.get(1, {}), per.get(16, {})
        errors = sum(cell["errors"] + cell["non_2xx"] for cell in per.values())
        table.add_row(name, report._fmt(low.get("added_p50_us")), report._fmt(high.get("rps")),
                      report._fmt(high.get("p99_us")), report._fmt(high.get("cpu_us_per_request"), 1),
                      str(errors))
    console.print(table)
    for ratio in ratios:
        console.print(f"{ratio['target']} / {ratio['reference']}: added p50 x{_x(ratio['added_p50_ratio'])}, "
                      f"req/s x{_x(ratio['rps_ratio_16'])}, CPU/req x{_x(ratio['cpu_per_request_ratio_16'])}")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run(args: argparse.Namespace, console: Console) -> int:
    plan = session.chosen_plan(args, FULL, QUICK)
    tools = session.tools_or_none(console, install=not args.no_install)
    if tools is None:
        return 2
    chosen = targets()
    meta: dict[str, Any] = {
        "command": session.command_line(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {"rounds": plan.rounds, "seconds": plan.seconds, "connections": list(plan.connections)},
        "host": session.host_facts(),
        "tools": tools.versions(),
    }
    samples = session.measure_targets(console, chosen, tools, plan, meta,
                                      workdir_prefix="meshkit-mtls-bench-")
    if samples is None:
        return 1
    summary = report.summarize(samples)
    ratios = [found for t, r in PAIRS if (found := report.compare(summary, t, r)) is not None]
    render(console, summary, ratios)
    report.note_busy(console, samples, meta)
    return report.publish(console, {"meta": meta, "summary": summary, "ratios": ratios}, args.out, summary)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return session.main(lambda console: run(args, console))


if __name__ == "__main__":
    sys.exit(main())
