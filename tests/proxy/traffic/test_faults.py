"""Fault injection: aborts (FI), delays (DI), both, and percentage sampling."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.fault import check_fault, fault
from meshkit.proxy.http import Handler, Request, Response

from .conftest import cluster_spec, make_request, outbound_chain, snapshot_with


def _route(delay: dict[str, Any] | None = None, abort: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"fault": {"delay": delay, "abort": abort}, "timeout_ms": None, "retries": None, "mirror": None}


async def test_abort_answers_locally_with_fi(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    route = _route(abort={"http_status": 500, "percent": 100.0})
    response = await outbound_chain(send)(make_request(config, route))
    assert (response.status, response.flags, response.body) == (500, "FI", b"fault filter abort")
    assert backend.seen == []


async def test_delay_holds_the_request_then_forwards_it_with_di(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    request = make_request(config, _route(delay={"fixed_delay_ms": 300, "percent": 100.0}))
    started = time.monotonic()
    response = await outbound_chain(send)(request)
    assert time.monotonic() - started >= 0.28
    assert (response.status, request.flags) == (200, "DI")
    assert len(backend.seen) == 1


async def test_delay_then_abort(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    route = _route(delay={"fixed_delay_ms": 200, "percent": 100}, abort={"http_status": 503, "percent": 100})
    request = make_request(config, route)
    started = time.monotonic()
    response = await outbound_chain(send)(request)
    assert time.monotonic() - started >= 0.18
    assert (response.status, response.flags, request.flags) == (503, "FI", "DI")
    assert backend.seen == []


async def _count_faults(route: dict[str, Any], samples: int) -> tuple[int, int]:
    async def app(request: Request) -> Response:
        return Response(200)

    handler = build_chain([fault], app)
    aborted = delayed = 0
    for _ in range(samples):
        request = make_request(snapshot_with({}), route)
        response = await handler(request)
        aborted += response.status == 418
        delayed += request.flags == "DI"
    return aborted, delayed


async def test_percentages_are_sampled_independently() -> None:
    random.seed(42)
    route = _route(delay={"fixed_delay_ms": 0, "percent": 20.0}, abort={"http_status": 418, "percent": 50.0})
    aborted, delayed = await _count_faults(route, 2000)
    assert 850 < aborted < 1150, aborted
    assert 330 < delayed < 470, delayed


async def test_zero_percent_never_faults_and_no_fault_section_passes_through() -> None:
    route = _route(delay={"fixed_delay_ms": 0, "percent": 0.0}, abort={"http_status": 418, "percent": 0})
    assert await _count_faults(route, 500) == (0, 0)
    assert await _count_faults({"fault": None}, 10) == (0, 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"abort": {"http_status": 99, "percent": 10}}, r"r\.fault\.abort\.http_status"),
        ({"abort": {"percent": 10}}, r"r\.fault\.abort\.http_status"),
        ({"delay": {"fixed_delay_ms": "5s"}}, r"r\.fault\.delay\.fixed_delay_ms"),
        ({"delay": {"fixed_delay_ms": 5, "percent": 101}}, r"r\.fault\.delay\.percent"),
        ({"delay": []}, r"r\.fault\.delay: expected an object"),
    ],
)
def test_bad_faults_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_fault({"fault": spec}, "r")
