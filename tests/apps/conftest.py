"""Fixtures for the demo apps' tests: real app processes wired through a test forward proxy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest

from tests.apps.forward_proxy import ForwardProxy
from tests.apps.processes import AppProcesses, RunningApp

SERVICE_PORT = 9080


@pytest.fixture(scope="module")
def processes() -> Iterator[AppProcesses]:
    running = AppProcesses()
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    started = ForwardProxy().start()
    try:
        yield started
    finally:
        started.stop()


@dataclass(frozen=True)
class Bookinfo:
    proxy: ForwardProxy
    productpage: RunningApp
    details: RunningApp
    ratings: RunningApp
    reviews: dict[str, RunningApp]

    def all(self) -> list[RunningApp]:
        return [self.productpage, self.details, self.ratings, *self.reviews.values()]

    def route_reviews(self, version: str) -> AbstractContextManager[None]:
        """Context manager: send ``reviews:9080`` to that version (what a VirtualService would do)."""
        return self.proxy.routed(f"reviews:{SERVICE_PORT}", self.reviews[version].port)


@pytest.fixture(scope="module")
def bookinfo(processes: AppProcesses, proxy: ForwardProxy) -> Bookinfo:
    """Productpage, details, ratings and reviews v1/v2/v3, each its own process, calling through ``proxy``."""
    mesh_env = {"HTTP_PROXY": proxy.url}
    details, ratings, v1, v2, v3, productpage = processes.launch_many([
        ("details", ("--seed", "1"), None),
        ("ratings", ("--seed", "2", "--instance", "ratings-v1-0"), None),
        *[("reviews", ("--version", v, "--seed", "3"), mesh_env) for v in ("v1", "v2", "v3")],
        ("productpage", ("--seed", "4"), mesh_env),
    ])
    reviews = {"v1": v1, "v2": v2, "v3": v3}
    proxy.routes.update({f"details:{SERVICE_PORT}": details.port, f"ratings:{SERVICE_PORT}": ratings.port})
    proxy.routes[f"reviews:{SERVICE_PORT}"] = reviews["v2"].port
    return Bookinfo(proxy, productpage, details, ratings, reviews)
