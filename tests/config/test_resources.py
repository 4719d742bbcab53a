"""Resource models: durations, identity helpers, round-trip through the loader, JSON schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from meshkit.config.kinds import RESOURCE_KINDS
from meshkit.config.loader import load_resources
from meshkit.config.resources import (
    DestinationRule,
    ObjectMeta,
    VirtualService,
    VirtualServiceSpec,
    parse_duration_ms,
)
from tests.config.bookinfo import SAMPLES, one, sample


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("7s", 7000),
        ("500ms", 500),
        ("1m", 60_000),
        ("1.5s", 1500),
        ("1h", 3_600_000),
        ("0.5s", 500),
        ("1m30s", 90_000),
        ("0s", 0),
        (".25s", 250),
        ("2600us", 3),
    ],
)
def test_durations_as_istio_writes_them(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["7", "7x", "-1s", "s", "", "1.5", "1 s", "7sec"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_ms(text)


def test_duration_fields_expose_milliseconds() -> None:
    (vs,) = sample("virtual-service-reviews-timeout")
    assert isinstance(vs, VirtualService)
    route = vs.spec.http[0]  # type: ignore[index]
    assert route.timeout == "0.5s"
    assert route.timeout.ms == 500  # type: ignore[union-attr]


def test_ref_key_and_default_namespace() -> None:
    vs = one("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews]}
""")
    assert vs.kind == "VirtualService"
    assert vs.api_version == "networking.istio.io/v1"
    assert vs.metadata.namespace == "default"
    assert vs.ref == "VirtualService/default/reviews"
    assert vs.key == ("VirtualService", "default", "reviews")


def test_to_dict_is_istio_shaped_and_round_trips() -> None:
    resources = load_resources((SAMPLES / "httpbin-circuit-breaker.yaml").read_text())
    (rule,) = resources
    data = rule.to_dict()
    assert data["apiVersion"] == "networking.istio.io/v1"
    policy = data["spec"]["trafficPolicy"]
    assert policy["connectionPool"]["http"] == {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1}
    assert policy["outlierDetection"]["consecutive5xxErrors"] == 1
    assert policy["outlierDetection"]["baseEjectionTime"] == "3m"
    assert "loadBalancer" not in policy  # unset fields are omitted, not written as null
    assert load_resources(data) == resources


def test_every_sample_round_trips_through_to_dict() -> None:
    resources = load_resources(
        [r.to_dict() for r in sample(*(p.stem for p in sorted(SAMPLES.glob("*.yaml"))))]
    )
    assert len(resources) == 108  # Istio and Gateway API kinds, the Kubernetes objects of the samples
    again = load_resources([r.to_dict() for r in resources])
    assert again == resources


def test_authorization_from_keyword_round_trips() -> None:
    policy = sample("authorization-policy-bookinfo")[2]
    assert policy.to_dict()["spec"]["rules"][0]["from"] == [
        {"source": {"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}}
    ]


def test_json_schema_uses_istio_field_names() -> None:
    schema = DestinationRule.model_json_schema(by_alias=True)
    text = str(schema)
    assert "http1MaxPendingRequests" in text and "consecutive5xxErrors" in text
    assert "http1_max_pending_requests" not in text
    for model in RESOURCE_KINDS.values():
        assert model.model_json_schema(by_alias=True)["type"] == "object"


def test_resources_built_in_python_get_a_default_api_version_and_are_checked() -> None:
    vs = VirtualService(metadata=ObjectMeta(name="r"), spec=VirtualServiceSpec(hosts=["r"]))
    assert vs.to_dict() == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"hosts": ["r"]},
    }
    assert load_resources(vs.to_dict()) == [vs]
    with pytest.raises(ValidationError, match="not accepted for kind DestinationRule"):
        DestinationRule(api_version="security.istio.io/v1", metadata=ObjectMeta(name="r"), spec={"host": "r"})


def test_to_dict_dumps_long_spec_lists_member_by_member_with_the_same_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`Resource.to_dict` dumps a long ``spec`` list one model at a time (short GIL holds): the same
    dict in the same key order as one ``model_dump``, for every Istio sample and a large VirtualService."""
    from meshkit.config import resource_base  # noqa: PLC0415 (the module whose to_dict reads it)

    routes = [{"name": f"r{n}", "match": [{"uri": {"prefix": f"/r{n}/"}, "headers": {"x": {"exact": "1"}}}],
               "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 60},
                         {"destination": {"host": "reviews", "subset": "v2"}, "weight": 40}],
               "retries": {"attempts": 3}, "timeout": "2s"} for n in range(200)]
    big = load_resources({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                          "metadata": {"name": "big"},
                          "spec": {"hosts": ["reviews"], "gateways": ["mesh"], "http": routes}})
    everything = [*big, *(r for path in sorted(SAMPLES.glob("*.yaml")) for r in sample(path.stem))]
    for split_above in (0, 64):
        monkeypatch.setattr(resource_base, "DUMP_SPLIT_ABOVE", split_above)
        for resource in everything:
            whole = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
            assert json.dumps(resource.to_dict()) == json.dumps(whole), resource.ref
