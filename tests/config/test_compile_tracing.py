"""Tracing in the snapshot: the mesh config's sampling, overridden by Telemetry resources as in Istio."""

from __future__ import annotations

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from tests.config.bookinfo import bookinfo_registry, node_for

MESH = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 10.0
"""
NAMESPACE = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace-wide, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 50
"""
REVIEWS_ONLY = """
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: reviews-quiet, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing:
  - disableSpanReporting: true
"""


def tracing(yaml_text: str, app: str = "reviews", **kwargs: float) -> dict[str, object]:
    resources = load_resources(yaml_text) if yaml_text else []
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for(app), **kwargs)  # type: ignore[arg-type]
    return snapshot["tracing"]  # type: ignore[no-any-return]


def test_mesh_config_default_and_its_override() -> None:
    assert tracing("") == {"sampling": 1.0, "report": True}  # Istio's default: 1%
    assert tracing("", trace_sampling=100.0) == {"sampling": 100.0, "report": True}


def test_telemetry_precedence_workload_over_namespace_over_root() -> None:
    assert tracing(MESH, trace_sampling=100.0) == {"sampling": 10.0, "report": True}
    assert tracing(MESH + "---" + NAMESPACE) == {"sampling": 50.0, "report": True}
    # the workload's Telemetry sets no sampling: inherited from the namespace; reporting off for reviews only
    assert tracing(MESH + "---" + NAMESPACE + "---" + REVIEWS_ONLY) == {"sampling": 50.0, "report": False}
    assert tracing(MESH + "---" + NAMESPACE + "---" + REVIEWS_ONLY, app="ratings") == {
        "sampling": 50.0, "report": True}
    other = NAMESPACE.replace("namespace: default", "namespace: other")
    assert tracing(other) == {"sampling": 1.0, "report": True}


def test_unsupported_fields_and_bad_percentages_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_resources(MESH.replace("randomSamplingPercentage: 10.0", "randomSamplingPercentage: 150"))
    assert "randomSamplingPercentage" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_resources(MESH + "  accessLogging: [{providers: [{name: envoy}]}]\n")
    assert "accessLogging" in str(info.value) and "not supported by meshkit" in str(info.value)
