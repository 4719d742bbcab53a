"""Istio's "Accessing External Services" task on the real local mesh, against the external stand-ins.

The mesh runs `clients` (sleep, in the mesh) and `external` (stand-ins for httpbin.org,
edition.cnn.com and www.google.com, outside the mesh on 127.0.0.1); requests leave from sleep's
sidecar, as ``kubectl exec sleep -- curl http://httpbin.org/headers`` does. The YAML is the task's,
unchanged (tests/config/istio_samples/egress-*.yaml); the mode is switched with Istio's ``istio``
ConfigMap in ``istio-system``. No request here can leave 127.0.0.1: every one goes through a
sidecar (an HTTP proxy on 127.0.0.1) and the sidecars only know the stand-ins (real DNS is off).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshkit.config.meshconfig import mesh_config_map
from tests.e2e.mesh import RunningMesh, sample, start_mesh
from tests.e2e.traffic import get_one, istio_requests

SERVICE_ENTRY = sample("egress-serviceentry-httpbin-ext.yaml")
TIMEOUT = sample("egress-virtualservice-httpbin-ext-timeout.yaml")
REGISTRY_ONLY = mesh_config_map({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
SOURCE = {"reporter": "source"}


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("egress"), ["clients", "external"]) as mesh:
        yield mesh


def _sleep(mesh: RunningMesh) -> tuple[str, int]:
    sleep = mesh.workload("sleep-v1-0")
    assert sleep["outbound_proxy"], "sleep must call through its sidecar"
    return sleep["outbound_proxy"], sleep["admin_port"]


async def test_allow_any_passes_through_to_the_stand_in(egress: RunningMesh) -> None:
    proxy, admin = _sleep(egress)
    before = istio_requests(admin, destination_service_name="PassthroughCluster", **SOURCE)
    reply = await get_one("http://httpbin.org/headers", proxy=proxy)
    assert reply.status == 200, reply.body
    assert reply.json()["headers"]["Host"] == "httpbin.org"
    assert istio_requests(admin, destination_service_name="PassthroughCluster", **SOURCE) - before == 1
    # the app itself, through its HTTP_PROXY (kubectl exec sleep -- curl http://httpbin.org/headers)
    sleep = egress.workload("sleep-v1-0")
    fetched = await get_one(f"http://127.0.0.1:{sleep['app_port']}/fetch?url=http://httpbin.org/headers")
    assert fetched.status == 200 and fetched.json()["status"] == 200, fetched.body
    # edition.cnn.com over plain HTTP: the stand-in redirects to HTTPS, as the real site does
    cnn = (await get_one(f"http://127.0.0.1:{sleep['app_port']}/fetch?url=http://edition.cnn.com/politics")).json()
    assert cnn["status"] == 301 and cnn["headers"]["Location"] == "https://edition.cnn.com/politics", cnn
    assert istio_requests(admin, destination_service_name="PassthroughCluster", **SOURCE) - before == 3


async def test_registry_only_blocks_and_a_service_entry_lets_the_host_through(egress: RunningMesh) -> None:
    proxy, admin = _sleep(egress)
    with egress.rules(REGISTRY_ONLY):
        blackholed = istio_requests(admin, destination_service_name="BlackHoleCluster", **SOURCE)
        blocked = await get_one("http://httpbin.org/headers", proxy=proxy)
        assert blocked.status == 502
        assert istio_requests(admin, destination_service_name="BlackHoleCluster", **SOURCE) - blackholed == 1
        with egress.rules(*SERVICE_ENTRY):
            allowed = await get_one("http://httpbin.org/headers", proxy=proxy)
            assert allowed.status == 200, allowed.body
            assert allowed.json()["headers"]["Host"] == "httpbin.org"
            assert istio_requests(admin, destination_service_name="httpbin.org", **SOURCE) >= 1
            # another external host is still blocked
            assert (await get_one("http://edition.cnn.com/politics", proxy=proxy)).status == 502
        # the ServiceEntry deleted: blocked again
        assert (await get_one("http://httpbin.org/headers", proxy=proxy)).status == 502
    # the ConfigMap deleted (rules() waited for every proxy's ACK): Istio's default ALLOW_ANY again
    assert (await get_one("http://httpbin.org/headers", proxy=proxy)).status == 200


async def test_a_timeout_on_the_external_host(egress: RunningMesh) -> None:
    proxy, _ = _sleep(egress)
    with egress.rules(*SERVICE_ENTRY):
        slow = await get_one("http://httpbin.org/delay/5", proxy=proxy)
        assert slow.status == 200 and slow.seconds >= 5
        with egress.rules(*TIMEOUT):
            cut = await get_one("http://httpbin.org/delay/5", proxy=proxy)
    assert cut.status == 504, cut.body
    assert cut.seconds >= 3  # 504 from the sidecar: Istio cut the request off at 3 s (UT), not httpbin.org
