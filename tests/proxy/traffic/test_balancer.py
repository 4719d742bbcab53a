"""Load-balancing policies, snapshot validation, state carried over a swap, and the UH reply."""

from __future__ import annotations

import collections
import itertools
import random

import pytest

from meshkit.proxy.balancer import Cluster
from meshkit.proxy.chain import build_chain
from meshkit.proxy.filters.loadbalance import loadbalance
from meshkit.proxy.http import Handler

from .conftest import cluster_spec, make_request, snapshot_with


def _cluster(lb: str, count: int = 3, **policy: object) -> Cluster:
    return Cluster.from_snapshot("svc|", cluster_spec([1000 + i for i in range(count)], lb, **policy))


def test_round_robin_cycles_evenly() -> None:
    cluster = _cluster("ROUND_ROBIN")
    picks = [cluster.pick(0.0) for _ in range(300)]
    counts = collections.Counter(ep.port for ep in picks if ep is not None)
    assert counts == {1000: 100, 1001: 100, 1002: 100}
    # consecutive picks never repeat an endpoint while all three are available
    assert all(a is not b for a, b in itertools.pairwise(picks))


def test_passthrough_is_round_robin_over_listed_endpoints() -> None:
    cluster = _cluster("PASSTHROUGH")
    counts = collections.Counter(cluster.pick(0.0).port for _ in range(30))  # type: ignore[union-attr]
    assert counts == {1000: 10, 1001: 10, 1002: 10}


def test_random_spreads_over_all_endpoints() -> None:
    random.seed(7)
    cluster = _cluster("RANDOM")
    counts = collections.Counter(cluster.pick(0.0).port for _ in range(3000))  # type: ignore[union-attr]
    assert set(counts) == {1000, 1001, 1002}
    assert all(700 < n < 1300 for n in counts.values()), counts


def test_least_request_prefers_the_less_loaded_of_two_random_choices() -> None:
    random.seed(11)
    cluster = _cluster("LEAST_REQUEST")
    busy, idle_a, idle_b = cluster.endpoints
    busy.active_requests = 5
    counts = collections.Counter(cluster.pick(0.0).port for _ in range(3000))  # type: ignore[union-attr]
    # P2C: the busy endpoint wins only when both random choices land on it (1/9 of the time).
    assert 200 < counts[busy.port] < 500, counts
    assert counts[idle_a.port] > 1000 and counts[idle_b.port] > 1000


def test_least_request_with_equal_load_still_spreads() -> None:
    random.seed(3)
    cluster = _cluster("LEAST_REQUEST", count=2)
    counts = collections.Counter(cluster.pick(0.0).port for _ in range(2000))  # type: ignore[union-attr]
    assert all(700 < n < 1300 for n in counts.values()), counts


def test_unhealthy_endpoints_are_never_picked_and_none_left_means_none() -> None:
    spec = cluster_spec([1, 2, 3])
    spec["endpoints"][0]["healthy"] = False
    spec["endpoints"][2]["healthy"] = False
    cluster = Cluster.from_snapshot("svc|", spec)
    assert {cluster.pick(0.0).port for _ in range(20)} == {2}  # type: ignore[union-attr]
    spec["endpoints"][1]["healthy"] = False
    assert Cluster.from_snapshot("svc|", spec).pick(0.0) is None
    assert Cluster.from_snapshot("svc|", cluster_spec([])).pick(0.0) is None


def test_pick_avoids_the_previous_attempts_endpoint_when_it_can() -> None:
    random.seed(5)
    for lb in ("RANDOM", "LEAST_REQUEST", "ROUND_ROBIN"):
        cluster = _cluster(lb, count=2)
        previous = cluster.endpoints[0]
        picks = [cluster.pick(0.0, previous) for _ in range(200)]
        # 5 selection attempts: the previous endpoint comes back at most (1/2)^5 of the time.
        assert sum(p is previous for p in picks) < 30, lb
    single = _cluster("RANDOM", count=1)
    assert single.pick(0.0, single.endpoints[0]) is single.endpoints[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(lb="FASTEST"), "clusters.svc|.lb: unknown policy 'FASTEST'"),
        (lambda s: s.update(port="80"), "clusters.svc|.port: expected a port number"),
        (lambda s: s.pop("service"), "clusters.svc|.service: expected a non-empty string"),
        (lambda s: s.update(endpoints={}), "clusters.svc|.endpoints: expected a list"),
        (lambda s: s["endpoints"][1].update(port=70000), "clusters.svc|.endpoints[1].port"),
        (lambda s: s["endpoints"][0].update(healthy="yes"), "clusters.svc|.endpoints[0].healthy"),
        (lambda s: s["endpoints"][0].update(labels={"a": 1}), "clusters.svc|.endpoints[0].labels"),
        (
            lambda s: s.update(connection_pool={"max_connections": -1}),
            "clusters.svc|.connection_pool.max_connections",
        ),
        (
            lambda s: s.update(outlier_detection={"max_ejection_percent": 150}),
            "clusters.svc|.outlier_detection.max_ejection_percent",
        ),
        (
            lambda s: s.update(outlier_detection={"interval_ms": 0}),
            "clusters.svc|.outlier_detection.interval_ms",
        ),
        (lambda s: s.update(tls="ISTIO_MUTUAL"), "clusters.svc|.tls: expected an object or null"),
    ],
)
def test_bad_cluster_specs_name_the_key(mutate: object, message: str) -> None:
    spec = cluster_spec([1, 2])
    mutate(spec)  # type: ignore[operator]
    with pytest.raises(ValueError) as info:
        Cluster.from_snapshot("svc|", spec)
    assert str(info.value).startswith(message), str(info.value)


