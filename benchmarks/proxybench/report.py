"""Turns samples into medians, ratios against references, pass/fail checks, a table and JSON.

"Added" latency is paired: in every round, a target's p50 minus the direct (no proxy) p50 of the
same round and connection count; the median over rounds is reported. Other ratios are ratios of
medians over rounds, so one noisy round cannot decide a verdict.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .runner import Sample
from .targets import Target

MIB = 1024 * 1024
BASELINE = "direct"
LOW_CONN, HIGH_CONN = 1, 16
# The pairs shown in the ratio table: (target, reference measured in the same run).
COMPARED = [
    ("haproxy", "nginx"), ("meshkit", "nginx"), ("meshkit-mesh", "nginx-x2"), ("meshkit-mesh", "nginx"),
]
RSS_LIMIT_MIB = 30.0

Summary = dict[str, dict[int, dict[str, Any]]]  # target -> connections -> medians and totals


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def summarize(samples: Sequence[Sample]) -> Summary:
    """Per target, per connection count: medians over rounds, totals of errors, worst-case RSS."""
    baseline = {(s.round, s.connections): s.load.p50_us for s in samples if s.target == BASELINE}
    result: Summary = {}
    for sample in samples:
        result.setdefault(sample.target, {}).setdefault(sample.connections, {"_samples": []})
        result[sample.target][sample.connections]["_samples"].append(sample)
    for per_conn in result.values():
        for cell in per_conn.values():
            runs: list[Sample] = cell.pop("_samples")
            added = [r.load.p50_us - baseline[(r.round, r.connections)] for r in runs
                     if (r.round, r.connections) in baseline]
            rss = [r.rss_bytes_per_proxy for r in runs if r.rss_bytes_per_proxy is not None]
            cell.update({
                "rounds": len(runs),
                "p50_us": _median(r.load.p50_us for r in runs),
                "p90_us": _median(r.load.p90_us for r in runs),
                "p99_us": _median(r.load.p99_us for r in runs),
                "added_p50_us": _median(added),
                "rps": _median(r.load.rps for r in runs),
                "cpu_us_per_request": _median(r.cpu_us_per_request for r in runs),
                "rss_mib": _median(None if r.rss_bytes is None else r.rss_bytes / MIB for r in runs),
                "rss_mib_max_per_proxy": max(rss) / MIB if rss else None,
                "requests": sum(r.load.requests for r in runs),
                "errors": sum(r.load.errors for r in runs),
                "non_2xx": sum(r.load.non_2xx for r in runs),
            })
    return result


def compare(summary: Summary, target: str, reference: str) -> dict[str, Any] | None:
    """Ratios target/reference: added p50 at 1 conn; req/s, p99 and CPU per request at 16 conns."""
    if target not in summary or reference not in summary:
        return None
    low_t, low_r = summary[target].get(LOW_CONN, {}), summary[reference].get(LOW_CONN, {})
    high_t, high_r = summary[target].get(HIGH_CONN, {}), summary[reference].get(HIGH_CONN, {})
    return {
        "target": target,
        "reference": reference,
        "added_p50_ratio": _ratio(low_t.get("added_p50_us"), low_r.get("added_p50_us")),
        "rps_ratio_16": _ratio(high_t.get("rps"), high_r.get("rps")),
        "p99_ratio_16": _ratio(high_t.get("p99_us"), high_r.get("p99_us")),
        "cpu_per_request_ratio_16": _ratio(high_t.get("cpu_us_per_request"),
                                           high_r.get("cpu_us_per_request")),
    }


@dataclass(frozen=True)
class Check:
    """One acceptance target: ``value`` compared with ``limit`` (``at_most`` or at least)."""

    name: str
    value: float | None
    limit: float
    at_most: bool

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


def checks(summary: Summary, targets: Sequence[Target]) -> list[Check]:
    """The issue's targets for the meshkit sidecar against nginx (n/a when not measured), plus RSS
    for every sidecar target."""
    single = compare(summary, "meshkit", "nginx") or {}
    found = [
        Check("meshkit added p50 @1 / nginx added p50 @1", single.get("added_p50_ratio"), 2.0, True),
        Check("meshkit req/s @16 / nginx req/s @16", single.get("rps_ratio_16"), 0.6, False),
        Check("meshkit p99 @16 / nginx p99 @16", single.get("p99_ratio_16"), 2.0, True),
    ]
    sidecars = [target.name for target in targets if target.sidecar] or ["meshkit"]
    for name in sidecars:
        rss = [cell["rss_mib_max_per_proxy"] for cell in summary.get(name, {}).values()
               if cell["rss_mib_max_per_proxy"] is not None]
        found.append(Check(f"{name} sidecar RSS MiB (largest seen)", max(rss) if rss else None,
                           RSS_LIMIT_MIB, True))
    return found


def comparisons(summary: Summary) -> list[dict[str, Any]]:
    pairs = list(COMPARED)
    for name in summary:  # --concurrency N targets: against nginx and against the one-process sidecar
        if name.startswith("meshkit-mesh-c"):
            pairs += [(name, "nginx-x2"), (name, "meshkit-mesh")]
        elif name.startswith("meshkit-c"):
            pairs += [(name, "nginx"), (name, "meshkit")]
    return [found for t, r in pairs if (found := compare(summary, t, r)) is not None]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(console: Console, summary: Summary,
           ratios: list[dict[str, Any]], verdicts: list[Check]) -> None:
    table = Table(title="Proxy overhead (medians over rounds; latency in µs)")
    for column in ("target", "p50 @1", "added p50 @1", "p99 @1", "req/s @1", "p50 @16", "p99 @16",
                   "req/s @16", "CPU µs/req @16", "RSS MiB", "errors"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for name, per_conn in summary.items():
        low, high = per_conn.get(LOW_CONN, {}), per_conn.get(HIGH_CONN, {})
        errors = sum(cell["errors"] + cell["non_2xx"] for cell in per_conn.values())
        rss = _median(cell["rss_mib"] for cell in per_conn.values())
        table.add_row(name, _fmt(low.get("p50_us")), _fmt(low.get("added_p50_us")),
                      _fmt(low.get("p99_us")), _fmt(low.get("rps")), _fmt(high.get("p50_us")),
                      _fmt(high.get("p99_us")), _fmt(high.get("rps")),
                      _fmt(high.get("cpu_us_per_request"), 1), _fmt(rss, 1), str(errors))
    console.print(table)
    ratio_table = Table(title="Ratios (target / reference, same run)")
    for column in ("target / reference", "added p50 @1", "req/s @16", "p99 @16", "CPU/req @16"):
        ratio_table.add_column(column, justify="left" if column.startswith("target") else "right")
    for row in ratios:
        ratio_table.add_row(f"{row['target']} / {row['reference']}", _fmt(row["added_p50_ratio"], 2),
                            _fmt(row["rps_ratio_16"], 2), _fmt(row["p99_ratio_16"], 2),
                            _fmt(row["cpu_per_request_ratio_16"], 2))
    console.print(ratio_table)
    check_table = Table(title="Targets")
    for column in ("check", "value", "limit", "result"):
        check_table.add_column(column)
    for check in verdicts:
        verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[check.passed]
        limit = f"{'<=' if check.at_most else '>='} {check.limit:g}"
        check_table.add_row(check.name, _fmt(check.value, 2), limit, verdict)
    console.print(check_table)


def busy_warning(samples: Sequence[Sample], cpus: int) -> str | None:
    """A warning when the machine was busy during the run (1-minute load average above the CPUs)."""
    peak = max((s.loadavg_1m for s in samples), default=0.0)
    if peak <= cpus:
        return None
    return (f"the machine was busy: 1-minute load average up to {peak:.1f} on {cpus} CPUs during the run; "
            "latencies (p99 above all) carry other processes' noise, CPU per request is the steadiest figure")


def note_busy(console: Console, samples: Sequence[Sample], meta: dict[str, Any]) -> None:
    """Record and print the busy-machine warning, if the run had one."""
    warning = busy_warning(samples, os.cpu_count() or 1)
    if warning:
        meta["warning"] = warning
        console.print(f"[yellow]{escape(warning)}[/]")


def publish(console: Console, document: dict[str, Any], out: Path, summary: Summary) -> int:
    """Write the JSON results; exit code 1 when any request failed during measurement, else 0."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str))
    console.print(f"results written to {out}")
    failed = sum(cell["errors"] + cell["non_2xx"] for per in summary.values() for cell in per.values())
    if failed:
        console.print(f"[red]{failed} requests failed during measurement: the numbers are not trustworthy[/]")
        return 1
    return 0


def to_json(meta: dict[str, Any], targets: Sequence[Target], samples: Sequence[Sample], *,
            summary: Summary, ratios: list[dict[str, Any]], verdicts: list[Check]) -> dict[str, Any]:
    return {
        "benchmark": "proxy_overhead",
        "meta": meta,
        "targets": {
            target.name: {
                "description": target.description,
                "sidecar": target.sidecar,
                "by_connections": {str(conn): cell for conn, cell in summary.get(target.name, {}).items()},
            }
            for target in targets
        },
        "ratios": ratios,
        "checks": [{**asdict(check), "passed": check.passed} for check in verdicts],
        "samples": [
            {"target": s.target, "connections": s.connections, "round": s.round, **asdict(s.load),
             "rps": s.load.rps, "cpu_us_per_request": s.cpu_us_per_request,
             "rss_bytes": s.rss_bytes, "rss_bytes_per_proxy": s.rss_bytes_per_proxy,
             "loadavg_1m": s.loadavg_1m}
            for s in samples
        ],
    }
