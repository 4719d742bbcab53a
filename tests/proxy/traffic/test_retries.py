"""Retries against real backends: conditions, attempt header, URX, budget, per-try timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.proxy.filters.retry import check_retries
from meshkit.proxy.http import ConnectFailure, Handler

from .conftest import Action, cluster_spec, free_port, make_request, outbound_chain, snapshot_with

ISTIO_DEFAULT = {
    "attempts": 2,
    "per_try_timeout_ms": None,
    "retry_on": ["connect-failure", "refused-stream", "unavailable", "cancelled"],
    "retriable_status_codes": [],  # Istio 1.24+: the default no longer retries 503
}


def _route(**retries: Any) -> dict[str, Any]:
    return {"timeout_ms": None, "fault": None, "mirror": None, "retries": retries or None}


async def test_retries_until_success_with_attempt_count_header(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.then(Action(503), Action(503))
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    request = make_request(config, _route(attempts=2, retry_on=["5xx"]))
    response = await outbound_chain(send)(request)
    assert response.status == 200 and response.flags == ""
    assert [s.headers["x-envoy-attempt-count"] for s in backend.seen] == ["1", "2", "3"]
    assert request.attempt == 3
    stats = config.clusters["svc|"].traffic
    assert (stats.upstream_rq_retry, stats.upstream_rq_retry_success, stats.rq_retry_active) == (2, 1, 0)


async def test_exhausted_retries_return_the_last_response_with_urx(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503, body=b"down")
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(make_request(config, _route(attempts=2, retry_on=["5xx"])))
    assert (response.status, response.flags) == (503, "URX")
    assert response.body == b"down from b"
    assert len(backend.seen) == 3
    assert config.clusters["svc|"].traffic.upstream_rq_retry_limit_exceeded == 1


async def test_no_retry_policy_means_a_single_attempt_with_the_header(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(make_request(config, _route()))
    assert (response.status, response.flags, len(backend.seen)) == (503, "", 1)
    assert backend.seen[0].headers["x-envoy-attempt-count"] == "1"


@pytest.mark.parametrize(
    ("retries", "status", "expected_attempts"),
    [
        ({"retry_on": ["gateway-error"]}, 500, 1),
        ({"retry_on": ["gateway-error"]}, 502, 3),
        ({"retry_on": ["gateway-error"]}, 504, 3),
        ({"retry_on": ["5xx"]}, 500, 3),
        ({"retry_on": ["5xx"]}, 409, 1),
        ({"retry_on": ["retriable-4xx"]}, 409, 3),
        ({"retry_on": ["retriable-4xx"]}, 404, 1),
        ({"retry_on": ["503"]}, 503, 3),
        ({"retry_on": ["503"]}, 500, 1),
        ({"retry_on": ["retriable-status-codes"], "retriable_status_codes": [418]}, 418, 3),
        ({"retry_on": ["connect-failure"]}, 503, 1),
        (ISTIO_DEFAULT, 503, 1),  # Istio 1.24+: the default policy does not retry an answered 503
        (ISTIO_DEFAULT, 500, 1),
        ({**ISTIO_DEFAULT, "retry_on": [*ISTIO_DEFAULT["retry_on"], "retriable-status-codes"],
          "retriable_status_codes": [503]}, 503, 3),  # the pre-1.24 default, spelled out
    ],
)
async def test_retry_on_conditions(
    backends: Any, retries: dict[str, Any], status: int, expected_attempts: int
, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(status)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    policy = {"attempts": 2, **retries}
    response = await outbound_chain(send)(make_request(config, _route(**policy)))
    assert response.status == status
    assert len(backend.seen) == expected_attempts
    assert response.flags == ("URX" if expected_attempts > 1 else "")


async def test_connect_failure_is_retried_then_answered_503_uf_urx(send: Handler) -> None:
    config = snapshot_with({"svc|": cluster_spec([free_port()])})
    route = _route(attempts=2, retry_on=["connect-failure"])
    response = await outbound_chain(send)(make_request(config, route))
    assert (response.status, response.flags) == (503, "UF,URX")
    assert b"connection failure" in response.body
    assert config.clusters["svc|"].traffic.upstream_rq_retry == 2


async def test_reset_before_request_covers_connect_failures(send: Handler) -> None:
    config = snapshot_with({"svc|": cluster_spec([free_port()])})
    route = _route(attempts=1, retry_on=["reset-before-request"])
    response = await outbound_chain(send)(make_request(config, route))
    assert (response.status, response.flags) == (503, "UF,URX")


async def test_connect_failure_without_a_matching_condition_escapes_to_local_reply(send: Handler) -> None:
    config = snapshot_with({"svc|": cluster_spec([free_port()])})
    with pytest.raises(ConnectFailure):
        await outbound_chain(send)(make_request(config, _route(attempts=2, retry_on=["retriable-4xx"])))


async def test_reset_is_retried_on_reset_and_reported_uc_urx_when_exhausted(
    backends: Any, send: Handler
) -> None:
    (backend,) = await backends("b")
    backend.then(Action(reset=True))
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    ok = await outbound_chain(send)(make_request(config, _route(attempts=1, retry_on=["reset"])))
    assert ok.status == 200 and len(backend.seen) == 2
    backend.default = Action(reset=True)
    failed = await outbound_chain(send)(make_request(config, _route(attempts=1, retry_on=["reset"])))
    assert (failed.status, failed.flags) == (503, "UC,URX")


async def test_retries_prefer_another_endpoint(backends: Any, send: Handler) -> None:
    good, bad = await backends("good", "bad")
    bad.default = Action(503)
    config = snapshot_with({"svc|": cluster_spec([good.port, bad.port], lb="RANDOM")})
    handler = outbound_chain(send)
    statuses = [
        (await handler(make_request(config, _route(attempts=1, retry_on=["5xx"])))).status for _ in range(40)
    ]
    # With the previous-host predicate a request fails only if its first try hit "bad" and all
    # 5 re-picks hit it again (1/64); without it, 1/4 of requests would fail.
    assert statuses.count(200) >= 35, statuses


async def test_streamed_bodies_are_never_retried(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})

    async def chunks() -> Any:
        yield b"part-1,"
        yield b"part-2"

    request = make_request(config, _route(attempts=3, retry_on=["5xx"]), body=chunks(), method="POST")
    response = await outbound_chain(send)(request)
    assert (response.status, response.flags, len(backend.seen)) == (503, "", 1)
    assert backend.seen[0].body == b"part-1,part-2"


async def test_bytes_bodies_are_replayed_on_every_attempt(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.then(Action(503))
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    request = make_request(config, _route(attempts=1, retry_on=["5xx"]), body=b"payload", method="POST")
    assert (await outbound_chain(send)(request)).status == 200
    assert [s.body for s in backend.seen] == [b"payload", b"payload"]


async def test_local_replies_are_not_retried(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    spec = cluster_spec([backend.port])
    spec["endpoints"][0]["healthy"] = False
    config = snapshot_with({"svc|": spec})
    response = await outbound_chain(send)(make_request(config, _route(attempts=3, retry_on=["5xx"])))
    assert (response.status, response.flags) == (503, "UH")
    assert config.clusters["svc|"].traffic.upstream_rq_retry == 0


async def test_max_retries_budget_overflow_returns_uo(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503, delay=0.3)
    config = snapshot_with({"svc|": cluster_spec([backend.port], connection_pool={"max_retries": 1})})
    handler = outbound_chain(send)
    route = _route(attempts=1, retry_on=["5xx"])
    responses = await asyncio.gather(*(handler(make_request(config, route)) for _ in range(2)))
    assert sorted(r.flags for r in responses) == ["UO", "URX"]
    traffic = config.clusters["svc|"].traffic
    assert (traffic.upstream_rq_retry_overflow, traffic.rq_retry_active) == (1, 0)


async def test_per_try_timeout_is_retried_and_flags_ut_when_exhausted(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.then(Action(delay=2.0))
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    handler = outbound_chain(send)
    ok = await handler(make_request(config, _route(attempts=1, per_try_timeout_ms=150, retry_on=["5xx"])))
    assert ok.status == 200 and len(backend.seen) == 2  # the first try (2 s) was cut and retried
    assert config.clusters["svc|"].traffic.upstream_rq_per_try_timeout == 1

    backend.default = Action(delay=2.0)
    slow = await handler(make_request(config, _route(attempts=1, per_try_timeout_ms=100, retry_on=["reset"])))
    assert (slow.status, slow.flags, slow.body) == (504, "UT,URX", b"upstream request timeout")

    # a per-try timeout is not a connect failure: Istio's default conditions do not retry it
    before = len(backend.seen)
    policy = {**ISTIO_DEFAULT, "per_try_timeout_ms": 100}
    single = await handler(make_request(config, _route(**policy)))
    assert (single.status, single.flags, len(backend.seen) - before) == (504, "UT", 1)


async def test_backoff_is_tens_of_milliseconds_not_seconds(backends: Any, send: Handler) -> None:
    (backend,) = await backends("b")
    backend.default = Action(503)
    config = snapshot_with({"svc|": cluster_spec([backend.port])})
    response = await outbound_chain(send)(make_request(config, _route(attempts=4, retry_on=["5xx"])))
    # four jittered back-offs below 25 + 50 + 100 + 200 ms; how long they take is a timing claim
    # (benchmarks/), not a test's: here every retry happened within the test's own timeout
    assert response.flags == "URX" and len(backend.seen) == 5


@pytest.mark.parametrize(
    ("retries", "message"),
    [
        ({"attempts": -1}, "routes[0].retries.attempts"),
        ({"attempts": 1, "per_try_timeout_ms": 0}, "routes[0].retries.per_try_timeout_ms"),
        ({"attempts": 1, "retry_on": ["5xx", "sometimes"]}, "routes[0].retries.retry_on[1]: unknown"),
        ({"attempts": 1, "retriable_status_codes": ["503"]}, "routes[0].retries.retriable_status_codes"),
        ("3", "routes[0].retries: expected an object"),
    ],
)
def test_bad_retry_policies_name_the_key(retries: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_retries({"retries": retries}, "routes[0]")
    check_retries({"retries": ISTIO_DEFAULT}, "routes[0]")
    check_retries({"retries": None}, "routes[0]")
