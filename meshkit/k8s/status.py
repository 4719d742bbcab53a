"""The ``status`` meshkit's operator writes on Istio resources, as a pure function.

Shape (the CRDs' status schema in `meshkit.k8s.crds`): ``observedGeneration``, one ``Ready``
condition (False when the analyzer reports an error about the resource), and
``validationMessages`` listing every finding (errors, warnings, infos) with its code and field,
like Istio's ``status.validationMessages``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from meshkit.config.messages import Message, Severity

READY = "Ready"


def build_status(
    generation: int | None,
    messages: Sequence[Message],
    previous: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole status; ``lastTransitionTime`` only moves when the Ready status changes."""
    failed = [m for m in messages if m.severity == Severity.ERROR]
    ready = "False" if failed else "True"
    timestamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = ready_condition(previous)
    if before is not None and before.get("status") == ready and before.get("lastTransitionTime"):
        timestamp = str(before["lastTransitionTime"])
    if failed:
        reason = "ValidationFailed"
        text = f"{len(failed)} error(s); first: {failed[0]}"
    else:
        reason = "Accepted"
        text = "accepted by meshkit" + (f" with {len(messages)} finding(s)" if messages else "")
    condition: dict[str, Any] = {"type": READY, "status": ready, "reason": reason, "message": text,
                                 "lastTransitionTime": timestamp}
    status: dict[str, Any] = {
        "conditions": [condition],
        "validationMessages": [
            {"code": m.code, "level": m.severity.value, "field": m.field, "message": m.text} for m in messages
        ],
    }
    if generation is not None:
        status["observedGeneration"] = generation
        condition["observedGeneration"] = generation
    return status


def ready_condition(status: dict[str, Any] | None) -> dict[str, Any] | None:
    for condition in (status or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == READY:
            return condition
    return None
