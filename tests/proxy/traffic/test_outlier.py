"""Outlier detection as Envoy does it: consecutive 5xx / gateway errors, the ejection cap,
interval-tick un-ejection and the growing ejection time. Time is injected (``now``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.proxy.balancer import Cluster
from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.http import Handler, UpstreamError

from .conftest import Action, cluster_spec, free_port, make_request, snapshot_with


def _cluster(count: int = 3, **outlier: Any) -> Cluster:
    policy = {
        "consecutive_5xx_errors": 3,
        "consecutive_gateway_errors": None,
        "interval_ms": 10_000,
        "base_ejection_time_ms": 30_000,
        "max_ejection_percent": 100,
    }
    policy.update(outlier)
    return Cluster.from_snapshot("svc|", cluster_spec(list(range(1, count + 1)), outlier_detection=policy))


def _available(cluster: Cluster, now: float) -> set[int]:
    return {cluster.pick(now).port for _ in range(30)}  # type: ignore[union-attr]


def test_consecutive_5xx_ejects_and_a_success_resets_the_count() -> None:
    cluster = _cluster()
    ep = cluster.endpoints[0]
    cluster.pick(0.0)  # anchors the sweep timer at t=0
    cluster.on_result(ep, 500, 1.0)
    cluster.on_result(ep, 503, 1.0)
    cluster.on_result(ep, 200, 1.0)  # resets
    cluster.on_result(ep, 500, 1.0)
    cluster.on_result(ep, 501, 1.0)
    assert not ep.ejected
    cluster.on_result(ep, 500, 1.0)
    assert ep.ejected and ep.times_ejected == 1
    assert _available(cluster, 2.0) == {2, 3}


def test_4xx_is_success_for_outlier_detection() -> None:
    cluster = _cluster(consecutive_5xx_errors=1)
    for _ in range(5):
        cluster.on_result(cluster.endpoints[0], 404, 1.0)
    assert not cluster.endpoints[0].ejected and cluster.endpoints[0].rq_success == 5


def test_gateway_errors_count_502_503_504_and_connect_failures_but_not_500() -> None:
    cluster = _cluster(consecutive_5xx_errors=None, consecutive_gateway_errors=3)
    ep = cluster.endpoints[0]
    for status in (502, 504, 500, 503, None):  # 500 breaks the gateway-error run
        cluster.on_result(ep, status, 1.0)
    assert not ep.ejected and ep.consecutive_gateway_errors == 2
    cluster.on_result(ep, None, 1.0)  # connect failure / reset / timeout
    assert ep.ejected


def test_outlier_detection_disabled_never_ejects() -> None:
    cluster = Cluster.from_snapshot("svc|", cluster_spec([1, 2]))
    for _ in range(50):
        cluster.on_result(cluster.endpoints[0], 503, 1.0)
    assert not cluster.endpoints[0].ejected
    zero = _cluster(consecutive_5xx_errors=0)
    for _ in range(50):
        zero.on_result(zero.endpoints[0], 503, 1.0)
    assert not zero.endpoints[0].ejected


def test_max_ejection_percent_caps_ejections_but_allows_the_first() -> None:
    # 3 endpoints, 10%: 0% ejected < 10% so one may go; then 33% >= 10% blocks the rest.
    cluster = _cluster(consecutive_5xx_errors=1, max_ejection_percent=10)
    first, second, third = cluster.endpoints
    cluster.on_result(first, 500, 1.0)
    cluster.on_result(second, 500, 1.0)
    cluster.on_result(third, 500, 1.0)
    assert [ep.ejected for ep in cluster.endpoints] == [True, False, False]
    assert cluster.admin_view(1.0)["ejections_overflow"] == 2
    # the blocked detection reset its counter: one more error is needed per threshold again
    assert second.consecutive_5xx == 0
    none = _cluster(consecutive_5xx_errors=1, max_ejection_percent=0)
    none.on_result(none.endpoints[0], 500, 1.0)
    assert not none.endpoints[0].ejected


def test_all_endpoints_can_be_ejected_then_pick_returns_none() -> None:
    cluster = _cluster(count=2, consecutive_5xx_errors=1, max_ejection_percent=100)
    for ep in cluster.endpoints:
        cluster.on_result(ep, 503, 1.0)
    assert cluster.pick(2.0) is None


def test_unejection_waits_for_the_interval_tick_after_the_ejection_time() -> None:
    cluster = _cluster(consecutive_5xx_errors=1, interval_ms=10_000, base_ejection_time_ms=30_000)
    ep = cluster.endpoints[0]
    cluster.pick(0.0)  # sweep ticks at 10, 20, 30, 40 ...
    cluster.on_result(ep, 500, 5.0)  # ejected until 35 -> back at the tick at 40
    assert 1 not in _available(cluster, 35.5)
    assert 1 not in _available(cluster, 39.9)
    assert 1 in _available(cluster, 40.0)
    assert ep.consecutive_5xx == 0 and not ep.ejected


def test_ejection_time_grows_with_repeated_ejections_and_decays_when_healthy() -> None:
    cluster = _cluster(consecutive_5xx_errors=1, interval_ms=10_000, base_ejection_time_ms=30_000)
    ep = cluster.endpoints[0]
    cluster.pick(0.0)
    cluster.on_result(ep, 500, 0.0)  # backoff 1: 30 s
    cluster.pick(30.0)
    assert not ep.ejected and ep.eject_backoff == 1
    cluster.on_result(ep, 500, 31.0)  # failing again right away: backoff 2 -> 60 s
    assert ep.eject_backoff == 2
    cluster.pick(90.0)
    assert ep.ejected  # 31 + 60 = 91 > 90
    cluster.pick(100.0)
    assert not ep.ejected
    # healthy for two more ticks: the multiplier decays back to 0
    cluster.pick(120.0)
    assert ep.eject_backoff == 0
    cluster.on_result(ep, 500, 121.0)
    assert ep.eject_backoff == 1 and ep.times_ejected == 3


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    cluster = _cluster(consecutive_5xx_errors=1, interval_ms=1000, base_ejection_time_ms=30_000,
                       max_ejection_time_ms=40_000)
    ep = cluster.endpoints[0]
    cluster.pick(0.0)
    now = 0.0
    for _ in range(4):
        cluster.on_result(ep, 500, now)
        # wait until it is back, in one-second ticks, at most 100 s per round
        for _ in range(100):
            now += 1.0
            cluster.pick(now)
            if not ep.ejected:
                break
    cluster.on_result(ep, 500, now)
    start = now
    while ep.ejected and now < start + 100:
        now += 1.0
        cluster.pick(now)
    assert now - start <= 41.0


async def test_connect_failures_through_the_filter_eject_the_dead_endpoint(
    backends: Any, send: Handler
) -> None:
    (alive,) = await backends("alive")
    dead_port = free_port()
    outlier = {"consecutive_gateway_errors": 2, "consecutive_5xx_errors": None,
               "base_ejection_time_ms": 60_000, "max_ejection_percent": 100}
    config = snapshot_with({"svc|": cluster_spec([alive.port, dead_port], outlier_detection=outlier)})
    handler = build_chain([loadbalance], send)
    failures = 0
    for _ in range(20):
        try:
            await handler(make_request(config, {}))
        except UpstreamError:
            failures += 1
    assert failures == 2  # two connect failures, then the dead endpoint is ejected
    dead = config.clusters["svc|"].endpoints[1]
    assert dead.ejected and dead.rq_error == 2
    assert len(alive.seen) == 18


async def test_5xx_from_a_real_backend_ejects_it(backends: Any, send: Handler) -> None:
    good, bad = await backends("good", "bad")
    bad.default = Action(status=503)
    outlier = {"consecutive_5xx_errors": 3, "base_ejection_time_ms": 60_000, "max_ejection_percent": 50}
    config = snapshot_with({"svc|": cluster_spec([good.port, bad.port], outlier_detection=outlier)})
    handler = build_chain([loadbalance], send)
    statuses = [(await handler(make_request(config, {}))).status for _ in range(20)]
    assert statuses.count(503) == 3 and len(bad.seen) == 3
    assert config.clusters["svc|"].endpoints[1].ejected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from([200, 404, 500, 502, 503, 504, None]), st.floats(0, 5)),
        max_size=120,
    ),
    st.integers(0, 100),
)
def test_outlier_invariants_hold_for_any_result_sequence(
    events: list[tuple[int, int | None, float]], max_percent: int
) -> None:
    cluster = _cluster(
        count=5,
        consecutive_5xx_errors=2,
        consecutive_gateway_errors=2,
        interval_ms=1000,
        base_ejection_time_ms=3000,
        max_ejection_percent=max_percent,
    )
    now = 0.0
    peak = 0
    for index, status, step in events:
        now += step
        cluster.on_result(cluster.endpoints[index], status, now)
        picked = cluster.pick(now)
        ejected = [ep for ep in cluster.endpoints if ep.ejected]
        peak = max(peak, len(ejected))
        # the balancer never hands out an ejected endpoint, and its count matches reality
        assert picked is None or not picked.ejected
        assert cluster.admin_view(now)["ejections_active"] == len(ejected)
        assert (picked is None) == (len(ejected) == len(cluster.endpoints))
    # an ejection happens only while the ejected share is below the cap
    allowed = 0
    while 100.0 * allowed / 5 < max_percent:
        allowed += 1
    assert peak <= allowed
