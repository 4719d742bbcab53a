"""The learner API's public surface (what notebooks import) changes only on purpose, as in httpx.

Every public module of `meshkit.lab` declares ``__all__``; this test pins each one, so adding,
renaming or removing a public name fails here until the snapshot below (and the docs) say so.
The labs teach one spelling: ``from meshkit.lab import Lab, connect`` and the rest through its
submodule (``rules.canary``), which the last test checks in every notebook.
"""

from __future__ import annotations

import importlib
import inspect
import re

import nbformat
import pytest

from tests.labs.conftest import LABS

SURFACE: dict[str, list[str]] = {
    "meshkit.lab": [
        "CheckFailed", "CheckResult", "Lab", "LabError", "Mesh", "Step", "connect", "instructor", "join",
    ],
    "meshkit.lab.attend": [
        "NOT_OPEN_YET", "RELEASE_LATER", "Room", "attach", "attendee", "instructor", "join",
    ],
    "meshkit.lab.catalog": ["EXERCISE_KINDS", "LabSpec", "StepSpec", "get", "names"],
    "meshkit.lab.certs": [
        "ADMIN_TIMEOUT", "Certificate", "MAX_WATCH", "ROTATE_TIMEOUT", "Rotation", "RotationWatch",
        "admin_page", "certificate", "certificates", "instance_row", "mtls_counters",
        "require_rotation_without_errors", "rotate", "watch_rotation",
    ],
    "meshkit.lab.charts": [
        "ERROR_RATIO_RED", "FLAG_COLORS", "FLAG_MEANINGS", "IDLE_GRACE", "LiveChart", "NODE_FAILING",
        "NODE_OK", "PALETTE",
        "edge_label", "edge_latency", "flag_counts", "response_flags", "service_graph", "trace",
        "traffic_split",
    ],
    "meshkit.lab.checks": [
        "ALPHA", "CheckFailed", "binomial_p_value", "default_weights", "expect", "probe_versions",
        "requests_by_version", "require_edge_traffic", "require_fault", "require_header_route",
        "require_healthy", "require_mirrored", "require_rule", "require_share", "require_traffic",
        "require_weights", "served_by", "window_since", "window_since_change",
    ],
    "meshkit.lab.display": [
        "BrowserPage", "Findings", "LabError", "Plain", "Rule", "ShownAsTable", "Table", "message_line",
        "show_errors_as_html", "to_yaml",
    ],
    "meshkit.lab.editions": [
        "EditionError", "exercise_cells", "lab_of", "learner", "learner_cells", "main", "placeholder",
        "reference", "write",
    ],
    "meshkit.lab.incidents": [
        "BURST_PAGES", "INCIDENTS", "Incident", "SLOW_SERVICES", "Symptoms", "clear", "evidence", "plant",
        "plant_slow_hop", "slowest_apps", "trace_everything",
    ],
    "meshkit.lab.magic": ["load_ipython_extension", "mesh_cell", "register"],
    "meshkit.lab.mesh": [
        "ApplyResult", "LoadHandle", "MAX_LOAD_SECONDS", "Mesh", "PageVisit", "SETTLE", "SYNC_WAIT",
        "connect",
    ],
    "meshkit.lab.observe": [
        "FETCH_TIMEOUT", "LABEL_MEANINGS", "Sample", "Samples", "TAIL_BYTES", "Trace", "TracedRequest",
        "access_log", "edge", "explain", "find", "metric_text", "metrics", "parse_metrics", "red",
        "red_rows", "trace", "traced_request",
    ],
    "meshkit.lab.progress": ["ProgressStore"],
    "meshkit.lab.prometheus": [
        "BINARY_ENV", "HTTP_TIMEOUT", "INSTALL_HINT", "Prometheus", "QueryResult", "START_TIMEOUT",
        "available", "config", "find_binary", "target_groups",
    ],
    "meshkit.lab.resilience": [
        "ADMIN_TIMEOUT", "Outcome", "Upstream", "clusters", "heal", "make_flaky", "make_slow", "outcomes",
        "require_absorbed", "require_connection_pool", "require_ejected", "require_flag",
        "require_outlier_detection", "require_rate_limited", "require_retries", "require_timeout",
        "restore", "seconds", "upstream",
    ],
    "meshkit.lab.rules": [
        "MTLS_MODES", "NETWORKING", "SECURITY", "TRUST_DOMAIN", "ab_test", "allow", "canary",
        "circuit_breaker", "deny", "fault", "mirror", "mtls", "outlier_detection", "principal",
        "rate_limit", "retries", "route", "timeout", "virtual_service",
    ],
    "meshkit.lab.security": [
        "Calls", "Certificate", "CheckFailed", "DENIED_BODY", "Rotation", "RotationWatch", "Wire", "access",
        "call", "certificate", "certificates", "connections", "denials", "exchange", "inbound_by_security",
        "mtls_counters", "peer_authentication_mode", "require_all_mtls", "require_denied",
        "require_mtls_and_plaintext", "require_namespace_mtls", "require_no_denials", "require_policy",
        "require_reaches", "require_refused", "require_rotation_without_errors", "rotate", "watch_rotation",
        "wire",
    ],
    "meshkit.lab.steps": [
        "CheckResult", "Lab", "Note", "Step", "default_retry", "instructor_mode", "strict_mode",
    ],
    "meshkit.lab.widgets": [
        "ABRouter", "CanarySlider", "FaultPanel", "MtlsToggle", "RuleEditor", "canary_slider",
        "rule_editor",
    ],
    "meshkit.lab.history": [
        "Answer", "CAPABILITIES", "Comparison", "Measurement", "NodeProxy", "ProxiedClient",
        "RequestFailed", "ResilientClient", "SHAPES", "capabilities", "node_snapshot", "percentile",
        "run_bounded",
    ],
    "meshkit.lab.history.compare": [
        "CAPABILITIES", "COLOURS", "Comparison", "LIBRARY", "MAX_TELEMETRY_WINDOW", "MIB", "NODE_AGENT",
        "NODE_PROXY", "REQUESTS_PREFIX", "SHAPES", "SIDECAR", "capabilities",
    ],
    "meshkit.lab.history.library": [
        "Answer", "ProxiedClient", "RETRY_STATUSES", "RequestFailed", "ResilientClient",
    ],
    "meshkit.lab.history.measure": [
        "KEEP_REASONS", "MAX_REQUESTS", "MAX_SECONDS", "Measurement", "WARMUP", "percentile", "run_bounded",
    ],
    "meshkit.lab.history.node_agent": [
        "NAMESPACE", "NODE_NAME", "NodeProxy", "START_TIMEOUT", "STOP_GRACE", "fetch_json", "fetch_text",
        "node_snapshot",
    ],
}

