"""Lab 06 — Mutual TLS: PERMISSIVE, STRICT, mTLS on every hop, and a live certificate rotation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshkit.lab import security
from meshkit.lab.catalog import LabSpec, StepSpec
from meshkit.lab.catalog._common import predict
from meshkit.lab.checks import expect

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["LAB", "REVIEWS"]

REVIEWS = "http://reviews:9080/reviews/0"
RATINGS = "http://ratings:9080/ratings/0"
INSTANCE = "reviews-v1-0"


def _setup(mesh: Mesh, state: dict[str, Any]) -> None:
    state["serial_before"] = security.certificate(mesh, INSTANCE).serial  # the rotation step replaces it


def permissive(mesh: Mesh, _lab: Lab) -> None:
    security.require_namespace_mtls(mesh, "PERMISSIVE")
    security.require_mtls_and_plaintext(mesh, "reviews")


def strict(mesh: Mesh, _lab: Lab) -> None:
    security.require_namespace_mtls(mesh, "STRICT")
    security.require_reaches(mesh, "sleep", REVIEWS)
    security.require_refused(mesh, "legacy", REVIEWS, "reviews")


def padlocks(mesh: Mesh, _lab: Lab) -> None:
    security.require_namespace_mtls(mesh, "STRICT")
    security.require_all_mtls(mesh, min_requests=20)


def rotated(mesh: Mesh, lab: Lab) -> None:
    before = lab.state.get("serial_before")
    expect(isinstance(before, str), f"the lab noted no serial of {INSTANCE}'s certificate before the "
           "rotation: run the lab's first cell again (Lab(...) notes it), then rotate")
    security.require_rotation_without_errors(mesh, INSTANCE, str(before), "reviews", min_requests=20)
    security.require_namespace_mtls(mesh, "STRICT")


def only_ratings_strict(mesh: Mesh, _lab: Lab) -> None:
    """Behaviour, whatever the policies are called: plaintext still reaches reviews, ratings
    refuses it, and the sidecar'd client reaches both."""
    security.require_reaches(mesh, "legacy", REVIEWS)
    security.require_refused(mesh, "legacy", RATINGS, "ratings")
    security.require_reaches(mesh, "sleep", RATINGS)
    security.require_reaches(mesh, "sleep", REVIEWS)


LAB = LabSpec(
    name="06-mtls",
    title="Mutual TLS",
    objectives=("See what auto mTLS does under PERMISSIVE: sidecars already encrypt, plaintext is still "
                "accepted",
                "Make a namespace STRICT and see a plaintext client refused before any HTTP",
                "Read a workload certificate (SPIFFE ID) and rotate it under load with no error"),
    prerequisites=("Lab 00", "What TLS and a certificate are"),
    setup=_setup,
    steps=(
        predict("predict-permissive", "Predict: is sleep → reviews encrypted under PERMISSIVE?",
                "The namespace is PERMISSIVE (no PeerAuthentication). sleep (with a sidecar) calls reviews "
                "(with a sidecar). Is that call encrypted on the wire?",
                ("a) yes: auto mTLS upgrades sidecar-to-sidecar calls; STRICT only refuses plaintext",
                 "b) no: only STRICT turns mTLS on", "c) only if the app uses https://"),
                "a) yes: auto mTLS upgrades sidecar-to-sidecar calls; STRICT only refuses plaintext"),
        StepSpec("permissive", "PERMISSIVE: reviews serves both the mTLS and the plaintext "
                               "client", permissive,
                 task="Apply the namespace's PeerAuthentication in PERMISSIVE mode.",
                 hint="rules.mtls(mode) builds the namespace's PeerAuthentication.",
                 solution='rule = rules.mtls("PERMISSIVE")\nmesh.apply(rule)\nrule',
                 traffic="security.exchange(mesh, [REVIEWS], count=8)"),
        StepSpec("strict", "STRICT: sleep still gets in, legacy is refused", strict,
                 task="Switch the namespace to STRICT.",
                 hint="The same PeerAuthentication, another mode.",
                 solution='mesh.apply(rules.mtls("STRICT"))'),
        StepSpec("padlocks", "Every hop of Bookinfo is mutual TLS", padlocks,
                 task="Under STRICT, start a load through the ingress: 10 requests a second for 6 s.",
                 hint="mesh.load(rps=..., duration=...) starts it in the background; a later cell waits.",
                 solution="mesh.load(rps=10, duration=6)"),
        StepSpec("rotate", "Rotate reviews-v1-0's certificate under load: nothing fails, every hop stays "
                           "mTLS",
                 rotated,
                 task="Start a load (10 requests a second for 8 s), and while it runs rotate the "
                      "certificate of "
                      "reviews-v1-0.",
                 hint="mesh.load(...) returns at once; security.rotate(mesh, instance) asks the sidecar "
                      "for a new certificate.",
                 solution='mesh.load(rps=10, duration=8)                 # Bookinfo page views for 8 s\n'
                          'security.rotate(mesh, "reviews-v1-0")       # POST /certs/rotate on its sidecar'),
        StepSpec("challenge",
                 "Challenge: only ratings is STRICT; the rest of the namespace accepts plaintext",
                 only_ratings_strict,
                 task="Leave the namespace PERMISSIVE and make only the workload ratings STRICT. The check "
                      "calls reviews and ratings from legacy and from sleep.",
                 hint='rules.mtls(mode, workload="ratings") selects one app; the namespace-wide one has no '
                      "selector.",
                 solution='mesh.apply([rules.mtls("PERMISSIVE"), rules.mtls("STRICT", workload="ratings")])'),
    ),
)
