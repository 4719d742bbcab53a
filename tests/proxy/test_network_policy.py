"""A pod's NetworkPolicy egress at its real sidecar (snapshot ``network_policy``): an upstream address the
section does not allow is never connected to; the request fails as Envoy's connect timeout does (503,
``reset reason: connection timeout``); delivery to the pod's own app (inbound) is not egress."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from meshkit.proxy.snapshot import Snapshot, SnapshotError
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot


def _snapshot(echo_port: int, allowed: list[str] | None) -> dict[str, Any]:
    snap = make_snapshot(echo_port)
    if allowed is not None:
        snap["network_policy"] = {"policies": ["NetworkPolicy/default/p"], "allowed": allowed}
    return snap


async def _get(url: str, proxy: str | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, proxy=proxy) as resp:
        return resp.status, await resp.text()


async def test_an_allowed_endpoint_is_reached(echo_app: EchoApp, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app.port, [f"127.0.0.1:{echo_app.port}"]))
    status, _ = await _get("http://reviews:9080/reviews/0", f"http://127.0.0.1:{proxy.ports['outbound']}")
    assert status == 200


async def test_an_endpoint_the_policy_does_not_allow_times_out(echo_app: EchoApp,
                                                                start_proxy: StartProxy) -> None:
    proxy = await start_proxy(_snapshot(echo_app.port, ["127.0.0.1:1"]))
    status, body = await _get("http://reviews:9080/reviews/0", f"http://127.0.0.1:{proxy.ports['outbound']}")
    assert status == 503
    assert body == ("upstream connect error or disconnect/reset before headers. "
                    "reset reason: connection timeout")
    # the pod's own app still gets what arrives on the inbound listener: that is not egress
    status, _ = await _get(f"http://127.0.0.1:{proxy.ports['inbound']}/reviews/0")
    assert status == 200


@pytest.mark.parametrize(("section", "where"), [
    ("all", "network_policy: expected an object"),
    ({"policies": [], "allowed": ["127.0.0.1"]}, "network_policy.allowed"),
    ({"policies": [1], "allowed": []}, "network_policy.policies"),
])
def test_a_bad_section_is_nacked_by_key(section: Any, where: str) -> None:
    doc = make_snapshot(1)
    doc["network_policy"] = section
    with pytest.raises(SnapshotError, match=f"^{where}"):
        Snapshot.from_json(doc)
