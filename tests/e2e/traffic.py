"""Sending real requests into the mesh and reading the sidecars' Istio metrics, for the e2e tests.

Requests go to 127.0.0.1 only: through the ingress gateway, or through a workload's sidecar
used as HTTP proxy (what `meshkit curl --from` does). Every batch is bounded in count and
each request in time.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from meshkit.lab.checks import binomial_p_value

REQUEST_TIMEOUT = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    status: int  # 0: no HTTP answer
    body: str
    headers: dict[str, str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def podname(self) -> str | None:
        try:
            doc = self.json()
        except ValueError:
            return None
        return doc.get("podname") if isinstance(doc, dict) else None


async def get_many(url: str, count: int, *, headers: dict[str, str] | None = None,
                   cookies: dict[str, str] | None = None, proxy: str | None = None,
                   concurrency: int = 8) -> list[Reply]:
    """GET ``url`` ``count`` times, at most ``concurrency`` at once; one `Reply` per request."""
    assert 0 < count <= 5000
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, cookies=cookies) as session:

        async def one() -> Reply:
            async with gate:
                began = time.monotonic()
                try:
                    async with session.get(url, headers=headers, proxy=proxy) as resp:
                        body = await resp.text()
                        return Reply(resp.status, body, dict(resp.headers), time.monotonic() - began)
                except (TimeoutError, aiohttp.ClientError) as error:
                    return Reply(0, repr(error), {}, time.monotonic() - began)

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def get_one(url: str, **kwargs: Any) -> Reply:
    return (await get_many(url, 1, **kwargs))[0]


def pods(replies: list[Reply]) -> Counter[str | None]:
    return Counter(r.podname for r in replies)


def assert_share(hits: int, total: int, expected: float, what: str, *, alpha: float = 1e-6) -> None:
    """``hits`` of ``total`` are compatible with the weight ``expected`` (exact binomial test): a
    random weighted pick is judged by how unlikely its share is, not by a fixed band (±5 % of 600
    requests at 50/50 is 2.4 standard deviations: about 1 run in 70 would fail a correct split)."""
    p_value = binomial_p_value(hits, total, expected)
    assert p_value >= alpha, (f"{what}: {hits} of {total} ({100.0 * hits / total:.1f}%) where "
                              f"{100.0 * expected:.0f}% is asked; as likely as {p_value:.2g}")


def codes(replies: list[Reply]) -> Counter[int]:
    return Counter(r.status for r in replies)


def istio_requests(admin_port: int, **labels: str) -> float:
    """Sum of ``istio_requests_total`` on one sidecar over the series matching ``labels``."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name not in ("istio_requests", "istio_requests_total"):
            continue
        for s in family.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def eventually(check: Callable[[], T], accept: Callable[[T], bool], *, seconds: float = 10.0,
                     every: float = 0.2) -> T:
    """Call ``check`` until ``accept`` takes its value or ``seconds`` pass; returns the last value."""
    deadline = time.monotonic() + seconds
    value = check()
    for _ in range(int(seconds / every) + 1):
        if accept(value) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(every)
        value = check()
    return value


@dataclass(frozen=True)
class Sent:
    at: float  # seconds after the first request was due
    reply: Reply


async def paced(url: str, *, rps: float, seconds: float, proxy: str | None = None,
                headers: dict[str, str] | None = None) -> list[Sent]:
    """Open-loop GETs at ``rps`` for ``seconds`` (each stamped with when it was sent)."""
    assert 0 < rps <= 200 and 0 < seconds <= 60
    count = int(rps * seconds)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()

        async def one(i: int) -> Sent:
            await asyncio.sleep(max(0.0, start + i / rps - time.monotonic()))
            at = time.monotonic() - start
            try:
                async with session.get(url, headers=headers, proxy=proxy) as resp:
                    body = await resp.text()
                    reply = Reply(resp.status, body, dict(resp.headers), time.monotonic() - start - at)
            except (TimeoutError, aiohttp.ClientError) as error:
                reply = Reply(0, repr(error), {}, time.monotonic() - start - at)
            return Sent(at, reply)

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def outbound_active(admin_port: int) -> int:
    """Requests a sidecar's outbound listener is handling right now (fault-delayed ones included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.load(resp)
    return int(stats["listeners"]["outbound"]["downstream_rq_active"])


def flagged(admin_port: int, flag: str, **labels: str) -> float:
    """Requests counted by one sidecar whose ``response_flags`` include ``flag`` (e.g. DI in "DI,DC")."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               if family.name in ("istio_requests", "istio_requests_total")
               for s in family.samples
               if s.name.endswith("_total") and flag in s.labels.get("response_flags", "").split(",")
               and all(s.labels.get(k) == v for k, v in labels.items()))
