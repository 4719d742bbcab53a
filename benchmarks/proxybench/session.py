"""The frame of one benchmark run, shared by ``proxy_overhead.py`` and ``mtls_overhead.py``.

The plan from the command line, the host facts recorded with the results, the tools, starting the
targets in a throwaway work dir, the interleaved rounds, and stopping every process afterwards (also
on SIGTERM/SIGHUP). It must not choose targets or render results: each script does that.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape

from .load import Wrk
from .processes import HarnessError, Supervisor
from .runner import Plan, Sample, run_rounds
from .targets import Stage, Target, start_upstream
from .tools import Tools, ToolsMissing, ensure_tools


def chosen_plan(args: argparse.Namespace, full: Plan, quick: Plan) -> Plan:
    """``quick`` with ``--quick``, else ``full``; ``--rounds`` / ``--seconds`` override either."""
    plan = quick if args.quick else full
    return Plan(rounds=args.rounds or plan.rounds, seconds=args.seconds or plan.seconds)


def host_facts() -> dict[str, Any]:
    """CPUs, kernel, Python and the load average now (``loadavg_at_end`` is added after measuring)."""
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg())}


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def tools_or_none(console: Console, *, install: bool) -> Tools | None:
    """nginx, haproxy and wrk, installed when allowed; None (said on the console) when missing."""
    try:
        return ensure_tools(install=install)
    except ToolsMissing as exc:
        console.print(f"[red]cannot run the benchmark: {escape(str(exc))}[/]")
        return None


def measure_targets(console: Console, targets: Sequence[Target], tools: Tools, plan: Plan,
                    meta: dict[str, Any], *, workdir_prefix: str,
                    keep_workdir: bool = False) -> list[Sample] | None:
    """Start the upstream and ``targets`` in a temporary dir, run the rounds, stop everything.

    Records ``measured_seconds`` and ``loadavg_at_end`` in ``meta``; None (said on the console)
    when the harness failed.
    """
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
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
        return None
    finally:
        supervisor.close()
        if not keep_workdir:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
        else:
            console.print(f"configs and logs kept in {workdir}")
    return samples


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``finally``, which stops every child process


def main(run: Callable[[Console], int]) -> int:
    """Run ``run`` with a console (150 columns when not a terminal: logs do not wrap at 80);
    SIGTERM and SIGHUP unwind it so that every child process is stopped."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    return run(Console() if sys.stdout.isatty() else Console(width=150))
