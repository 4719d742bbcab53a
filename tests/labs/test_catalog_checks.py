"""The catalog's checks judge behaviour on real traffic: each one fails when the rule is there but
the traffic is wrong (a 50/50 split where 90/10 is asked, every request mirrored where half is
asked, a sticky route whose others' split is off, stars from v1's pods, a retry budget against the
wrong failure rate), and pass when it is right (lab 00's through the real `meshkit apply -f`).
Progress is state: `mesh.reset()` and reopening a lab re-check; a step that no longer holds is regressed."""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator

import pytest

from meshkit.lab import Lab, catalog, checks, connect, resilience, rules
from meshkit.lab.jupyter import lab_environment
from meshkit.lab.magic import mesh_cell
from meshkit.lab.mesh import Mesh
from meshkit.lab.progress import ProgressStore
from tests.labs.conftest import settle


@pytest.fixture
def quiet_mesh(lab_env: dict[str, str]) -> Iterator[Mesh]:
    m = connect(start=False)
    m.reset()
    settle(m)
    yield m
    m.reset()


def _lab(mesh: Mesh, name: str) -> Lab:
    ProgressStore(mesh.state_dir).reset(name)
    return Lab(name, mesh, namespace={})


def _swapped_subsets(mesh: Mesh, host: str, a: str, b: str) -> dict[str, object]:
    """The DestinationRule of ``host`` with the pod labels of subsets ``a`` and ``b`` swapped: the
    VirtualService still reads as asked, but the traffic lands on the other version."""
    rule = copy.deepcopy(dict(mesh.get("DestinationRule", host)))
    subsets = {s["name"]: s for s in rule["spec"]["subsets"]}
    subsets[a]["labels"], subsets[b]["labels"] = subsets[b]["labels"], subsets[a]["labels"]
    return rule


def test_canary_check_fails_on_the_wrong_split_even_with_the_rule_as_asked(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "02-canary")
    quiet_mesh.apply(rules.canary("reviews", {"v1": 50, "v3": 50}))  # 50/50 where 90/10 is asked
    quiet_mesh.load(rps=25, duration=4).wait()
    assert "sends v1 50%, v3 50% by default; the step wants v1 90%, v3 10%" in \
        lab["canary-10"].check(retry_for=0, strict=False).reason
    # the rule exactly as asked, but the subsets' pods swapped: the traffic is 10/90
    quiet_mesh.apply([rules.canary("reviews", {"v1": 90, "v3": 10}),
                      _swapped_subsets(quiet_mesh, "reviews", "v1", "v3")])
    quiet_mesh.load(rps=25, duration=4).wait()
    failed = lab["canary-10"].check(retry_for=2, strict=False)
    assert not failed.passed and "a share this far from it happens with probability" in failed.reason, failed
    quiet_mesh.reset()
    quiet_mesh.apply(rules.canary("reviews", {"v1": 90, "v3": 10}))
    quiet_mesh.load(rps=25, duration=4).wait()
    assert lab["canary-10"].check(retry_for=4, strict=False).passed


def test_mirror_check_fails_when_every_request_is_copied_where_half_is_asked(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "03-mirroring")
    quiet_mesh.apply(rules.mirror("reviews", to="v2", percent=100, primary="v1"))  # a mirror to v2, as asked
    quiet_mesh.load(rps=25, duration=4).wait()
    failed = lab["mirror-50"].check(retry_for=2, strict=False)
    assert not failed.passed and "copies of the" in failed.reason and "asks for 50%" in failed.reason, failed
    assert lab["mirror-100"].check(retry_for=4, strict=False).passed
    quiet_mesh.apply(rules.mirror("reviews", to="v2", percent=50, primary="v1"))
    quiet_mesh.load(rps=25, duration=4).wait()
    assert lab["mirror-50"].check(retry_for=4, strict=False).passed


def test_sticky_challenge_is_judged_on_the_checks_own_page_views(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "01-request-routing")
    quiet_mesh.apply(rules.ab_test("reviews", header="end-user", value="jason", to="v3", default="v1"))
    failed = lab["challenge"].check(retry_for=0, strict=False)  # Jason on v3, but the others all on v1
    assert not failed.passed and "page views of users other than jason" in failed.reason
    assert "v1 got 60 of 60 requests (100%); the step asks for 50%" in failed.reason, failed
    spec = catalog.get("01-request-routing")
    assert spec is not None
    line, _, yaml_text = spec.step("challenge").solution.partition("\n")
    shown = mesh_cell(line.removeprefix("%%mesh"), yaml_text, {"mesh": quiet_mesh})
    assert "No problems found" in str(shown[0]) and "VirtualService" in str(shown[1])
    assert lab["challenge"].check(retry_for=4, strict=False).passed