@pytest.mark.parametrize("name", sorted(SURFACE))
def test_public_surface_is_the_pinned_one(name: str) -> None:
    module = importlib.import_module(name)
    assert "__all__" in vars(module), f"{name} has no __all__"
    assert sorted(module.__all__) == SURFACE[name], (
        f"the public surface of {name} changed: added {sorted(set(module.__all__) - set(SURFACE[name]))}, "
        f"removed {sorted(set(SURFACE[name]) - set(module.__all__))}; "
        "if on purpose, update SURFACE and docs/labs.md")
    for public in module.__all__:
        assert getattr(module, public) is not None, f"{name}.{public} is exported but missing"


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_every_public_function_and_class_is_exported_or_private(name: str) -> None:
    module = importlib.import_module(name)
    defined = [key for key, value in vars(module).items()
               if not key.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
               and getattr(value, "__module__", "") == name]
    stray = sorted(set(defined) - set(module.__all__))
    assert not stray, f"{name} defines public {stray} outside __all__: export them or prefix them with _"


def test_the_top_level_has_no_second_spelling_of_the_builders() -> None:
    from meshkit import lab  # noqa: PLC0415

    for builder in ("canary", "route", "mirror", "fault", "allow", "deny", "mtls"):
        assert not hasattr(lab, builder), f"meshkit.lab.{builder}: the labs spell it rules.{builder}"
    assert lab.rules.canary is importlib.import_module("meshkit.lab.rules").canary


@pytest.mark.parametrize("path", sorted(LABS.glob("[0-9][0-9]-*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_import_only_the_public_surface(path) -> None:  # type: ignore[no-untyped-def]
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for module, names in re.findall(r"^from (meshkit\.lab[\w.]*) import ([^\n]+)$", source, re.MULTILINE):
        exported = importlib.import_module(module).__all__
        for imported in (n.strip() for n in names.split("#")[0].split(",")):
            found = importlib.util.find_spec(f"{module}.{imported}") if module == "meshkit.lab" else None
            assert imported in exported or found is not None, \
                f"{path.name}: from {module} import {imported} is private"
