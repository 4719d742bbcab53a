"""The CA's caller check in Kubernetes: a TokenReview of the pod's projected service-account token.

The injector mounts a service-account token with audience ``meshkit-ca`` into every sidecar;
the sidecar presents it as the ``token`` of ``POST /api/v1/ca/sign``. `TokenReviewAuthenticator`
(a `meshkit.control.ca.CallerAuthenticator`) asks the API server whether that token is valid
for the audience and whose it is; ``system:serviceaccount:<ns>:<sa>`` becomes the identity
``spiffe://cluster.local/ns/<ns>/sa/<sa>``, the only one the CA will sign for that caller.

Refused (None, the API answers 401): a token the API server does not authenticate, one not
valid for the audience (the review's ``status.audiences`` must name it, as the API asks
audience-aware clients to check), or one of a user that is not a service account. When the
API server cannot be asked, the CSR is refused with 401 and a message saying so (the sidecar
retries).
"""

from __future__ import annotations

import logging
import re

from meshkit.control.ca import AuthenticationFailed, CaError, spiffe_identity
from meshkit.k8s.api import KubeApi, KubeApiError
from meshkit.k8s.names import TOKEN_AUDIENCE

log = logging.getLogger("meshkit.k8s.control_plane")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
_SERVICE_ACCOUNT = re.compile(r"^system:serviceaccount:(?P<ns>[^:]+):(?P<sa>[^:]+)$")


class TokenReviewAuthenticator:
    """Token -> SPIFFE identity by a TokenReview (``authentication.k8s.io/v1``)."""

    cache_seconds = 30.0  # the control plane API reuses an answer this long (not one review per ACK)

    def __init__(self, api: KubeApi, audience: str = TOKEN_AUDIENCE) -> None:
        self.api = api
        self.audience = audience

    async def authenticate(self, credential: str) -> str | None:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": credential, "audiences": [self.audience]}}
        try:
            answer = await self.api.create(TOKEN_REVIEWS, review)
        except KubeApiError as error:
            log.warning("TokenReview failed: %s", error)
            raise AuthenticationFailed(f"ca/sign: the token could not be checked with a Kubernetes "
                                       f"TokenReview ({error}); try again") from error
        status = answer.get("status") or {}
        if status.get("authenticated") is not True:
            log.info("TokenReview: token not authenticated (%s)", status.get("error") or "no reason given")
            return None
        if self.audience not in (status.get("audiences") or []):
            log.info("TokenReview: token authenticated but not for audience %s (audiences: %s)",
                     self.audience, status.get("audiences"))
            return None
        username = str((status.get("user") or {}).get("username") or "")
        match = _SERVICE_ACCOUNT.match(username)
        if match is None:
            log.info("TokenReview: %r is not a service account", username)
            return None
        try:
            return spiffe_identity(match["ns"], match["sa"])
        except CaError:  # a name no SPIFFE id can carry
            log.info("TokenReview: %r gives no valid SPIFFE identity", username)
            return None