def test_connection_pool_knobs_are_exposed_zero_meaning_unlimited() -> None:
    cluster = _cluster(
        "ROUND_ROBIN",
        connection_pool={
            "max_connections": 1,
            "http1_max_pending_requests": 0,
            "max_requests_per_connection": 5,
            "max_retries": None,
        },
    )
    assert cluster.max_connections == 1
    assert cluster.max_pending_requests is None
    assert cluster.max_requests_per_connection == 5
    assert cluster.max_retries is None
    assert _cluster("ROUND_ROBIN").max_requests_per_connection is None


def test_adopt_state_keeps_ejections_counters_and_shares_the_load_gauge() -> None:
    outlier = {"consecutive_5xx_errors": 1, "interval_ms": 1000, "base_ejection_time_ms": 30000,
               "max_ejection_percent": 100}
    old = _cluster("ROUND_ROBIN", outlier_detection=outlier)
    bad = old.endpoints[1]
    old.on_result(bad, 500, 1.0)
    old.on_result(old.endpoints[0], 200, 1.0)
    old.endpoints[0].active_requests = 2
    assert bad.ejected
    new = _cluster("ROUND_ROBIN", outlier_detection=outlier)
    new.adopt_state(old)
    assert new.endpoints[1].ejected and new.endpoints[1].times_ejected == 1
    assert new.endpoints[0].rq_success == 1
    assert all(new.pick(2.0) is not new.endpoints[1] for _ in range(10))
    # a request that started on the old snapshot finishes: the new endpoint sees it leave
    old.endpoints[0].active_requests -= 1
    assert new.endpoints[0].active_requests == 1
    assert new.traffic is old.traffic
    # without outlier detection in the new snapshot, ejections are dropped (as Envoy does)
    plain = _cluster("ROUND_ROBIN")
    plain.adopt_state(old)
    assert not plain.endpoints[1].ejected


def test_admin_view_shows_per_endpoint_state() -> None:
    cluster = _cluster(
        "ROUND_ROBIN",
        outlier_detection={
            "consecutive_5xx_errors": 2,
            "base_ejection_time_ms": 30000,
            "max_ejection_percent": 50,
        },
    )
    first = cluster.endpoints[0]
    cluster.on_result(first, 500, 10.0)
    cluster.on_result(first, 502, 10.0)
    view = cluster.admin_view(now=12.0)
    row = view["endpoints"][0]
    assert row["hostport"] == "127.0.0.1:1000" and row["instance"] == "svc-0" and row["version"] == "v1"
    assert row["ejected"] is True and row["times_ejected"] == 1
    assert row["ejection_remaining_ms"] == 28000
    assert row["rq_error"] == 2 and row["rq_success"] == 0
    assert view["endpoints"][1]["ejected"] is False
    assert view["ejections_active"] == 1
    assert {"upstream_rq_pending_overflow", "upstream_rq_retry", "upstream_rq_active"} <= set(view["stats"])


async def test_loadbalance_filter_sets_endpoint_and_answers_uh_when_none(
    backends: object, send: Handler
) -> None:
    (one,) = await backends("one")  # type: ignore[operator]
    config = snapshot_with({"svc|": cluster_spec([one.port])})
    handler = build_chain([loadbalance], send)
    request = make_request(config, {})
    response = await handler(request)
    assert response.status == 200 and request.endpoint.port == one.port
    assert config.clusters["svc|"].endpoints[0].rq_success == 1
    assert config.clusters["svc|"].endpoints[0].active_requests == 0

    spec = cluster_spec([one.port])
    spec["endpoints"][0]["healthy"] = False
    empty = snapshot_with({"svc|": spec})
    response = await handler(make_request(empty, {}))
    assert (response.status, response.flags, response.body) == (503, "UH", b"no healthy upstream")
    assert empty.clusters["svc|"].traffic.upstream_cx_none_healthy == 1
    assert len(one.seen) == 1


def test_a_changed_outlier_policy_starts_a_fresh_detector() -> None:
    """Lowering consecutive5xxErrors on a live cluster ejects at the next error (as Envoy's new
    detector does), instead of never because the carried counter is already past the threshold."""
    lenient = {"consecutive_5xx_errors": 1000, "interval_ms": 1000, "base_ejection_time_ms": 30000,
               "max_ejection_percent": 100}
    old = _cluster("ROUND_ROBIN", outlier_detection=lenient)
    dead = old.endpoints[1]
    for _ in range(10):
        old.on_result(dead, None, 1.0)
    assert not dead.ejected and dead.consecutive_5xx == 10
    strict = _cluster("ROUND_ROBIN", outlier_detection={**lenient, "consecutive_5xx_errors": 1})
    strict.adopt_state(old)
    assert strict.endpoints[1].consecutive_5xx == 0 and strict.endpoints[1].rq_error == 10
    strict.on_result(strict.endpoints[1], None, 2.0)
    assert strict.endpoints[1].ejected
    # the same policy pushed again (an unrelated change) keeps the detector's state
    again = _cluster("ROUND_ROBIN", outlier_detection={**lenient, "consecutive_5xx_errors": 1})
    again.adopt_state(strict)
    assert again.endpoints[1].ejected
