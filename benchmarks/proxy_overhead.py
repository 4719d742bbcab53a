"""What does the meshkit sidecar add to a request, compared with nginx and haproxy?

Usage: ``.venv/bin/python benchmarks/proxy_overhead.py [--quick] [--out FILE] [--targets a,b,...]``

Starts an upstream nginx (100-byte 200 responses) and, in front of it, nginx, haproxy, one meshkit
sidecar, two nginx in a row, and two meshkit sidecars in a row (the mesh path), all on 127.0.0.1
with free ports and a temporary directory. wrk (-t1) drives each at 1 and 16 connections in
interleaved rounds; CPU per request and RSS come from /proc. Prints a table, writes JSON (default
benchmarks/results/proxy_overhead.json) and stops every process it started, even on errors.
See benchmarks/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxybench import report, session
from proxybench.runner import Plan
from proxybench.targets import Target, all_targets
from proxybench.tools import Tools
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "proxy_overhead.json"
FULL = Plan(rounds=5, seconds=5)
QUICK = Plan(rounds=2, seconds=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    concurrency = _concurrency(argv)
    names = [target.name for target in all_targets(concurrency)]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="N > 1 adds meshkit-cN and meshkit-mesh-cN: the sidecars with --concurrency N, "
                        "interleaved with the others")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.rounds} rounds x {QUICK.seconds} s "
                        f"instead of {FULL.rounds} x {FULL.seconds} s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: %(default)s)")
    parser.add_argument("--targets", default=",".join(names),
                        help=f"comma-separated subset of {','.join(names)} (direct is always included)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--seconds", type=int, help="override the seconds per wrk run")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs after the run")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets.split(",")) - set(names))
    if unknown:
        parser.error(f"--targets: unknown {', '.join(unknown)}; known: {', '.join(names)}")
    for option in ("rounds", "seconds"):
        value = getattr(args, option)
        if value is not None and not 1 <= value <= 60:
            parser.error(f"--{option}: {value} is outside 1..60")
    return args


def _concurrency(argv: list[str] | None) -> int:
    """``--concurrency N`` read ahead: it decides which target names exist."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--concurrency", type=int, default=1)
    known, _ = peek.parse_known_args(argv)
    return max(1, int(known.concurrency))


def choose_targets(
    selection: str, console: Console, concurrency: int = 1
) -> tuple[list[Target], dict[str, str]]:
    """The selected targets (direct always first); meshkit ones are skipped, with a reason, if absent."""
    wanted = {"direct", *selection.split(",")}
    chosen = [target for target in all_targets(concurrency) if target.name in wanted]
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("meshkit.proxy.__main__") is None:
        for target in [t for t in chosen if t.sidecar]:
            skipped[target.name] = "meshkit.proxy has no __main__ yet (python -m meshkit.proxy cannot run)"
            console.print(f"[yellow]skipping {target.name}: {skipped[target.name]}[/]")
        chosen = [target for target in chosen if not target.sidecar]
    return chosen, skipped


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def metadata(args: argparse.Namespace, plan: Plan, tools: Tools, skipped: dict[str, str]) -> dict[str, Any]:
    return {
        "command": session.command_line(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "plan": {"rounds": plan.rounds, "seconds": plan.seconds, "connections": list(plan.connections),
                 "warmup_seconds": plan.warmup_seconds, "wrk_threads": 1, "quick": args.quick},
        "host": session.host_facts(),
        "tools": tools.versions(),
        "skipped": skipped,
    }


def run(args: argparse.Namespace, console: Console) -> int:
    plan = session.chosen_plan(args, FULL, QUICK)
    tools = session.tools_or_none(console, install=not args.no_install)
    if tools is None:
        return 2
    targets, skipped = choose_targets(args.targets, console, args.concurrency)
    meta = metadata(args, plan, tools, skipped)
    samples = session.measure_targets(console, targets, tools, plan, meta, workdir_prefix="meshkit-bench-",
                                      keep_workdir=args.keep_workdir)
    if samples is None:
        return 1
    summary = report.summarize(samples)
    ratios = report.comparisons(summary)
    verdicts = report.checks(summary, targets)
    report.render(console, summary, ratios, verdicts)
    report.note_busy(console, samples, meta)
    document = report.to_json(meta, targets, samples, summary=summary, ratios=ratios, verdicts=verdicts)
    return report.publish(console, document, args.out, summary)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return session.main(lambda console: run(args, console))


if __name__ == "__main__":
    sys.exit(main())
