"""Weights that do not sum to 100 (valid in Istio): the compiler keeps them and the sidecar splits
traffic in proportion, exactly the split the analyzer's MK0122 warning announces.

Istio YAML -> compile_snapshot -> the sidecar's RouteTable -> 3000 weighted picks.
"""

from __future__ import annotations

import random
from collections import Counter

from meshkit.config.analyze import analyze
from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.proxy.routing import RouteTable
from tests.config.bookinfo import bookinfo_registry, node_for

SPLIT = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 70}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""
PICKS = 3000


def test_weights_summing_to_90_split_as_the_warning_says() -> None:
    resources = load_resources(SPLIT)
    (warning,) = analyze(resources, bookinfo_registry())
    assert warning.severity.value == "Warning" and "v1 gets 77.8%, v2 22.2%" in warning.text
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    table = RouteTable.from_snapshot(snapshot["outbound"])
    vhost = table.virtual_host("reviews:9080")
    assert vhost is not None
    route = vhost.routes[0]
    rng_state = random.getstate()
    random.seed(14)
    try:
        counts = Counter(route.pick().cluster for _ in range(PICKS))
    finally:
        random.setstate(rng_state)
    share_v1 = 100 * counts["reviews.default|v1"] / PICKS
    assert abs(share_v1 - 77.8) < 5, counts
    assert counts["reviews.default|v1"] + counts["reviews.default|v2"] == PICKS


def test_the_only_destination_gets_everything_whatever_its_weight() -> None:
    only_v1 = SPLIT.replace("    - {destination: {host: reviews, subset: v2}, weight: 20}\n", "")
    resources = load_resources(only_v1.replace("weight: 70", "weight: 0"))
    snapshot = compile_snapshot(resources, bookinfo_registry(), node_for("productpage"))
    vhost = RouteTable.from_snapshot(snapshot["outbound"]).virtual_host("reviews:9080")
    assert vhost is not None and vhost.routes[0].pick().cluster == "reviews.default|v1"
