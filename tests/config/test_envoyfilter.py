"""EnvoyFilter: Istio's local rate-limit task loads unchanged, compiles to inbound.rate_limit, and
everything meshkit cannot honour is named, not ignored."""

from __future__ import annotations

import pytest

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.proxy.filters.ratelimit import TokenBucket
from tests.config.bookinfo import SAMPLES, bookinfo_registry, node_for

TASK = (SAMPLES / "envoyfilter-local-ratelimit.yaml").read_text()


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_resources(text)
    return [m.text for m in caught.value.messages]


def test_istio_task_compiles_to_the_sidecars_token_bucket() -> None:
    resources = load_resources(TASK)
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    limit = snapshot["inbound"]["rate_limit"]
    assert limit == {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval_ms": 60_000,
                     "response_headers": {"x-local-rate-limit": "true"}}
    bucket = TokenBucket.from_snapshot(limit)
    assert bucket is not None
    assert [bucket.try_consume(0.0) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.response_headers == (("x-local-rate-limit", "true"),)
    # Other workloads are not selected.
    other = compile_snapshot(resources, bookinfo_registry(), node_for("reviews", "v2"))
    assert other["inbound"]["rate_limit"] is None


def test_namespace_filter_wins_over_the_root_namespace_one() -> None:
    local = TASK.replace("namespace: istio-system", "namespace: default").replace(
        "name: filter-local-ratelimit-svc", "name: local").replace("max_tokens: 4", "max_tokens: 9")
    resources = load_resources(TASK + "\n---\n" + local)
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    assert snapshot["inbound"]["rate_limit"]["max_tokens"] == 9
    elsewhere = compile_snapshot(resources, bookinfo_registry(), node_for("productpage", namespace="prod"))
    assert elsewhere["inbound"]["rate_limit"]["max_tokens"] == 4  # root namespace applies mesh-wide


INLINE = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: inline, namespace: default}
spec:
  workloadSelector: {labels: {app: productpage}}
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_INBOUND}
    patch:
      operation: INSERT_FIRST
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: http_local_rate_limiter
          token_bucket: {max_tokens: 10, tokens_per_fill: 5, fill_interval: 1s}
          filter_enabled: {default_value: {numerator: 100}}
          filter_enforced: {default_value: {numerator: 1000000, denominator: MILLION}}
"""


def test_inline_local_rate_limit_form_is_accepted_and_round_trips() -> None:
    resources = load_resources(INLINE)
    again = load_resources([r.to_dict() for r in resources])
    for loaded in (resources, again):
        snapshot = compile_snapshot(loaded, bookinfo_registry(), node_for("productpage"))
        assert snapshot["inbound"]["rate_limit"] == {
            "max_tokens": 10, "tokens_per_fill": 5, "fill_interval_ms": 1000, "response_headers": {}}


def test_what_meshkit_cannot_honour_is_named() -> None:
    assert _errors(TASK.replace("SIDECAR_INBOUND", "SIDECAR_OUTBOUND")) == [
        "spec.configPatches[0].match.context: SIDECAR_OUTBOUND is not supported by meshkit "
        "(supported: SIDECAR_INBOUND)"]
    half = TASK.replace("numerator: 100\n                  denominator: HUNDRED\n              response",
                        "numerator: 50\n                  denominator: HUNDRED\n              response")
    assert any("filter_enforced of 50% is not supported by meshkit (only 100%)" in e for e in _errors(half))
    no_enforce = TASK.split("              filter_enforced:")[0]
    assert any("filter_enforced must be set to 100%" in e for e in _errors(no_enforce))
    other_filter = TASK.replace("name: envoy.filters.http.local_ratelimit", "name: envoy.filters.http.lua")
    assert any("spec.configPatches[0].patch.value.name" in e for e in _errors(other_filter))
    descriptors = TASK.replace("stat_prefix: http_local_rate_limiter",
                               "stat_prefix: http_local_rate_limiter\n              descriptors: []")
    assert any("descriptors is not supported by meshkit" in e for e in _errors(descriptors))
