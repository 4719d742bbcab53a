"""Lab 10's and lab 08's trace checks judge behaviour on real traffic and real traces: each check
fails before its step, fails when the config is changed but the traffic is still wrong (the subset
fixed onto the wrong pods, a circuit breaker raised too little, the fault gone but ratings failing
by itself), and passes with the catalog's solution; the found/slow-hop answers are compared with
what the collector's traces show."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from meshkit.lab import Lab, catalog, connect, incidents, resilience, rules
from meshkit.lab.catalog.lab10_debugging_503s import FIX_YAML
from meshkit.lab.magic import mesh_cell
from meshkit.lab.mesh import Mesh
from meshkit.lab.progress import ProgressStore
from tests.labs.conftest import settle
from tests.waiting import wait_until

LAB = "10-debugging-503s"


@pytest.fixture
def quiet_mesh(lab_env: dict[str, str]) -> Iterator[Mesh]:
    m = connect(start=False)
    m.reset()
    settle(m)
    yield m
    incidents.clear(m)


def _lab(mesh: Mesh, name: str = LAB) -> Lab:
    ProgressStore(mesh.state_dir).reset(name)
    return Lab(name, mesh, namespace={})


def _apply_solution_yaml(mesh: Mesh, number: int) -> None:
    line, _, text = FIX_YAML[number].partition("\n")
    shown = mesh_cell(line.removeprefix("%%mesh"), text, {"mesh": mesh})
    assert "No problems found" in str(shown[0]), shown


def _reason(lab: Lab, step: str, *expected: str) -> str:
    """The reason ``step`` fails, once it says everything ``expected`` (the telemetry of traffic just
    sent lags a scrape behind: until then it may fail for too few calls)."""

    def failing_as_expected() -> str:
        result = lab[step].check(retry_for=0, strict=False)
        assert not result.passed, f"{step} passed where it should not"
        return result.reason if all(e in result.reason for e in expected) else ""

    return wait_until(failing_as_expected, 6, f"{step} to fail saying {expected}", interval=0.3)


def _passes(lab: Lab, step: str) -> None:
    result = lab[step].check(retry_for=4, strict=False)
    assert result.passed, result.reason


def test_incident_1_answer_is_checked_and_the_fix_judged_by_the_canary_traffic(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh)
    _reason(lab, "find-1", "no found_1 in this notebook yet")
    _reason(lab, "fix-1", "VirtualService")  # no canary yet
    symptoms = incidents.plant(quiet_mesh, 1)
    assert symptoms.pages == incidents.BURST_PAGES and symptoms.statuses == {200: incidents.BURST_PAGES}
    assert "track" not in str(symptoms) and "UH" not in str(symptoms)  # the ticket, not the cause
    lab.namespace["found_1"] = ("reviews", "UF")
    _reason(lab, "find-1", "the failing hop's response flag is not UF")
    lab.namespace["found_1"] = ("ratings", "UH")
    _reason(lab, "find-1", "calls to ratings are not the ones failing")
    lab.namespace["found_1"] = ("reviews", "uh")
    _passes(lab, "find-1")
    _reason(lab, "fix-1", "calls to reviews still fail", "UH")  # the plant's own burst: v3's calls fail

    # the subset repaired onto the wrong pods (v2's): no call fails, but no call reaches v3
    wrong = copy.deepcopy(dict(quiet_mesh.get("DestinationRule", "reviews")))
    for subset in wrong["spec"]["subsets"]:
        if subset["name"] == "v3":
            subset["labels"] = {"version": "v2"}
    quiet_mesh.apply(wrong)
    quiet_mesh.load(rps=20, duration=4).wait()
    _reason(lab, "fix-1", "a share this far from it happens with probability", "v3")

    _apply_solution_yaml(quiet_mesh, 1)
    quiet_mesh.load(rps=20, duration=4).wait()
    _passes(lab, "fix-1")


def test_incident_2_fails_until_the_breaker_stops_refusing_under_the_same_load(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh)
    incidents.plant(quiet_mesh, 2)
    lab.namespace["found_2"] = ("details", "UO")
    _passes(lab, "find-2")
    _reason(lab, "fix-2", "calls to details still fail", "UO")  # the plant's own burst

    # raised, but not enough for a slow details under this load
    rule = copy.deepcopy(dict(quiet_mesh.get("DestinationRule", "details")))
    rule["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"maxConnections": 2},
                                                       "http": {"http1MaxPendingRequests": 1}}
    quiet_mesh.apply(rule)
    quiet_mesh.load(rps=20, duration=4).wait()
    _reason(lab, "fix-2", "calls to details still fail", "UO")

    _apply_solution_yaml(quiet_mesh, 2)
    quiet_mesh.load(rps=20, duration=4).wait()
    _passes(lab, "fix-2")


def test_incident_3_fails_while_ratings_fails_even_with_the_fault_removed(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh)
    incidents.plant(quiet_mesh, 3)
    lab.namespace["found_3"] = ("ratings", "FI")
    _passes(lab, "find-3")
    _reason(lab, "fix-3", "a VirtualService for ratings still aborts requests: chaos-friday")

    quiet_mesh.delete(kind="VirtualService", name="chaos-friday")
    resilience.make_flaky(quiet_mesh, "ratings", rate=0.5, code=503)  # ratings now fails by itself
    quiet_mesh.load(rps=20, duration=4).wait()
    _reason(lab, "fix-3", "calls to ratings still fail", "503")

    resilience.heal(quiet_mesh, "ratings")
    quiet_mesh.apply(rules.route("reviews", to="v2"))  # a change: the check's window starts again
    quiet_mesh.load(rps=20, duration=4).wait()
    _passes(lab, "fix-3")


def test_lab_08_slow_hop_answer_is_compared_with_the_newest_slow_trace(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "08-observability")
    shown = incidents.plant_slow_hop(quiet_mesh)
    slow = [r for r in shown.rows if float(r["seconds"]) >= incidents.SLOW_SECONDS]
    assert 3 <= len(shown.rows) <= 12 and slow  # a page served by reviews v1 skips a slow ratings
    slowest = incidents.slowest_apps(quiet_mesh, limit=5)
    trace_id, service = next(iter(slowest.items()))  # the newest
    assert service in incidents.SLOW_SERVICES
    wrong = next(s for s in ("productpage", *incidents.SLOW_SERVICES) if s != service)
    lab.namespace["slow_hop"] = wrong
    _reason(lab, "slow-hop", f"in the newest slow trace ({trace_id}) the time is not spent in {wrong}'s app")
    # the reference edition's own solution finds it from the trace
    spec = catalog.get("08-observability")
    assert spec is not None
    namespace: dict[str, object] = {"mesh": quiet_mesh, "charts": SimpleNamespace(trace=lambda *_: None)}
    exec(spec.step("slow-hop").solution, namespace)  # the catalog's own solution text
    assert namespace["slow_hop"] == service
    lab.namespace["slow_hop"] = service
    _passes(lab, "slow-hop")


def test_instructor_fast_forwards_lab_10_planting_each_incident_on_the_way(
        quiet_mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast-forward runs what the notebook runs before each find step (`incidents.plant`), each YAML
    fix through the cell magic and then its traffic cell; at the target it plants that step's incident,
    so the instructor's demo starts where the notebook stands."""
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "1")
    ProgressStore(quiet_mesh.state_dir).reset(LAB)
    namespace: dict[str, object] = {"mesh": quiet_mesh}  # the notebook's variables, shared with the lab
    lab = namespace["lab"] = Lab(LAB, quiet_mesh, namespace=namespace)
    results = lab.fast_forward("find-2", namespace)
    assert [(r.step, r.passed) for r in results] == [("predict-canary", True), ("find-1", True),
                                                     ("fix-1", True)]
    assert not lab["find-2"].check(retry_for=0, strict=False).passed  # not found yet, but planted:
    spec = catalog.get(LAB)
    assert spec is not None
    exec(spec.step("find-2").solution, namespace)  # the traces show incident 2 (details, UO)
    assert lab["find-2"].check(retry_for=0, strict=False).passed
