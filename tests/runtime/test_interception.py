"""The local mesh's stored interception settings and the per-pod annotations, against a real state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.config.ip_ranges import (
    EXCLUDE_ANNOTATION,
    INCLUDE_ANNOTATION,
    IPRangeError,
    interception_settings,
)
from meshkit.runtime import interception
from meshkit.runtime.state import StateDir

WORKLOADS = [{"name": "httpbin-v1-0", "service": "httpbin", "namespace": "default"},
             {"name": "sleep-v1-0", "service": "sleep", "namespace": "default"}]
SLEEP = WORKLOADS[1]


def _goes_through(state: StateDir, host: str, row: dict[str, object] | None = None) -> bool:
    service, _, rest = host.partition(".")
    return interception.intercepts(state, WORKLOADS, row or SLEEP, host, service=service,
                                   namespace=rest if rest and "." not in rest else "default")


def test_without_settings_everything_goes_through_the_sidecar(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    assert _goes_through(state, "httpbin.org") and _goes_through(state, "httpbin")


def test_stored_include_ranges_apply_until_an_up_without_them(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    included, _ = interception_settings(["values.global.proxy.includeIPRanges=10.96.0.0/16"])
    interception.write(state, included)
    assert (tmp_path / interception.VALUES_FILE).is_file()
    assert not _goes_through(state, "httpbin.org") and _goes_through(state, "httpbin")
    assert not _goes_through(state, "203.0.113.9") and _goes_through(state, "10.96.3.4")
    default, _ = interception_settings([])
    interception.write(state, default)
    assert not (tmp_path / interception.VALUES_FILE).exists() and _goes_through(state, "httpbin.org")


def test_a_pods_annotations_replace_the_mesh_wide_values(tmp_path: Path) -> None:
    state = StateDir.open(tmp_path)
    excluded = {**SLEEP, "ip_ranges": {EXCLUDE_ANNOTATION: "10.96.0.0/16"}}
    assert not _goes_through(state, "httpbin", excluded) and _goes_through(state, "httpbin.org", excluded)
    interception.write(state, interception_settings(["values.global.proxy.includeIPRanges=10.96.0.0/16"])[0])
    everything = {**SLEEP, "ip_ranges": {INCLUDE_ANNOTATION: "*"}}
    assert _goes_through(state, "httpbin.org", everything)
    with pytest.raises(IPRangeError) as caught:
        _goes_through(state, "httpbin.org", {**SLEEP, "ip_ranges": {INCLUDE_ANNOTATION: "10.96.0.0/40"}})
    assert caught.value.field == INCLUDE_ANNOTATION
