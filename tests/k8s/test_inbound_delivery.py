"""A captured pod's inbound requests reach its app at the pod IP, as Istio >= 1.10 delivers them.

A pod network namespace with the committed capture rules and a real ``meshkit proxy --capture``
(uid 1337, ``INSTANCE_IP`` set as the injector sets it from ``status.podIP``); the app binds to the
pod IP only, as many servers do. A client in the peer namespace calls the pod: the request is
redirected to the sidecar's inbound port, and the sidecar delivers it to ``POD_IP:PORT`` from
127.0.0.6, the source the capture rules let through (Istio's InboundPassthroughCluster bind
address). Before, the sidecar delivered to 127.0.0.1, where such an app does not listen: 503.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.k8s.netns_pod import POD_IP, Namespaces
from tests.k8s.test_passthrough import _admin, _capture, _proxy, readable  # noqa: F401 (fixture)
from tests.proxy.conftest import make_snapshot

pytestmark = pytest.mark.timeout(120)
APP_PORT = 9080


def _call_from_the_peer(namespaces: Namespaces) -> str:
    """The status line of a call from the peer to the pod's app port (captured: via the sidecar)."""
    return namespaces.probe(namespaces.peer, "http", POD_IP, str(APP_PORT), "productpage")


def _app_bound_to_the_pod_ip(namespaces: Namespaces, readable: Path) -> None:  # noqa: F811
    """Start the app on POD_IP only and wait until it answers a call from inside the pod (the
    app's own loopback traffic is not captured; http.server answers HTTP/1.0)."""
    namespaces.start(namespaces.pod, [sys.executable, "-m", "http.server", str(APP_PORT), "--bind", POD_IP,
                                      "--directory", str(readable)])
    deadline = time.monotonic() + 20
    direct = ("http", POD_IP, str(APP_PORT), "x")
    while not (answer := namespaces.probe(namespaces.pod, *direct)).endswith(" 200 OK"):
        assert time.monotonic() < deadline, f"the app did not start: {answer}"
        time.sleep(0.1)


def test_inbound_reaches_an_app_bound_to_the_pod_ip(namespaces: Namespaces, readable: Path) -> None:  # noqa: F811
    _proxy(namespaces, readable, "--capture", env={"INSTANCE_IP": POD_IP},
           config=make_snapshot(9081, app_port=APP_PORT))
    _capture(namespaces)
    _app_bound_to_the_pod_ip(namespaces, readable)
    assert _call_from_the_peer(namespaces) == "HTTP/1.1 200 OK"
    # it went through the sidecar's inbound pipeline: reported by the destination
    metrics = _admin(namespaces, "/stats/prometheus")
    inbound = [line for line in metrics.splitlines()
               if line.startswith("istio_requests_total{") and 'reporter="destination"' in line]
    assert inbound and 'response_code="200"' in inbound[0], metrics[:2000]
    clusters = json.loads(_admin(namespaces, "/clusters"))
    endpoints = clusters[f"inbound|{APP_PORT}||"]["endpoints"]
    assert [e["hostport"] for e in endpoints] == [f"{POD_IP}:{APP_PORT}"]


def test_without_the_pod_ip_the_app_bound_to_it_is_not_reached(namespaces: Namespaces,
                                                               readable: Path) -> None:  # noqa: F811
    """What injected pods had before: delivery to 127.0.0.1, where this app does not listen."""
    _proxy(namespaces, readable, "--capture", config=make_snapshot(9081, app_port=APP_PORT))
    _capture(namespaces)
    _app_bound_to_the_pod_ip(namespaces, readable)
    answer = _call_from_the_peer(namespaces)
    assert answer.startswith("HTTP/1.1 503"), answer
