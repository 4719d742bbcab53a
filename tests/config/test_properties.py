"""Property checks over generated input: durations, weight validation, compile determinism."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.resources import parse_duration_ms
from tests.config.bookinfo import SAMPLES, bookinfo_registry, node_for

FEW = settings(max_examples=60, deadline=None)


@FEW
@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_composite_durations(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    assert parse_duration_ms(text) == ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis
    assert parse_duration_ms(f"{seconds}.{millis:03d}s") == seconds * 1000 + millis


@FEW
@given(st.lists(st.one_of(st.none(), st.integers(0, 100)), min_size=1, max_size=4))
def test_weight_check_matches_its_rule(weights: list[int | None]) -> None:
    route = [
        {"destination": {"host": "reviews"}, **({"weight": w} if w is not None else {})} for w in weights
    ]
    (vs,) = load_resources(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews"},
            "spec": {"hosts": ["reviews"], "http": [{"route": route}]},
        }
    )
    total = sum(w or 0 for w in weights)
    several = len(weights) > 1
    findings = [(m.code, m.severity.value) for m in analyze([vs])]
    if several and total == 0:
        assert findings == [("MK0102", "Error")]
    elif (several and total != 100) or (not several and weights[0] not in (None, 100)):
        assert findings == [("MK0122", "Warning")]
    else:
        assert findings == []


# one resource per Kind/namespace/name (the samples reuse names), as in the control plane's store
ALL = list(
    {
        r.key: r
        for r in load_resources("\n---\n".join(p.read_text() for p in sorted(SAMPLES.glob("*.yaml"))))
    }.values()
)
REGISTRY = bookinfo_registry()


@FEW
@given(st.permutations(ALL))
def test_compile_does_not_depend_on_input_order(resources: list) -> None:  # type: ignore[type-arg]
    node = node_for("reviews", "v2")
    assert compile_snapshot(resources, REGISTRY, node) == compile_snapshot(ALL, REGISTRY, node)
