"""A pod's Kubernetes NetworkPolicy egress, as its sidecar's upstream connections meet it.

In Kubernetes the sidecar shares its pod's network namespace, so the CNI drops the packets of any
connection the pod's Egress NetworkPolicies do not allow: Envoy's connect then times out (response
flag ``UF``, ``upstream connect error or disconnect/reset before headers. reset reason: connection
timeout``). The control plane judges every destination this proxy can reach and sends the allowed
``address:port`` list (snapshot ``network_policy``, `meshkit.config.network_policy_snapshot`);
`parse` turns it into a frozenset once per snapshot, and a connect checks the chosen endpoint's
``hostport`` against it (one set lookup, nothing allocated). A dropped connect "hangs" for the
cluster's connect timeout capped at `DROP_SECONDS` (Istio's default connect timeout is 10 s; the
local mesh keeps the tasks quick), then fails as a timeout.

Only outbound connections are checked: delivery to the pod's own app is not egress.
It must not import anything but the standard library and the proxy's own modules (the proxy is a leaf).
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from meshkit.proxy.http import ConnectFailure

DROP_SECONDS = 1.0
TIMEOUT_REASON = "connection timeout"  # Envoy's reset reason for a connect that timed out


class DroppedConnect(ConnectFailure):
    """A connect a NetworkPolicy dropped: Envoy's ``UF`` after its connect timeout."""

    reset_reason = TIMEOUT_REASON


def parse(section: Any) -> frozenset[str] | None:
    """The allowed ``address:port`` set of snapshot ``network_policy`` (None: not restricted)."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"network_policy: expected an object, got {type(section).__name__}")
    allowed = section.get("allowed")
    if not isinstance(allowed, list) or not all(isinstance(a, str) and ":" in a for a in allowed):
        raise ValueError(f"network_policy.allowed: expected a list of 'address:port', got {allowed!r}")
    policies = section.get("policies")
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise ValueError(f"network_policy.policies: expected a list of strings, got {policies!r}")
    return frozenset(allowed)


async def hang(limit: float) -> None:
    """Wait as a connect whose packets are dropped does: ``limit`` capped at `DROP_SECONDS`."""
    await asyncio.sleep(min(limit, DROP_SECONDS))


async def drop(limit: float) -> NoReturn:
    """`hang`, then fail as Envoy's connect timeout (``UF``, reset reason ``connection timeout``)."""
    await hang(limit)
    raise DroppedConnect(TIMEOUT_REASON)
