"""CSRs authenticated by TokenReview: the Kubernetes control plane's CA against KMock's answers.

KMock plays the API server's TokenReview endpoint (told what to answer per token); the
sidecar's own certificate client (`meshkit.proxy.tls.ca_client.CaClient`) asks a real
control plane started by `run_kubernetes_control_plane` for a certificate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock as kmocklib
import pytest
from cryptography import x509

from meshkit.k8s.api import KubeAccess
from meshkit.k8s.control_plane import (
    RunningKubernetesControlPlane,
    SyncOptions,
    run_kubernetes_control_plane,
)
from meshkit.proxy.tls.ca_client import CaClient, CertificateFetchError
from meshkit.proxy.tls.x509 import build_csr, generate_key
from tests.k8s.operator_harness import prepare

pytestmark = pytest.mark.timeout(60)
WAIT_S = 15.0
REVIEWS = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"

# token -> the status KMock answers with (anything else: not authenticated)
ANSWERS: dict[str, dict[str, Any]] = {
    "reviews-token": {"authenticated": True, "audiences": ["meshkit-ca"],
                      "user": {"username": "system:serviceaccount:bookinfo:bookinfo-reviews",
                               "groups": ["system:serviceaccounts"]}},
    "api-audience-token": {"authenticated": True, "audiences": ["https://kubernetes.default.svc"],
                           "user": {"username": "system:serviceaccount:bookinfo:bookinfo-reviews"}},
    "admin-token": {"authenticated": True, "audiences": ["meshkit-ca"],
                    "user": {"username": "kubernetes-admin"}},
}


class TokenReviewer:
    """KMock's answers to POST tokenreviews; remembers every review it was sent."""

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        self.reviews: list[dict[str, Any]] = []
        self.down = False
        kmock[f"post {TOKEN_REVIEWS}"] << self.answer

    def answer(self, request: Any) -> dict[str, Any]:
        # KMock keeps created objects by name; TokenReviews have none and are never stored for real
        stored = list(self.kmock.objects.keys())
        for key in [key for key in stored if key[0].plural == "tokenreviews"]:
            del self.kmock.objects[key]
        if self.down:
            raise RuntimeError("etcd is having a bad day")
        self.reviews.append(request.data)
        token = request.data["spec"]["token"]
        status = ANSWERS.get(token, {"authenticated": False, "error": "invalid bearer token"})
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": request.data["spec"], "status": status}


@pytest.fixture()
def reviewer(kmock: Any) -> TokenReviewer:
    prepare(kmock)
    return TokenReviewer(kmock)


@pytest.fixture()
async def plane(kmock: Any, reviewer: TokenReviewer,
                tmp_path: Path) -> AsyncIterator[RunningKubernetesControlPlane]:
    running = await run_kubernetes_control_plane(
        KubeAccess.url(str(kmock.url)), port=0, state_dir=tmp_path / "control", record_address=False,
        sync_options=SyncOptions(debounce_s=0.01))
    try:
        assert await running.sync.wait_synced(WAIT_S)
        yield running
    finally:
        await running.close()


async def sign(plane: RunningKubernetesControlPlane, token: str, identity: str = REVIEWS) -> x509.Certificate:
    chain, _root = await CaClient(plane.url, token).sign(build_csr(generate_key(), identity))
    return x509.load_pem_x509_certificate(chain.encode())


async def test_a_service_account_token_gets_a_certificate_for_its_own_identity(
        plane: RunningKubernetesControlPlane, reviewer: TokenReviewer) -> None:
    certificate = await sign(plane, "reviews-token")
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS]
    [review] = reviewer.reviews
    assert review["kind"] == "TokenReview" and review["apiVersion"] == "authentication.k8s.io/v1"
    assert review["spec"] == {"token": "reviews-token", "audiences": ["meshkit-ca"]}


async def test_the_token_may_not_ask_for_another_identity(plane: RunningKubernetesControlPlane) -> None:
    with pytest.raises(CertificateFetchError) as refused:
        await sign(plane, "reviews-token", "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings")
    assert refused.value.status == 403
    assert "authenticated as " + REVIEWS in str(refused.value)


@pytest.mark.parametrize("token", ["forged-token", "api-audience-token", "admin-token"])
async def test_unauthenticated_wrong_audience_and_non_service_account_tokens_are_refused(
        plane: RunningKubernetesControlPlane, reviewer: TokenReviewer, token: str) -> None:
    with pytest.raises(CertificateFetchError) as refused:
        await sign(plane, token)
    assert refused.value.status == 401
    assert "unknown or revoked token" in str(refused.value)
    assert [r["spec"]["token"] for r in reviewer.reviews] == [token]  # it was asked, and said no


async def test_an_unreachable_token_review_refuses_with_a_reason_and_recovers(
        plane: RunningKubernetesControlPlane, reviewer: TokenReviewer) -> None:
    reviewer.down = True
    with pytest.raises(CertificateFetchError) as refused:
        await sign(plane, "reviews-token")
    assert refused.value.status == 401
    assert "could not be checked with a Kubernetes TokenReview" in str(refused.value)
    reviewer.down = False
    assert (await sign(plane, "reviews-token")).serial_number > 0


async def test_the_root_survives_a_control_plane_restart_in_a_secret(
        kmock: Any, reviewer: TokenReviewer, tmp_path: Path) -> None:
    """The root CA lived in the pod's emptyDir: a restarted control plane made a new root and every
    sidecar's peers stopped verifying. Now it is kept in Secret meshkit-system/meshkit-ca-root."""
    access, sync = KubeAccess.url(str(kmock.url)), SyncOptions(debounce_s=0.01)
    first = await run_kubernetes_control_plane(access, port=0, state_dir=tmp_path / "first",
                                               record_address=False, sync_options=sync)
    try:
        before, root_before = await CaClient(first.url, "reviews-token").sign(
            build_csr(generate_key(), REVIEWS))
    finally:
        await first.close()
    secret = kmock.objects[(kmocklib.resource("", "v1", "secrets"), "meshkit-system", "meshkit-ca-root")]
    assert set(secret["data"]) == {"root-cert.pem", "root-key.pem"}
    # a new pod: an empty state directory, the same cluster
    second = await run_kubernetes_control_plane(access, port=0, state_dir=tmp_path / "second",
                                                record_address=False, sync_options=sync)
    try:
        after, root_after = await CaClient(second.url, "reviews-token").sign(
            build_csr(generate_key(), REVIEWS))
    finally:
        await second.close()
    assert root_after == root_before
    root = x509.load_pem_x509_certificate(root_after.encode())
    for chain in (before, after):  # a sidecar of either generation verifies against the one root
        x509.load_pem_x509_certificate(chain.encode()).verify_directly_issued_by(root)
