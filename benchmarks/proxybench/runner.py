"""Interleaved measurement rounds: every target at every connection count once per round.

The machine is shared and noisy, so no target gets a quiet moment to itself: within a round the
target order rotates, and results are later reduced to medians over rounds and to ratios against
references measured in the same round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .load import LoadResult, Wrk
from .processes import cpu_seconds, process_tree, rss_bytes
from .targets import HOST, Target


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds x (connection counts x targets) runs of ``seconds`` each."""

    rounds: int = 5
    seconds: int = 5
    connections: tuple[int, ...] = (1, 16)
    warmup_seconds: int = 1

    def estimated_seconds(self, targets: int) -> int:
        runs_per_target = len(self.connections) * (self.rounds * self.seconds + self.warmup_seconds)
        return int(targets * runs_per_target * 1.1)


@dataclass(frozen=True)
class Sample:
    """One wrk run against one target, with the CPU and memory its proxy processes used meanwhile."""

    target: str
    connections: int
    round: int
    load: LoadResult
    cpu_seconds: float | None      # all proxy processes of the target, during the run
    rss_bytes: int | None          # all proxy processes of the target, after the run
    rss_bytes_per_proxy: int | None  # the largest single proxy (e.g. one of the two sidecars)
    loadavg_1m: float              # machine load when the run started: how noisy was it?

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_seconds is None or self.load.requests == 0:
            return None
        return self.cpu_seconds * 1e6 / self.load.requests


def measure(target: Target, wrk: Wrk, connections: int, seconds: int, round_no: int) -> Sample:
    trees = [process_tree(root.pid) for root in target.proxy_roots]
    pids = [pid for tree in trees for pid in tree]
    loadavg = os.getloadavg()[0]
    before = cpu_seconds(pids)
    load = wrk.run(target.port, HOST, connections, seconds)
    used = cpu_seconds(pids) - before
    per_proxy = [rss_bytes(tree) for tree in trees]
    return Sample(
        target=target.name, connections=connections, round=round_no, load=load,
        cpu_seconds=used if pids else None,
        rss_bytes=sum(per_proxy) if pids else None,
        rss_bytes_per_proxy=max(per_proxy) if pids else None,
        loadavg_1m=round(loadavg, 2),
    )


def run_rounds(targets: Sequence[Target], wrk: Wrk, plan: Plan,
               progress: Callable[[str], None]) -> list[Sample]:
    """Warm every target up once, then run ``plan.rounds`` interleaved rounds; returns all samples."""
    for target in targets:
        for connections in plan.connections:
            progress(f"warm-up {target.name} c={connections}")
            wrk.run(target.port, HOST, connections, plan.warmup_seconds)
    samples: list[Sample] = []
    for round_no in range(plan.rounds):
        shift = round_no % len(targets)
        order = [*targets[shift:], *targets[:shift]]
        for connections in plan.connections:
            for target in order:
                sample = measure(target, wrk, connections, plan.seconds, round_no)
                progress(f"round {round_no + 1}/{plan.rounds} c={connections:<2} {target.name:<13} "
                         f"p50 {sample.load.p50_us:7.0f} us  {sample.load.rps:8.0f} req/s")
                samples.append(sample)
    return samples
