"""meshkit.lab.resilience against a real local mesh: app knobs, the sidecar's clusters view, the checks
(failing with what is missing, passing on real traffic) and restore; plus the two new rule builders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshkit.config.loader import load_resources
from meshkit.lab import CheckFailed, LabError, connect, resilience, rules
from meshkit.lab.mesh import Mesh
from tests.labs.conftest import window_open
from tests.waiting import wait_until

CALLER = "productpage-v1-0"


@pytest.fixture
def mesh(lab_env: dict[str, str]) -> Iterator[Mesh]:
    m = connect()
    m.reset()
    resilience.heal(m)
    yield m
    resilience.restore(m)  # the next test (and the labs after it) get a healthy, rule-free mesh


def test_new_builders_are_istio_yaml_the_config_loader_accepts() -> None:
    built = [rules.outlier_detection("reviews", consecutive_errors=2, subsets=("v1", "v2", "v3")),
             rules.rate_limit("productpage", max_tokens=10, fill_interval="1s")]
    loaded = load_resources([dict(r) for r in built])
    assert [r.ref for r in loaded] == [r.ref for r in built]
    assert "consecutive5xxErrors: 2" in built[0].yaml()
    assert "envoy.filters.http.local_ratelimit" in built[1].yaml()
    with pytest.raises(LabError, match="consecutive_errors: expected a whole number >= 1, got 0"):
        rules.outlier_detection("reviews", consecutive_errors=0)
    with pytest.raises(LabError, match="max_tokens: expected a whole number >= 1"):
        rules.rate_limit("productpage", max_tokens=0)


def test_durations_and_bad_knob_arguments_are_named() -> None:
    assert resilience.seconds("500ms") == 0.5 and resilience.seconds("0.5s") == 0.5
    assert resilience.seconds("2m") == 120.0
    with pytest.raises(LabError, match="duration: expected a number with a unit"):
        resilience.seconds("soon")


def test_knobs_name_unknown_services_and_bad_values(mesh: Mesh) -> None:
    with pytest.raises(LabError, match="service: no running app of service 'nope'"):
        resilience.make_flaky(mesh, "nope")
    with pytest.raises(LabError, match="rate: expected a share from 0 to 1, got 2"):
        resilience.make_flaky(mesh, "details", rate=2)
    with pytest.raises(LabError, match="caller: no sidecar of 'nobody'"):
        resilience.upstream(mesh, "nobody", "details")
    with pytest.raises(LabError, match="host: productpage-v1-0's sidecar has no cluster for 'nohost'"):
        resilience.upstream(mesh, CALLER, "nohost")


def test_a_flaky_app_fails_for_real_and_heal_fixes_it(mesh: Mesh) -> None:
    assert "details-v1-0 now fail 100% of requests with HTTP 500" in resilience.make_flaky(
        mesh, "details", rate=1.0, code=500)
    pages = [mesh.visit() for _ in range(3)]
    assert all(p.says("product details are currently unavailable") for p in pages), pages
    resilience.heal(mesh, "details")
    assert not mesh.visit().says("product details are currently unavailable")

    def scraped() -> resilience.Outcome | None:
        seen = resilience.outcomes(mesh, "details", source="productpage-v1", reporter="destination",
                                   window=30)
        return seen if seen.count("500") >= 3 and seen.count("2") >= 1 else None

    seen = wait_until(scraped, 20, "three 500s and a 2xx of details in the telemetry", interval=0.25)
    assert seen.count("500") >= 3 and seen.count("2") >= 1, seen


def test_checks_say_what_is_missing_before_the_rules(mesh: Mesh) -> None:
    with pytest.raises(CheckFailed, match=r"there is no VirtualService named 'reviews'"):
        resilience.require_timeout(mesh, "reviews", at_most=1.0)
    mesh.apply(rules.route("details"))
    with pytest.raises(CheckFailed, match=r"VirtualService 'details' has no retry policy"):
        resilience.require_retries(mesh, "details")
    with pytest.raises(CheckFailed, match=r"DestinationRule 'details' has no .*connectionPool"):
        resilience.require_connection_pool(mesh, "details")
    with pytest.raises(CheckFailed, match=r"no spec.trafficPolicy.outlierDetection"):
        resilience.require_ejected(mesh, CALLER, "reviews")
    with pytest.raises(CheckFailed, match=r"no EnvoyFilter selects app: productpage"):
        resilience.require_rate_limited(mesh, "productpage")
    mesh.apply(rules.timeout("reviews", "2s", to="v1"))
    with pytest.raises(CheckFailed, match=r"waits 2 s; the step wants a timeout of at most 1 s"):
        resilience.require_timeout(mesh, "reviews", at_most=1.0)


def test_retries_absorb_real_failures_and_the_sidecar_counts_them(mesh: Mesh) -> None:
    resilience.make_flaky(mesh, "details", rate=0.5, code=500)
    mesh.apply(rules.retries("details", attempts=0))  # no retries at all: the check must fail
    window_open(mesh)  # checks judge traffic from 1.5 s after the latest change
    mesh.load(rps=25, duration=3).wait()
    with pytest.raises(CheckFailed, match=r"VirtualService 'details' has no retry policy"):
        resilience.require_retries(mesh, "details")
    with pytest.raises(CheckFailed, match=r"productpage-v1 still got an error for \d+% of its"):
        resilience.require_absorbed(mesh, "productpage-v1", "details", max_error_share=0.2)
    before = resilience.upstream(mesh, CALLER, "details").stats.get("upstream_rq_retry", 0)

    mesh.apply(rules.retries("details", attempts=3, per_try_timeout="1s"))
    window_open(mesh)  # checks judge traffic from 1.5 s after the latest change
    mesh.load(rps=25, duration=3).wait()
    got, served = resilience.require_absorbed(mesh, "productpage-v1", "details", max_error_share=0.2)
    assert served.count("5") > got.count("5")  # details failed more often than productpage saw
    after = resilience.upstream(mesh, CALLER, "details").stats["upstream_rq_retry"]
    assert after - before >= served.count("5") * 0.5, (before, after, served)


def test_an_ejected_instance_gets_no_traffic_and_restore_brings_it_back(mesh: Mesh) -> None:
    mesh.kill("reviews-v3-0")
    mesh.apply(rules.outlier_detection("reviews", consecutive_errors=1000, subsets=("v1", "v2", "v3")))
    window_open(mesh)  # checks judge traffic from 1.5 s after the latest change
    mesh.load(rps=20, duration=3).wait()  # v3 fails, but never 1000 times in a row: no ejection
    with pytest.raises(CheckFailed, match=r"productpage-v1-0's sidecar has no endpoint of reviews ejected"):
        resilience.require_ejected(mesh, CALLER, "reviews")

    mesh.reset()  # no outlier detection for a moment: the sidecar drops its consecutive-error counts
    mesh.apply(rules.outlier_detection("reviews", consecutive_errors=1, subsets=("v1", "v2", "v3")))
    window_open(mesh)  # checks judge traffic from 1.5 s after the latest change
    mesh.load(rps=20, duration=4).wait()
    view = resilience.require_ejected(mesh, CALLER, "reviews")
    assert view.ejected() == ["reviews-v3-0"], view
    assert "EJECTED" in str(view) and "reviews-v3-0" in view._repr_html_()

    assert "restarted: reviews-v3-0" in resilience.restore(mesh)
    assert all(w["healthy"] for w in mesh.workloads())
    assert "outlierDetection" not in str(mesh.get("DestinationRule", "reviews"))


def test_rate_limit_answers_429_with_flag_rl(mesh: Mesh) -> None:
    mesh.apply(rules.rate_limit("productpage", max_tokens=5, fill_interval="1s"))
    window_open(mesh)  # checks judge traffic from 1.5 s after the latest change
    mesh.load(rps=20, duration=3).wait()
    seen = resilience.require_rate_limited(mesh, "productpage", at_least=10)
    assert seen.flags["RL"] == seen.count("429")
    with pytest.raises(CheckFailed, match=r"1000 request\(s\) to productpage with response flag RL"):
        resilience.require_flag(mesh, "productpage", "RL", at_least=1000, reporter="destination")
