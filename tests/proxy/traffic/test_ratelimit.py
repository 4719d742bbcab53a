"""Local rate limiting: Envoy's token bucket and the 429 RL reply."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.ratelimit import TokenBucket, ratelimit
from meshkit.proxy.http import Handler

from .conftest import cluster_spec, make_request, snapshot_with


def test_bucket_starts_full_and_refills_in_whole_intervals() -> None:
    bucket = TokenBucket(max_tokens=3, tokens_per_fill=1, fill_interval_ms=1000)
    assert [bucket.try_consume(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.try_consume(0.99)
    assert bucket.try_consume(1.0)
    assert not bucket.try_consume(1.5)
    assert bucket.try_consume(2.5) and not bucket.try_consume(2.6)
    # a long pause refills up to max_tokens, never beyond
    assert [bucket.try_consume(100.0) for _ in range(4)] == [True, True, True, False]


def test_tokens_per_fill_adds_several_tokens_per_interval() -> None:
    bucket = TokenBucket(max_tokens=10, tokens_per_fill=4, fill_interval_ms=500)
    assert sum(bucket.try_consume(0.0) for _ in range(12)) == 10
    assert sum(bucket.try_consume(0.5) for _ in range(12)) == 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"max_tokens": 0, "tokens_per_fill": 1, "fill_interval_ms": 1000}, "rate_limit.max_tokens"),
        ({"max_tokens": 5, "tokens_per_fill": 1, "fill_interval_ms": 10}, "rate_limit.fill_interval_ms"),
        ({"max_tokens": 5, "tokens_per_fill": "1", "fill_interval_ms": 100}, "rate_limit.tokens_per_fill"),
        ([], "inbound.rate_limit: expected an object"),
    ],
)
def test_bad_rate_limits_name_the_key(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        TokenBucket.from_snapshot(spec)
    assert str(info.value).startswith("inbound.rate_limit")


def test_from_snapshot() -> None:
    assert TokenBucket.from_snapshot(None) is None
    bucket = TokenBucket.from_snapshot({"max_tokens": 10, "tokens_per_fill": 5, "fill_interval_ms": 1000})
    assert bucket is not None
    assert (bucket.max_tokens, bucket.tokens_per_fill, bucket.fill_interval) == (10, 5, 1.0)


async def test_filter_answers_429_rl_and_keeps_the_app_out(backends: Any, send: Handler) -> None:
    (app,) = await backends("app")
    config = snapshot_with(
        {"inbound|": cluster_spec([app.port])},
        rate_limit={"max_tokens": 2, "tokens_per_fill": 1, "fill_interval_ms": 60_000},
    )
    handler = build_chain([ratelimit], send)
    responses = []
    for _ in range(5):
        request = make_request(config, None, cluster="inbound|")
        request.endpoint = config.clusters["inbound|"].endpoints[0]  # as the inbound pipeline does
        responses.append(await handler(request))
    assert [r.status for r in responses] == [200, 200, 429, 429, 429]
    limited = responses[-1]
    assert (limited.flags, limited.body) == ("RL", b"local_rate_limited")
    assert len(app.seen) == 2


async def test_no_rate_limit_lets_everything_through(backends: Any, send: Handler) -> None:
    (app,) = await backends("app")
    config = snapshot_with({"inbound|": cluster_spec([app.port])})
    handler = build_chain([ratelimit], send)
    for _ in range(20):
        request = make_request(config, None, cluster="inbound|")
        request.endpoint = config.clusters["inbound|"].endpoints[0]
        assert (await handler(request)).status == 200
