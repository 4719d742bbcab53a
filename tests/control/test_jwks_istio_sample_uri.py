"""The JWKS resolver answers the ``jwksUri`` of Istio's JWT tasks (raw.githubusercontent.com) offline."""

from __future__ import annotations

import json

import pytest

from meshkit.config.loader import load_resources
from meshkit.control.jwks import JwksResolver
from meshkit.control.jwt_demo import istio_sample_jwks

TASK_URI = "https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json"


def request_authentication(uri: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "{uri}"
"""


@pytest.mark.parametrize("branch", ["release-1.28", "master"])
async def test_the_tasks_jwks_uri_is_istios_sample_key_set(branch: str) -> None:
    uri = TASK_URI.replace("release-1.28", branch)
    resources = load_resources(request_authentication(uri))
    changes: list[int] = []
    resolver = JwksResolver(lambda: resources, lambda: changes.append(1))
    try:
        resolver.sync()
        state = await resolver.refresh(uri)
        assert state is not None and state.error is None, state
        assert json.loads(resolver.keys[uri] or "") == istio_sample_jwks()
        assert changes
    finally:
        await resolver.close()

