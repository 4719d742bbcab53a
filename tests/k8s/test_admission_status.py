"""Admission verdicts and status from Istio objects as the API server holds them (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshkit.config.messages import Message, Severity
from meshkit.k8s.admission import admission_messages, as_istio_document, rejection_text, status_messages
from meshkit.k8s.status import build_status, ready_condition


def _server_side(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with what the API server adds: uid, resourceVersion, managedFields, status, ..."""
    metadata = {**obj["metadata"], "uid": "1b2c", "resourceVersion": "42", "generation": 2,
                "creationTimestamp": "2026-11-26T00:00:00Z", "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}
    return {**obj, "metadata": metadata, "status": {"conditions": []}}


def _vs(weights: tuple[int, int], subsets: tuple[str, str] = ("v1", "v2")) -> dict[str, Any]:
    return _server_side({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": subsets[0]}, "weight": weights[0]},
            {"destination": {"host": "reviews", "subset": subsets[1]}, "weight": weights[1]},
        ]}]},
    })


DR = _server_side({
    "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
    "metadata": {"name": "reviews", "namespace": "bookinfo"},
    "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                            {"name": "v2", "labels": {"version": "v2"}}]},
})


def test_server_side_fields_are_dropped_before_loading() -> None:
    document = as_istio_document(_vs((50, 50)))
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(document["metadata"]) == {"name", "namespace", "annotations"}
    assert admission_messages(_vs((50, 50))) == []


def test_namespace_from_the_request_when_the_object_has_none() -> None:
    obj = _vs((0, 0))
    del obj["metadata"]["namespace"]
    [message] = admission_messages(obj, namespace="shop")
    assert message.resource == "VirtualService/shop/reviews"


def test_per_resource_errors_reject_cross_resource_findings_do_not() -> None:
    messages = admission_messages(_vs((0, 0)))
    assert [m.code for m in messages] == ["MK0102"]
    assert rejection_text(messages) == (
        "Error [MK0102] (VirtualService/bookinfo/reviews spec.http[0].route) route weights sum to 0: "
        "no destination would receive traffic (Istio: total destination weight = 0) [IST0106]"
    )
    # subsets no DestinationRule defines (yet): not an admission matter
    assert admission_messages(_vs((50, 50), ("v7", "v8"))) == []


def test_loader_errors_are_the_verdict_when_the_object_does_not_load() -> None:
    obj = _vs((50, 50))
    obj["spec"]["http"][0]["corsPolicy"] = {}
    obj["spec"]["hostz"] = ["typo"]
    text = rejection_text(admission_messages(obj))
    assert "spec.http[0].corsPolicy is not supported by meshkit" in text
    assert "spec.hostz: unknown field" in text


def test_status_messages_use_the_other_resources() -> None:
    alone = status_messages(_vs((50, 50)), [])
    assert {m.code for m in alone} == {"MK0101"}
    with_rule = status_messages(_vs((50, 50)), [DR, _vs((50, 50))])  # itself in the index: ignored
    assert with_rule == []
    broken_other = {**DR, "spec": {"host": 7}}
    assert {m.code for m in status_messages(_vs((50, 50)), [broken_other])} == {"MK0101"}


NOW = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
WARNING = Message("MK0103", Severity.WARNING, "VirtualService/bookinfo/reviews", "spec.http[0]", "host?")
ERROR = Message("MK0102", Severity.ERROR, "VirtualService/bookinfo/reviews", "spec.http[0].route", "sum 90")


def test_status_ready_and_messages() -> None:
    status = build_status(4, [WARNING], now=NOW)
    assert status["observedGeneration"] == 4
    ready = ready_condition(status)
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("True", "Accepted",
                                                                                "2026-11-26T01:00:00Z")
    assert status["validationMessages"] == [
        {"code": "MK0103", "level": "Warning", "field": "spec.http[0]", "message": "host?"}
    ]
    failed = build_status(5, [ERROR, WARNING], previous=status, now=LATER)
    ready = ready_condition(failed)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "ValidationFailed")
    assert ready["lastTransitionTime"] == "2026-11-26T02:00:00Z"  # status changed: time moves
    assert "MK0102" in ready["message"]


def test_transition_time_stays_while_the_status_stays() -> None:
    first = build_status(1, [], now=NOW)
    again = build_status(2, [WARNING], previous=first, now=LATER)
    condition = ready_condition(again)
    assert condition is not None and condition["lastTransitionTime"] == "2026-11-26T01:00:00Z"
    assert "observedGeneration" not in build_status(None, [])