def test_reset_and_reopening_a_lab_recheck_and_show_what_no_longer_holds_as_regressed(
        quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "03-mirroring")
    quiet_mesh.apply(rules.mirror("reviews", to="v2", percent=100, primary="v1"))
    quiet_mesh.load(rps=25, duration=4).wait()
    assert lab["mirror-100"].check(retry_for=4, strict=False).passed
    quiet_mesh.reset(recheck=False)  # a lab's clean-up between its parts: the step stays done
    assert lab.done() == ["mirror-100"] and lab.regressed() == []
    shown = lab.solution("mirror-100", reveal=True)  # self-study: shown, and recorded
    assert "rules.mirror" in str(shown)
    quiet_mesh.reset()  # the open lab re-checks at once: the mirror is gone, so is the tick
    assert lab.done() == [] and lab.regressed() == ["mirror-100"]
    assert "1 regressed (mirror-100)" in str(lab.summary())
    again = Lab("03-mirroring", quiet_mesh, namespace={})  # a kernel restart re-runs the first cell
    assert again.done() == [] and again.regressed() == ["mirror-100"]
    entry = again.status()["mirror-100"]
    assert entry["ever"] is True and entry["passed"] is False and entry["solution_seen"] > 0
    assert "1 regressed (mirror-100)" in str(again.summary())
    assert repr(again.summary()) == str(again.summary())  # shown as text, not as a quoted string


def test_terminal_challenge_is_judged_on_the_checks_page_views_not_on_the_command(quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "00-welcome")
    # the rule as asked (v2/v3 half each), but v2's pods swapped with v1's: pages without stars
    quiet_mesh.apply([rules.canary("reviews", {"v2": 50, "v3": 50}),
                      _swapped_subsets(quiet_mesh, "reviews", "v1", "v2")])
    failed = lab["challenge"].check(retry_for=0, strict=False)
    assert not failed.passed and "reviews v1 (no stars) answered" in failed.reason, failed
    quiet_mesh.reset()
    spec = catalog.get("00-welcome")
    assert spec is not None and spec.step("challenge").exercise == "cli"
    # what the learner types in JupyterLab's terminal: a file, then the real `meshkit apply -f`
    script = spec.step("challenge").solution.partition("\n")[2]
    done = subprocess.run(["bash", "-e", "-c", script], env=lab_environment(os.environ), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "reviews" in done.stdout, done.stderr
    assert lab["challenge"].check(retry_for=4, strict=False).passed


def test_retry_budget_challenge_fails_on_the_wrong_failure_rate_with_the_rule_as_asked(
        quiet_mesh: Mesh) -> None:
    lab = _lab(quiet_mesh, "05-resilience")
    try:
        resilience.make_flaky(quiet_mesh, "details", rate=0.6, code=503)  # 60 % where 30 % is asked
        quiet_mesh.apply(rules.retries("details", attempts=1))
        quiet_mesh.load(rps=25, duration=6).wait()
        failed = lab["challenge"].check(retry_for=2, strict=False)
        assert not failed.passed and "the tries details' own sidecar answered" in failed.reason, failed
        # (the reference edition of lab 05 passes it: 30 %, one retry, test_notebooks.py)
    finally:
        resilience.heal(quiet_mesh, "details")


def test_counts_per_version_hold_every_request_sent_and_none_from_before_the_change(quiet_mesh: Mesh) -> None:
    """A browser run showed fewer requests per version than were sent: the window began 1.5 s after
    the change and ended at the last scheduled scrape. Now it runs from the scrape taken when the
    change took effect to the one taken when the load ended."""
    quiet_mesh.apply(rules.canary("reviews", {"v1": 90, "v3": 10}))
    sent = quiet_mesh.load(rps=25, duration=4).wait()  # started at once, as Run All does
    assert sent["completed"] == 100 and sent["codes"] == {"200": 100}, sent
    counts = checks.requests_by_version(quiet_mesh, "reviews")
    assert sum(counts.values()) == 100, counts
    quiet_mesh.apply(rules.canary("reviews", {"v1": 50, "v3": 50}))  # right after the load above
    quiet_mesh.load(rps=25, duration=2).wait()
    counts = checks.requests_by_version(quiet_mesh, "reviews")
    assert sum(counts.values()) == 50, counts  # none of the 100 before the change


def test_shapes_challenge_fails_with_the_fault_as_asked_when_the_app_itself_fails(quiet_mesh: Mesh) -> None:
    """Lab 09's challenge: the VirtualService fault exactly as asked (details aborts 50 % with 503), but
    details' own app fails too, so the runs' answers are wrong (the sidecar's 503s near 75 %, the
    library's calls, which no mesh fault reaches, answered 503): the check fails. Healed, the same
    rule and fresh runs pass — the traffic decided, not the rule."""
    from meshkit.lab.history import Comparison  # noqa: PLC0415 (only this test needs it)

    bench = Comparison(quiet_mesh, service="details", path="/details/0", client="productpage-v1-0")
    ProgressStore(quiet_mesh.state_dir).reset("09-library-node-agent-sidecar")
    lab = Lab("09-library-node-agent-sidecar", quiet_mesh, namespace={"bench": bench})
    try:
        quiet_mesh.apply(rules.fault("details", abort=503, percent=50))  # the challenge's rule
        resilience.make_flaky(quiet_mesh, "details", rate=0.5, code=503)  # the app fails by itself
        for measure in (bench.library, bench.node_agent, bench.sidecar):
            measure(requests=200, max_seconds=10)
        failed = lab["challenge"].check(retry_for=0, strict=False)
        assert not failed.passed, failed
        assert "the sidecar run after the fault" in failed.reason or "the library run got" in failed.reason, \
            failed
        resilience.heal(quiet_mesh, "details")
        for measure in (bench.library, bench.node_agent, bench.sidecar):
            measure(requests=200, max_seconds=10)
        passed = lab["challenge"].check(retry_for=0, strict=False)
        assert passed.passed, passed
    finally:
        bench.close()
        resilience.heal(quiet_mesh, "details")
