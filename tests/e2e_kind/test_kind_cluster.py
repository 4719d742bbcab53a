"""End to end on a real kind cluster: `meshkit kind up`, sidecars injected, bad config rejected, down.

Needs Docker (with a running daemon), kind and kubectl; marked ``kind`` and skipped elsewhere
with the exact reason. Takes minutes (image build, cluster creation).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.k8s import names
from meshkit.k8s.kind import KindOptions, down, missing_prerequisites, up

pytestmark = [pytest.mark.kind, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = KindOptions(cluster="meshkit-e2e", root=ROOT, demo=True)
_MISSING = missing_prerequisites()
if _MISSING:
    pytestmark.append(pytest.mark.skip(reason="kind end-to-end needs: " + "; ".join(_MISSING)))


def _kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--context", OPTIONS.context, *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[KindOptions]:
    up(OPTIONS, progress=print)
    try:
        yield OPTIONS
    finally:
        down(OPTIONS, progress=print)


def test_bookinfo_pods_carry_the_sidecar(cluster: KindOptions) -> None:
    pods = json.loads(_kubectl("-n", "bookinfo", "get", "pods", "-o", "json").stdout)["items"]
    assert len(pods) >= 6
    for pod in pods:
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert names.SIDECAR_CONTAINER in containers, pod["metadata"]["name"]
        assert names.STATUS_ANNOTATION in pod["metadata"]["annotations"]


def test_bad_virtual_service_is_rejected_by_the_webhook(cluster: KindOptions) -> None:
    bad = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 40}
"""
    result = _kubectl("apply", "-f", "-", stdin=bad)
    assert result.returncode != 0
    assert "[MK0102]" in result.stderr and "route weights sum to 90, not 100" in result.stderr
