"""`security.rotate` and lab 06's rotation check against the session's real lab mesh (24 h certificates).

The check must pass only for a rotation that happened (new serial on the sidecar's /certs) with
traffic after it, none of it failed and every hop into the service mutual TLS; each way it can
fail is produced for real here: no rotation, no traffic since, injected 503s, plaintext callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from meshkit.lab import CheckFailed, LabError, rules, security
from meshkit.lab.mesh import Mesh
from tests.labs.conftest import settle
from tests.waiting import wait_until_passes

INSTANCE = "reviews-v1-0"
REVIEWS = "http://reviews:9080/reviews/0"


@pytest.fixture(scope="module")
def mesh(clients_mesh: Mesh) -> Mesh:
    return clients_mesh


def _check(mesh: Mesh, before: str) -> Callable[[], object]:
    return lambda: security.require_rotation_without_errors(mesh, INSTANCE, before, "reviews")


def _eventually(fn: Callable[[], object], seconds: float = 10.0) -> None:
    """Telemetry lags a scrape (1 s) behind: retry a check for a bounded time."""
    wait_until_passes(fn, seconds, errors=(CheckFailed,))


def _fails_saying(fn: Callable[[], object], text: str, seconds: float = 10.0) -> None:
    """The check fails with ``text`` (retried while the telemetry catches up: it may first fail otherwise)."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        try:
            fn()
        except CheckFailed as exc:
            last = str(exc)
            if text in last:
                return
        time.sleep(0.5)
    raise AssertionError(f"expected the check to fail saying {text!r}; last: {last or 'it passed'}")


def test_rotate_under_load_passes_the_check_only_after_the_rotation(mesh: Mesh) -> None:
    mesh.apply(rules.mtls("STRICT"))
    before = security.certificate(mesh, INSTANCE)
    with pytest.raises(CheckFailed, match=r"still uses the certificate with serial .*security\.rotate"):
        _check(mesh, before.serial)()
    settle(mesh)  # nothing of earlier tests' traffic is scraped after the rotation
    rotation = security.rotate(mesh, INSTANCE)
    assert rotation.rotated and rotation.old["serial"] == before.serial
    assert rotation.new["serial"] == security.certificate(mesh, INSTANCE).serial
    assert rotation.identity == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    text = str(rotation)
    assert before.serial in text and rotation.new["serial"] in text and "valid until" in text
    assert "<table>" in rotation._repr_html_()
    _fails_saying(_check(mesh, before.serial), "requests since reviews-v1-0's rotation")
    load = mesh.load(rps=10, duration=5)
    second = security.rotate(mesh, INSTANCE)  # while the load runs, under STRICT
    stats = load.wait()
    assert stats["codes"] == {"200": stats["sent"]}, stats
    _eventually(_check(mesh, before.serial))
    cert = security.certificate(mesh, INSTANCE)
    assert cert.serial == second.new["serial"] and cert.installed_at
    mesh.reset()


def test_the_check_sees_failed_requests_and_plaintext_hops(mesh: Mesh) -> None:
    mesh.reset()
    mesh.apply(rules.fault("reviews", abort=503, percent=50))
    before = security.certificate(mesh, INSTANCE).serial
    security.rotate(mesh, INSTANCE)
    mesh.load(rps=10, duration=3).wait()
    _fails_saying(_check(mesh, before), "requests failed since the rotation")
    try:
        _check(mesh, before)()
    except CheckFailed as exc:
        assert "productpage-v1 → reviews" in str(exc) and "503" in str(exc), str(exc)

    mesh.reset()  # PERMISSIVE: the legacy client's plaintext calls are answered
    settle(mesh)  # the aborted requests are all scraped before the next rotation
    before = security.certificate(mesh, INSTANCE).serial
    security.rotate(mesh, INSTANCE)
    mesh.load(rps=10, duration=2).wait()
    security.exchange(mesh, [REVIEWS], clients=("legacy",), count=6, interval=0.1)
    _fails_saying(_check(mesh, before), "were not mutual TLS: unknown →")
    mesh.reset()


def test_rotate_refuses_an_instance_without_a_sidecar(mesh: Mesh) -> None:
    with pytest.raises(LabError, match=r"'legacy-v1-0' has no sidecar.*no workload certificate to rotate"):
        security.rotate(mesh, "legacy")
    with pytest.raises(LabError, match="'nosuch'"):
        security.rotate(mesh, "nosuch")
