"""Outlier detection and retries on the real local mesh: one of two reviews-v1 instances dies under load.

The mesh runs Bookinfo with ``--replicas reviews-v1=2``. Istio's answer to a crashing pod is a
DestinationRule with outlierDetection (eject the failing endpoint) and a VirtualService with
retries (send a failed try elsewhere); callers should see no errors once the first interval has
passed. The caller here is productpage's sidecar (requests sent through it, without the app's own
retry, so only the mesh can hide the failure).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.mesh import RunningMesh, rule, start_mesh
from tests.e2e.traffic import codes, get_one, paced, pods

RESILIENT = rule("reviews-v1-resilient.yaml")
INTERVAL_S = 1.0  # the DestinationRule's outlierDetection.interval
RPS = 25.0
SECONDS = 7.0
KILL_AT = 2.0


@pytest.fixture(scope="module")
def two_reviews_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("resilience"), ["bookinfo"], {"reviews-v1": 2}) as mesh:
        yield mesh


def _clusters(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=10) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


async def test_killed_instance_is_ejected_and_callers_see_no_errors(two_reviews_v1: RunningMesh) -> None:
    mesh = two_reviews_v1
    caller = mesh.workload("productpage-v1-0")
    victim = mesh.workload("reviews-v1-1")
    url = "http://reviews:9080/reviews/0"
    with mesh.rules(*RESILIENT):
        warm = await paced(url, rps=RPS, seconds=1.0, proxy=caller["outbound_proxy"])
        assert set(pods([s.reply for s in warm])) == {"reviews-v1-0", "reviews-v1-1"}

        load = asyncio.ensure_future(paced(url, rps=RPS, seconds=SECONDS, proxy=caller["outbound_proxy"]))
        began = time.monotonic()
        await asyncio.sleep(KILL_AT)
        mesh.mesh.kill("reviews-v1-1")
        killed_at = time.monotonic() - began
        sent = await load

        # The instance is really gone: its own sidecar answers 503 for it.
        direct = await get_one(f"http://127.0.0.1:{victim['inbound_port']}/reviews/0")
        assert direct.status == 503, direct
        assert not mesh.workload("reviews-v1-1")["healthy"]
        cluster = _clusters(caller["admin_port"])["reviews.default|v1"]
        ejected = {e["instance"]: e["ejected"] for e in cluster["endpoints"]}
        assert ejected == {"reviews-v1-0": False, "reviews-v1-1": True}, cluster["endpoints"]
        assert cluster["stats"]["upstream_rq_retry"] >= 1  # a retry hid the failure
    after = [s for s in sent if s.at > killed_at + INTERVAL_S]
    late_errors = [(round(s.at, 2), s.reply.status, s.reply.body[:80])
                   for s in after if s.reply.status != 200]
    all_errors = [s for s in sent if s.reply.status != 200]
    print(f"kill at {killed_at:.2f}s under {RPS:.0f} rps: {len(all_errors)} errors of {len(sent)} in total, "
          f"{len(late_errors)} after the first interval; retries {cluster['stats']['upstream_rq_retry']}")
    assert len(after) >= RPS * (SECONDS - KILL_AT - INTERVAL_S) * 0.9
    assert late_errors == []
    assert pods([s.reply for s in after]) == {"reviews-v1-0": len(after)}

    # Back on its feet: `restart` brings the app up on the same port and its sidecar serves it again.
    mesh.mesh.restart("reviews-v1-1")
    assert mesh.workload("reviews-v1-1")["healthy"]
    again = await get_one(f"http://127.0.0.1:{victim['inbound_port']}/reviews/0")
    assert again.status == 200 and again.podname == "reviews-v1-1"
    assert codes([s.reply for s in warm]) == {200: len(warm)}
