"""meshkit.lab.security against real meshes: certificates, the wire, client calls, rotation, the checks.

Most tests share the session's lab mesh (`lab_env`, Bookinfo; the clients are deployed into it)
and put its config back with `mesh.reset()`. The rotation test starts its own small mesh whose
certificates live 4 s, so a rotation happens while it watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.lab import CheckFailed, LabError, rules, security
from meshkit.lab.checks import window_since_change
from meshkit.lab.mesh import Mesh
from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from tests.labs.conftest import window_open
from tests.waiting import wait_until_passes

REVIEWS = "http://reviews:9080/reviews/0"
DETAILS = "http://details:9080/details/0"


@pytest.fixture(scope="module")
def mesh(clients_mesh: Mesh) -> Mesh:
    return clients_mesh


def test_certificate_shows_the_spiffe_identity_issuer_and_half_life_rotation(mesh: Mesh) -> None:
    cert = security.certificate(mesh, "reviews-v2-0")
    assert cert.identity == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert "meshkit root CA" in cert.issuer and int(cert.serial, 16) > 0
    # rotation is scheduled at half the lifetime the certificate had when installed
    assert 0 < cert.seconds_until_rotation < cert.seconds_left
    fields = {row["field"]: row["value"] for row in cert.rows()}
    assert fields["namespace / service account"] == "default / bookinfo-reviews"
    assert "reviews-v2-0" in str(cert) and "<table>" in cert._repr_html_()
    # each instance has its own key and certificate, the same identity as its siblings
    assert security.certificate(mesh, "reviews-v1-0").serial != cert.serial


def test_certificates_table_and_clear_errors_for_unknown_or_sidecarless_instances(mesh: Mesh) -> None:
    table = security.certificates(mesh)
    by_instance = {row["instance"]: row for row in table.rows}
    assert by_instance["sleep-v1-0"]["SPIFFE ID"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert "no sidecar" in by_instance["legacy-v1-0"]["SPIFFE ID"]
    with pytest.raises(LabError, match=r"'nosuch-v1-0'.*known: productpage-v1-0"):
        security.certificate(mesh, "nosuch-v1-0")
    with pytest.raises(LabError, match="'legacy-v1-0' has no sidecar"):
        security.certificate(mesh, "legacy")


def test_wire_is_tls_between_sidecars_and_plaintext_from_legacy(mesh: Mesh) -> None:
    secured = security.wire(mesh, "sleep", "reviews-v1-0", path="/reviews/0")
    assert secured.encrypted and not secured.plaintext
    assert secured.sent[:2] == b"\x16\x03" and b"reviews" not in secured.sent
    assert "mutual TLS" in str(secured)
    plain = security.wire(mesh, "legacy", "reviews-v1-0", path="/reviews/0")
    assert plain.plaintext and not plain.encrypted
    assert plain.sent.startswith(b"GET /reviews/0 HTTP/1.1") and plain.received.startswith(b"HTTP/1.1 200")
    with pytest.raises(LabError, match="no sidecar"):
        security.wire(mesh, "sleep", "legacy-v1-0")


def test_permissive_then_strict_checks_follow_the_real_mesh(mesh: Mesh) -> None:
    mesh.reset()
    with pytest.raises(CheckFailed, match="no PeerAuthentication"):
        security.require_namespace_mtls(mesh, "PERMISSIVE")
    mesh.apply(rules.mtls("PERMISSIVE"))
    window_open(mesh, extra=1.0)  # the window starts 1.5 s after the change, spans >= 1 s: no earlier calls
    with pytest.raises(CheckFailed, match=r"answered 0 mTLS and 0 plaintext"):
        security.require_mtls_and_plaintext(mesh, "reviews")
    calls = security.exchange(mesh, [REVIEWS], count=8, interval=0.4)
    assert calls.statuses("sleep") == [200] * 8 and calls.statuses("legacy") == [200] * 8
    _eventually(lambda: security.require_mtls_and_plaintext(mesh, "reviews"))
    with pytest.raises(CheckFailed, match="refused"):  # PERMISSIVE answers plaintext
        security.require_refused(mesh, "legacy", REVIEWS, "reviews")

    mesh.apply(rules.mtls("STRICT"))
    security.require_namespace_mtls(mesh, "STRICT")
    security.require_reaches(mesh, "sleep", REVIEWS)
    security.require_refused(mesh, "legacy", REVIEWS, "reviews")
    refused = sum(row["plaintext_refused"] for row in security.connections(mesh, "reviews").rows)
    assert refused >= 1
    answers = security.access(mesh, {"sleep": [REVIEWS], "legacy": [REVIEWS]})
    assert answers.statuses("sleep") == [200] and answers.statuses("legacy") == [0]
    assert "refused (no HTTP answer)" in str(answers)
    mesh.reset()
    assert security.peer_authentication_mode(mesh) == ""


def test_all_mtls_check_sees_the_plaintext_hop(mesh: Mesh) -> None:
    mesh.reset()
    mesh.apply(rules.mtls("PERMISSIVE"))
    window_open(mesh)  # the check counts traffic from 1.5 s after the change
    security.exchange(mesh, [DETAILS], clients=("legacy",), count=3, interval=0.1)
    mesh.load(rps=10, duration=2).wait()
    _eventually(lambda: _raises(lambda: security.require_all_mtls(mesh, min_requests=10),
                                "not mutual TLS: unknown → details"))
    mesh.apply(rules.mtls("STRICT"))
    window_open(mesh)
    mesh.load(rps=10, duration=2).wait()
    _eventually(lambda: security.require_all_mtls(mesh, min_requests=10))
    graph = mesh.graph(window_since_change(mesh))  # the STRICT period only: its hops all carry the padlock
    plain = [(e["source"], e["target"]) for e in graph["edges"] if not e["mtls"]]
    assert graph["edges"] and not plain, plain
    mesh.reset()


def test_denials_are_counted_from_the_telemetry(mesh: Mesh) -> None:
    mesh.reset()
    mesh.apply(rules.deny("details", paths=["/details/*"], name="details-closed"))
    with pytest.raises(CheckFailed, match="details's sidecar answered 0 requests with 403"):
        security.require_denied(mesh, "details", min_count=1)
    window_open(mesh)
    assert security.access(mesh, {"sleep": [DETAILS]}).statuses("sleep") == [403]
    status, body = security.call(mesh, "sleep", DETAILS)
    assert (status, body) == (403, security.DENIED_BODY)
    _eventually(lambda: security.require_denied(mesh, "details", min_count=2))
    with pytest.raises(CheckFailed, match="still denied since your last change: details"):
        security.require_no_denials(mesh, ["details"])
    assert security.require_policy(mesh, "details-closed")["spec"]["action"] == "DENY"
    mesh.reset()


def test_exchange_bounds_its_arguments(mesh: Mesh) -> None:
    with pytest.raises(LabError, match=r"count: expected 1\.\.50"):
        security.exchange(mesh, count=500)
    with pytest.raises(LabError, match=r"interval: expected 0\.\.2"):
        security.exchange(mesh, interval=10)
    with pytest.raises(LabError, match="seconds: expected"):
        security.watch_rotation(mesh, "reviews-v1-0", seconds=3600)


def test_watch_rotation_returns_at_once_when_the_next_rotation_is_far(mesh: Mesh) -> None:
    began = time.monotonic()
    watch = security.watch_rotation(mesh, "reviews-v1-0", seconds=20)
    assert time.monotonic() - began < 10  # 24 h certificates: nothing to wait for
    assert not watch.rotated and "--cert-ttl" in str(watch)


def test_watch_rotation_sees_a_new_serial_while_pages_keep_loading(tmp_path: Path,
                                                                    lab_env: dict[str, str]) -> None:
    local = LocalMesh(StateDir.open(tmp_path / "home"))
    for attempt, base in enumerate(free_bases(6)):
        try:
            status = local.up(["bookinfo"], base_port=base, timeout=60.0, cert_ttl="4s")
            break
        except MeshError as error:
            if "in use" not in str(error) or attempt >= 3:
                raise
    try:
        short = Mesh(str(status["control"]), ingress_url=str(status["ingress"]), local=local)
        watch = security.watch_rotation(short, "reviews-v1-0", seconds=15, visit_every=0.3)
        assert watch.rotated, str(watch)
        assert len(set(watch.serials)) == len(watch.serials) >= 2
        assert watch.statuses and all(s == 200 for s in watch.statuses), watch.statuses
        assert "rotated" in str(watch)
    finally:
        local.down()


def _raises(fn: object, text: str) -> None:
    try:
        fn()  # type: ignore[operator]
    except CheckFailed as exc:
        if text in str(exc):
            return
        raise
    raise CheckFailed(f"expected a failure saying {text!r}")


def _eventually(fn: Callable[[], object], seconds: float = 10.0) -> None:
    """Telemetry lags a scrape (1 s) behind: retry a check for a bounded time."""
    wait_until_passes(fn, seconds, errors=(CheckFailed,))
