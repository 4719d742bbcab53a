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
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from proxybench import report
from proxybench.load import Wrk
from proxybench.processes import HarnessError, Supervisor
from proxybench.runner import Plan, run_rounds
from proxybench.targets import Stage, Target, all_targets, start_upstream
from proxybench.tools import Tools, ToolsMissing, ensure_tools
from rich.console import Console
from rich.markup import escape

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "proxy_overhead.json"
FULL = Plan(rounds=5, seconds=5)
QUICK = Plan(rounds=2, seconds=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [target.name for target in all_targets()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
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


def choose_targets(selection: str, console: Console) -> tuple[list[Target], dict[str, str]]:
    """The selected targets (direct always first); meshkit ones are skipped, with a reason, if absent."""
    wanted = {"direct", *selection.split(",")}
    chosen = [target for target in all_targets() if target.name in wanted]
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
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "plan": {"rounds": plan.rounds, "seconds": plan.seconds, "connections": list(plan.connections),
                 "warmup_seconds": plan.warmup_seconds, "wrk_threads": 1, "quick": args.quick},
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                 "loadavg_at_start": list(os.getloadavg())},
        "tools": tools.versions(),
        "skipped": skipped,
    }


def run(args: argparse.Namespace, console: Console) -> int:
    plan = FULL if not args.quick else QUICK
    plan = Plan(rounds=args.rounds or plan.rounds, seconds=args.seconds or plan.seconds)
    try:
        tools = ensure_tools(install=not args.no_install)
    except ToolsMissing as exc:
        console.print(f"[red]cannot run the benchmark: {escape(str(exc))}[/]")
        return 2
    targets, skipped = choose_targets(args.targets, console)
    meta = metadata(args, plan, tools, skipped)
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-bench-"))
    supervisor = Supervisor(workdir)
    try:
        stage = Stage(supervisor, tools, workdir)
        start_upstream(stage)
        for target in targets:
            console.print(f"starting {target.name}: {target.description}")
            target.start(stage)
        console.print(f"measuring {len(targets)} targets, {plan.rounds} rounds x {plan.seconds} s at "
                      f"{plan.connections} connections (about {plan.estimated_seconds(len(targets))} s)")
        started = time.monotonic()
        samples = run_rounds(targets, Wrk.prepare(tools.wrk, workdir), plan,
                             lambda line: console.print(line, highlight=False))
        meta["measured_seconds"] = round(time.monotonic() - started, 1)
        meta["host"]["loadavg_at_end"] = list(os.getloadavg())
    except HarnessError as exc:
        console.print(f"[red]benchmark aborted: {escape(str(exc))}[/]")
        return 1
    finally:
        supervisor.close()
        if not args.keep_workdir:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
        else:
            console.print(f"configs and logs kept in {workdir}")
    summary = report.summarize(samples)
    ratios = report.comparisons(summary)
    verdicts = report.checks(summary, targets)
    report.render(console, summary, ratios, verdicts)
    report.note_busy(console, samples, meta)
    document = report.to_json(meta, targets, samples, summary=summary, ratios=ratios, verdicts=verdicts)
    return report.publish(console, document, args.out, summary)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``finally``, which stops every child process


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    console = Console() if sys.stdout.isatty() else Console(width=150)  # logs: no wrapping at 80
    return run(parse_args(argv), console)


if __name__ == "__main__":
    sys.exit(main())
