"""meshkit.lab used from Python against a real local mesh: errors, rules, steps, progress, widgets, charts."""

from __future__ import annotations

import time

import pytest
from traitlets import TraitError

from meshkit.config.loader import load_resources
from meshkit.lab import CheckFailed, Lab, LabError, checks, connect, rules
from meshkit.lab.charts import NODE_FAILING, NODE_OK, edge_label, edge_latency, service_graph, traffic_split
from meshkit.lab.mesh import Mesh
from meshkit.lab.progress import ProgressStore
from meshkit.lab.steps import Note
from meshkit.lab.widgets import ABRouter, FaultPanel, MtlsToggle, canary_slider, rule_editor
from tests.labs.conftest import counted, settle

# what Istio's validation refuses: every weight 0 (MK0102)
ZERO_WEIGHTS = rules.virtual_service("reviews", [{"route": [
    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}])


def test_a_refused_rule_names_the_resource_and_field_without_a_traceback(mesh: Mesh) -> None:
    with pytest.raises(LabError) as caught:
        mesh.apply(ZERO_WEIGHTS)
    err = caught.value
    assert err.messages[0]["field"] == "spec.http[0].route"
    assert err.messages[0]["resource"] == "VirtualService/default/reviews"
    shown = "\n".join(err._render_traceback_())
    assert "Traceback" not in shown and "sum to 0" in shown and "spec.http[0].route" in shown
    assert "spec.http[0].route" in err._repr_html_() and "<script" not in err._repr_html_()
    assert mesh.get("VirtualService", "reviews") is None  # nothing changed


def test_a_route_to_an_undefined_subset_is_applied_and_its_error_shown(mesh: Mesh) -> None:
    """As on Istio, the mesh takes it (requests fail with 503 NC until v9 exists); the answer says why."""
    result = mesh.apply(rules.route("reviews", to="v9"))
    assert result.changed and mesh.get("VirtualService", "reviews") is not None
    shown = str(result)
    assert "error [MK0101]" in shown and "v9" in shown and "[IST0101]" in shown
    assert "MK0101" in result._repr_html_()


def test_bad_yaml_and_bad_arguments_are_clear(mesh: Mesh) -> None:
    with pytest.raises(LabError, match="line 2"):
        mesh.apply("kind: VirtualService\n  bad: [")
    with pytest.raises(LabError, match=r"weights: must add up to 100, they add up to 95"):
        rules.canary("reviews", {"v1": 90, "v3": 5})
    with pytest.raises(LabError, match=r"mode: expected one of"):
        rules.mtls("STRICTEST")
    with pytest.raises(LabError, match="rps must be"):
        mesh.load(rps=0)
    with pytest.raises(LabError, match="no meshkit control plane answered"):
        connect("http://127.0.0.1:9")


def test_every_builder_is_istio_yaml_the_config_loader_accepts() -> None:
    built = [
        rules.route("reviews", to="v1"), rules.canary("reviews", {"v1": 90, "v3": 10}),
        rules.ab_test("reviews", value="jason", to="v2", default="v1"),
        rules.mirror("httpbin", to="v2", percent=50, primary="v1"),
        rules.fault("ratings", delay="7s", percent=100, match={"end-user": "jason"}, to="v1"),
        rules.fault("ratings", abort=500, percent=50), rules.timeout("reviews", "0.5s", to="v2"),
        rules.retries("ratings", 3, per_try_timeout="1s"),
        rules.circuit_breaker("httpbin", consecutive_errors=1, subsets=("v1", "v2")),
        rules.mtls("STRICT"), rules.mtls("PERMISSIVE", workload="reviews"),
        rules.allow("reviews", from_=["bookinfo-productpage"], methods=["GET"]),
        rules.deny("ratings", paths=["/admin"]),
    ]
    loaded = load_resources([dict(r) for r in built])
    assert [r.ref for r in loaded] == [r.ref for r in built]
    assert "fixedDelay: 7s" in rules.fault("ratings", delay="7s").yaml()
    assert "subset: v3" in rules.canary("reviews", {"v1": 90, "v3": 10})._repr_html_()


def test_analyze_history_rollback_and_reset(mesh: Mesh) -> None:
    findings = mesh.analyze(rules.route("reviews", to="v9"))
    assert not findings and "destination.subset" in str(findings)
    assert mesh.analyze() and "No problems" in str(mesh.analyze())
    first = mesh.apply(rules.route("reviews", to="v1")).revision
    mesh.apply(rules.route("reviews", to="v2"))
    mesh.rollback(first)
    assert checks.default_weights(mesh.get("VirtualService", "reviews")) == {"v1": 100}
    assert str(first) in str(mesh.history())
    mesh.reset()
    assert mesh.get("VirtualService", "reviews") is None
    assert mesh.get("DestinationRule", "reviews") is not None


def test_a_step_records_progress_tells_listeners_and_is_strict_when_asked(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ProgressStore(mesh.state_dir)
    store.reset("t-steps")
    lab = Lab("t-steps", mesh)
    seen = []
    lab.on_check(seen.append)
    step = lab.step("v1", "reviews on v1", retry_for=0,
                    check=lambda m: checks.require_weights(m, "reviews", {"v1": 100}),
                    hint="use rules.route", solution="mesh.apply(rules.route('reviews', to='v1'))")
    failed = step.check()
    assert not failed and "no VirtualService named 'reviews'" in failed.reason
    mesh.apply(rules.canary("reviews", {"v1": 50, "v2": 50}))
    assert "sends v1 50%, v2 50% by default; the step wants v1 100%" in step.check().reason
    mesh.apply(rules.route("reviews", to="v1"))
    assert step.check().passed
    assert [r.passed for r in seen] == [False, False, True] and seen[-1].to_dict()["lab"] == "t-steps"
    again = Lab("t-steps", mesh)  # reopening the notebook
    again.step("v1", "reviews on v1", check=lambda m: None)
    assert again.done() == ["v1"]
    widget = again.progress()
    assert widget.children[0].value == 1 and "✔" in widget.children[1].value
    monkeypatch.setenv("MESHKIT_LAB_STRICT", "1")
    mesh.reset()
    with pytest.raises(CheckFailed, match="no VirtualService"):
        step.check()


def test_solutions_stay_hidden_unless_revealed_or_instructor(mesh: Mesh,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_INSTRUCTOR", raising=False)
    lab = Lab("t-solution", mesh)
    step = lab.step("s", "a step", check=lambda m: None, solution="SECRET-ANSWER")
    assert "SECRET-ANSWER" not in str(step.solution())
    assert "<details>" in step.solution()._repr_html_()  # folded in the notebook until clicked
    assert "SECRET-ANSWER" in str(step.solution(reveal=True))
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "1")
    assert "SECRET-ANSWER" in str(step.solution()) and "<details open>" in step.solution()._repr_html_()
    lab.solution_lock = lambda _s: "the instructor releases this solution later"
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "0")
    assert "SECRET-ANSWER" not in step.solution(reveal=True)._repr_html_()


def test_instructor_fast_forwards_a_lab_by_running_earlier_solutions(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    mesh.reset()
    ProgressStore(mesh.state_dir).reset("t-forward")
    lab = Lab("t-forward", mesh)
    lab.step("all-v1", "reviews on v1", retry_for=0,
             check=lambda m: checks.require_weights(m, "reviews", {"v1": 100}),
             solution="mesh.apply(rules.route('reviews', to='v1'))")
    lab.step("canary", "10% to v3", retry_for=0,
             check=lambda m: checks.require_weights(m, "reviews", {"v1": 90, "v3": 10}),
             solution='mesh.apply(rules.canary("reviews", {"v1": 90, "v3": 10}))')
    lab.step("promote", "all to v3", retry_for=0, check=lambda m: None, solution="")
    namespace = {"mesh": mesh, "rules": rules}
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "0")
    with pytest.raises(LabError, match="only be fast-forwarded in instructor mode"):
        lab.fast_forward("promote", namespace)
    assert lab.done() == []
    monkeypatch.setenv("MESHKIT_INSTRUCTOR", "1")
    with pytest.raises(LabError, match="has no step 'nope'"):
        lab.fast_forward("nope", namespace)
    results = lab.fast_forward("promote", namespace)
    assert [(r.step, r.passed) for r in results] == [("all-v1", True), ("canary", True)]
    assert lab.done() == ["all-v1", "canary"]
    # The mesh's real state moved: the canary rule is what the control plane now serves.
    checks.require_weights(mesh, "reviews", {"v1": 90, "v3": 10})
    broken = Lab("t-forward-broken", mesh)
    broken.step("x", "x", retry_for=0, check=lambda m: None, solution="undefined_name.apply()")
    broken.step("y", "y", retry_for=0, check=lambda m: None)
    with pytest.raises(LabError, match="the solution of step 'x' failed: NameError"):
        broken.fast_forward("y", namespace)
    mesh.reset()


def test_canary_slider_applies_weights_as_it_moves(mesh: Mesh) -> None:
    slider = canary_slider(mesh, "reviews", stable="v1", canary="v3", value=0)
    for value in (20, 60):
        slider.slider.value = value
        weights = checks.default_weights(mesh.get("VirtualService", "reviews"))
        assert weights == {"v1": 100 - value, "v3": value}
    assert slider.applied == [20, 60] and "v3 60%" in slider.status.value


def test_rule_editor_shows_analyzer_messages_inline_and_applies(mesh: Mesh) -> None:
    editor = rule_editor(mesh, ZERO_WEIGHTS)
    editor.apply_button.click()
    assert "spec.http[0].route" in editor.status.value and "sum to 0" in editor.status.value
    assert mesh.get("VirtualService", "reviews") is None
    editor.text.value = rules.route("reviews", to="v2").yaml()
    editor.analyze_button.click()
    assert "No problems" in editor.status.value
    editor.apply_button.click()
    assert "configured" in editor.status.value or "created" in editor.status.value
    assert checks.default_weights(mesh.get("VirtualService", "reviews")) == {"v2": 100}


def test_live_charts_fill_from_telemetry_while_a_load_runs_then_stop(mesh: Mesh) -> None:
    mesh.apply(rules.canary("reviews", {"v1": 50, "v3": 50}))
    # The split's last picture (IDLE_GRACE after the 4 s load) looks back 10 s: about a second
    # before the load began, which settling keeps free of earlier tests' requests to v2.
    settle(mesh, quiet=3.0)
    load = mesh.load(rps=20, duration=4)
    split = traffic_split(mesh, "reviews", window=10, max_seconds=30)
    graph = service_graph(mesh, window=10, max_seconds=30)
    assert split.running() and graph.running()
    load.wait(20)
    deadline = time.monotonic() + 25  # the charts stop on their own a few seconds after the load
    while (split.running() or graph.running()) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not split.running() and not graph.running(), (split.running(), graph.running())
    assert split.refreshes >= 3 and not split.last_error, (split.refreshes, split.last_error)
    totals = {t.name: sum(t.y) for t in split.figure.data}
    assert totals["v1"] > 0 and totals["v3"] > 0 and totals.get("v2", 0) == 0, totals
    labels = [a.text for a in graph.figure.layout.annotations]
    assert any("rps" in label for label in labels), (labels, graph.last_error)
    assert "istio-ingressgateway" in graph.figure.data[2].text
    assert edge_label({"rps": 2.0, "error_rate": 0.5, "mtls": True}) == "mTLS · 2.0 rps, 50% err"


def test_ab_router_fault_panel_and_mtls_toggle_apply_real_rules(mesh: Mesh) -> None:
    router = ABRouter(mesh, "reviews")
    router.value.value, router.to.value = "kim", "v3"
    router.apply_button.click()
    checks.require_header_route(mesh, "reviews", header="end-user", value="kim", to="v3")
    with pytest.raises(TraitError):  # not an option: the dropdown refuses it before the mesh sees it
        router.to.value = "v9"
    router.value.value = ""
    router.apply_button.click()  # an empty value is named, inline, and nothing changes
    assert "header and value" in router.status.value
    checks.require_header_route(mesh, "reviews", header="end-user", value="kim", to="v3")
    panel = FaultPanel(mesh, "ratings")
    panel.delay.value, panel.abort.value, panel.percent.value = 2.5, 503, 40
    panel.apply_button.click()
    injected = checks.require_fault(mesh, "ratings", kind="abort")
    assert injected == {"httpStatus": 503, "percentage": {"value": 40.0}}
    assert checks.require_fault(mesh, "ratings", kind="delay")["fixedDelay"] == "2.5s"
    panel.clear_button.click()
    assert mesh.get("VirtualService", "ratings") is None and "no fault" in panel.status.value
    toggle = MtlsToggle(mesh, workload="reviews")
    toggle.mode.value = "STRICT"
    policy = mesh.get("PeerAuthentication", "reviews")
    assert policy is not None and policy["spec"]["mtls"]["mode"] == "STRICT"
    assert "mTLS STRICT" in toggle.status.value
    mesh.delete(policy)


def test_latency_chart_shows_quantiles_per_edge(mesh: Mesh) -> None:
    started = time.time()
    summary = mesh.load(rps=20, duration=2).wait(10)
    counted(mesh, "productpage", summary["completed"], started)  # one scrape after the last answer
    chart = edge_latency(mesh, window=10, live=False)
    bars = {t.name: t for t in chart.figure.data}
    assert set(bars) == {"p50", "p90", "p99"}
    assert any("istio-ingressgateway → productpage" in x for x in bars["p50"].x)
    assert all(p99 >= p50 for p50, p99 in zip(bars["p50"].y, bars["p99"].y, strict=True))
    assert any(y > 0 for y in bars["p99"].y) and not chart.running()


def test_service_graph_colours_a_failing_service_and_keeps_its_picture_when_traffic_stops(mesh: Mesh) -> None:
    settle(mesh, quiet=3.0)
    empty = service_graph(mesh, window=2, live=False)
    assert "no traffic in the last 2 s" in empty.figure.layout.title.text and not empty.figure.data[2].x
    mesh.apply(rules.route("reviews", to="v2"))  # every page calls ratings
    mesh.kill("ratings-v1-0")
    try:
        mesh.load(rps=20, duration=3).wait(15)
        graph = service_graph(mesh, window=5, live=False)
        deadline = time.monotonic() + 10  # telemetry lags a scrape behind
        while time.monotonic() < deadline:
            graph.refresh()
            colours = dict(zip(graph.figure.data[2].text, graph.figure.data[2].marker.color, strict=True))
            if colours.get("ratings-v1") == NODE_FAILING:
                break
            time.sleep(0.5)
        assert colours.get("ratings-v1") == NODE_FAILING, (colours, graph.last_error)
        assert colours["productpage-v1"] == NODE_OK
        assert "no traffic" not in graph.figure.layout.title.text
        low, high = graph.figure.layout.xaxis.range
        assert low < 0 and high > max(graph.figure.data[2].x)  # room for the outer labels
    finally:
        mesh.restart("ratings-v1-0")
    settle(mesh, quiet=5.0)
    drawn = list(graph.figure.data[2].text)
    graph.refresh()  # no traffic in its 5 s window now: the last picture stays, the title says why
    assert list(graph.figure.data[2].text) == drawn
    assert "no traffic in the last 5 s" in graph.figure.layout.title.text


def test_a_note_wraps_between_words_not_inside_them() -> None:
    """Lab 04's prediction wrapped mid-word in JupyterLab ("p / roductpage"): its output CSS gives a
    <pre> `word-break: break-all`, which the note's own style overrides."""
    note = Note("Predict: what does Jason see?", "reviews v2 calls ratings; productpage calls reviews")
    shown = note._repr_html_()
    style = shown.split('<pre style="', 1)[1].split('"', 1)[0]
    rules = dict(item.split(":", 1) for item in style.split(";"))
    assert rules["word-break"] == "normal" and rules["white-space"] == "pre-wrap", rules
    assert rules["overflow-wrap"] == "break-word"  # only a word longer than the line is split
