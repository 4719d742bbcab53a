"""The live registry: registration, health, notifications, field errors, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.config.messages import ConfigError
from meshkit.control.database import open_database
from meshkit.control.registry import ServiceRegistry, parse_endpoint, parse_service
from meshkit.control.store import NotFoundError
from tests.control.resources import SERVICE, endpoint


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ServiceRegistry]:
    connection = open_database(tmp_path)
    yield ServiceRegistry(connection)
    connection.close()


def test_register_view_and_node(registry: ServiceRegistry) -> None:
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))
    assert registry.register_service(parse_service(SERVICE))
    assert registry.register_endpoint(parse_endpoint(endpoint("reviews-v1-0")))
    assert not registry.register_endpoint(parse_endpoint(endpoint("reviews-v1-0")))  # unchanged: no event
    view = registry.view()
    assert [s.name for s in view.services] == ["reviews"]
    assert [e.instance for e in view.endpoints_of("reviews")] == ["reviews-v1-0"]
    assert registry.view() is view  # cached until a change
    node = registry.node_for("reviews-v1-0.default")
    assert (node.workload, node.service, node.app_port) == ("reviews-v1", "reviews", 9080)
    assert node.labels["version"] == "v1"
    assert node.identity == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert changes == [1, 1]


def test_unknown_proxy_gets_a_bare_node(registry: ServiceRegistry) -> None:
    node = registry.node_for("ingress-0.istio-system", "gateway")
    assert (node.instance, node.namespace, node.kind) == ("ingress-0", "istio-system", "gateway")
    assert node.service is None


def test_health_and_deregistration(registry: ServiceRegistry) -> None:
    registry.register_service(parse_service(SERVICE))
    registry.register_endpoint(parse_endpoint(endpoint("reviews-v1-0")))
    registry.register_endpoint(parse_endpoint(endpoint("reviews-v2-0", "v2", 41001)))
    assert registry.set_health("default", "reviews-v1-0", False)
    assert [e.healthy for e in registry.view().endpoints] == [False, True]
    registry.deregister_endpoint("default", "reviews-v2-0")
    assert [e.instance for e in registry.view().endpoints] == ["reviews-v1-0"]
    assert registry.deregister_service("default", "reviews") == ["reviews-v1-0"]
    assert registry.view().endpoints == () and registry.view().services == ()
    with pytest.raises(NotFoundError, match="endpoint default/reviews-v2-0 is not registered"):
        registry.set_health("default", "reviews-v2-0", True)


def test_endpoint_of_an_unregistered_service_is_refused(registry: ServiceRegistry) -> None:
    with pytest.raises(NotFoundError) as caught:
        registry.register_endpoint(parse_endpoint(endpoint("reviews-v1-0")))
    assert caught.value.messages[0].field == "service"
    assert "service default/reviews is not registered" in caught.value.messages[0].text


def test_bad_registrations_name_every_bad_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint({"instance": "x-0", "service": "x", "port": 70000, "labels": {"a": 1},
                        "healthy": "yes", "colour": "red"})
    fields = sorted(m.field for m in caught.value.messages)
    assert fields == ["colour", "healthy", "labels", "port"]
    assert all(m.resource == "Endpoint/default/x-0" for m in caught.value.messages)
    with pytest.raises(ConfigError, match="port: expected a port number 1-65535, got None"):
        parse_service({"name": "reviews"})
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        parse_service([])


def test_registry_survives_reopening(tmp_path: Path) -> None:
    first = open_database(tmp_path)
    registry = ServiceRegistry(first)
    registry.register_service(parse_service(SERVICE))
    registry.register_endpoint(parse_endpoint(endpoint("reviews-v1-0", healthy=False)))
    first.close()
    second = open_database(tmp_path)
    reopened = ServiceRegistry(second)
    assert [s.port for s in reopened.services()] == [9080]
    [registered] = reopened.endpoints()
    assert (registered.endpoint.healthy, registered.app_port) == (False, 9080)
    second.close()


def test_the_external_host_map_is_in_the_view_and_survives_a_restart(tmp_path: Path) -> None:
    registry = ServiceRegistry(open_database(tmp_path))
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))
    assert registry.set_external({"httpbin.org:80": "127.0.0.1:8100"}, real_dns=False)
    assert not registry.set_external({"httpbin.org:80": "127.0.0.1:8100"}, real_dns=False)  # no change
    assert changes == [1]
    view = registry.view()
    assert view.external_hosts == (("httpbin.org:80", "127.0.0.1:8100"),) and view.real_dns is False
    again = ServiceRegistry(open_database(tmp_path))  # a restarted control plane
    assert again.external() == {"hosts": {"httpbin.org:80": "127.0.0.1:8100"}, "real_dns": False,
                                "ca_pem": None}
    ca_pem = "-----BEGIN CERTIFICATE-----\nstand-in CA\n-----END CERTIFICATE-----\n"
    assert again.set_external({"httpbin.org:443": "127.0.0.1:8101"}, real_dns=False, ca_pem=ca_pem)
    assert again.view().external_ca == ca_pem
    assert ServiceRegistry(open_database(tmp_path)).external()["ca_pem"] == ca_pem  # kept across a restart
    assert again.set_external({}, real_dns=True)
    assert ServiceRegistry(open_database(tmp_path)).view().real_dns is True
