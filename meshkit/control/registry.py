"""The live service registry: services and the endpoints (workload instances) the runtime registers.

Endpoints come and go (register, deregister, health changes); every change notifies listeners (the
push server recompiles) and is written through to SQLite, so a restarted control plane still knows
the mesh (the local runtime re-registers anyway). ``view()`` hands the immutable
`config.registry.RegistryView` to the pure analyze/compile functions.

An endpoint may carry the port of its local app (``app_port``): that is what a sidecar's inbound
listener forwards to, so ``node_for(id)`` can build the full `Node` of a connecting sidecar.
A sidecar of a workload that no service selects (a client pod in Kubernetes) is no endpoint;
``set_workloads`` gives the registry its nodes (labels, service account) all at once, not
persisted (their source sets them again when it starts).

Registry message codes: MK0910, MK0911 (their meanings: `meshkit.config.codes`).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.config import codes
from meshkit.config.gateway_api import GATEWAY_NAME_LABEL
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.control.store import NotFoundError


@dataclass(frozen=True, slots=True)
class RegisteredEndpoint:
    """An endpoint plus what only its own sidecar needs: the local app port behind it."""

    endpoint: Endpoint
    app_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        e = self.endpoint
        return {"instance": e.instance, "workload": e.workload, "service": e.service,
                "namespace": e.namespace,
                "address": e.address, "port": e.port, "labels": dict(e.labels),
                "service_account": e.service_account, "has_sidecar": e.has_sidecar, "healthy": e.healthy,
                "app_port": self.app_port}

    def node(self) -> Node:
        e = self.endpoint
        return Node(instance=e.instance, namespace=e.namespace, workload=e.workload, service=e.service,
                    labels=dict(e.labels), service_account=e.service_account, kind="sidecar",
                    app_port=self.app_port)


def service_to_dict(service: Service) -> dict[str, Any]:
    return {"name": service.name, "namespace": service.namespace, "port": service.port}


# -- parsing registrations (the API's JSON bodies) ------------------------------------------------


class _Fields:
    """Reads typed fields out of a JSON object, collecting one message per bad field."""

    def __init__(self, doc: Mapping[str, Any], resource: str) -> None:
        self.doc = doc
        self.resource = resource
        self.messages: list[Message] = []

    def _bad(self, name: str, text: str) -> None:
        self.messages.append(Message(codes.MK0910, Severity.ERROR, self.resource, name, text))

    def string(self, name: str, default: str | None = None) -> str:
        value = self.doc.get(name, default)
        if not isinstance(value, str) or not value:
            self._bad(name, f"{name}: required non-empty string" if value is None else
                      f"{name}: expected a non-empty string, got {value!r}")
            return ""
        return value

    def port(self, name: str, *, optional: bool = False) -> int | None:
        value = self.doc.get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self._bad(name, f"{name}: expected a port number 1-65535, got {value!r}")
            return None
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.doc.get(name, default)
        if not isinstance(value, bool):
            self._bad(name, f"{name}: expected true or false, got {value!r}")
            return default
        return value

    def labels(self, name: str) -> dict[str, str]:
        value = self.doc.get(name) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            self._bad(name, f"{name}: expected a mapping of strings to strings, got {value!r}")
            return {}
        return dict(value)

    def unknown(self, allowed: set[str]) -> None:
        for name in sorted(set(self.doc) - allowed):
            self._bad(name, f"{name}: unknown field (known: {', '.join(sorted(allowed))})")

    def raise_if_bad(self) -> None:
        if self.messages:
            raise ConfigError(self.messages)


def _object(doc: object, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        text = f"expected a JSON object, got {type(doc).__name__}"
        raise ConfigError([Message(codes.MK0910, Severity.ERROR, what, "", text)])
    return doc


def parse_service(doc: object) -> Service:
    """A `Service` from ``{"name", "namespace"?, "port"}``; ConfigError naming each bad field."""
    body = _object(doc, "Service")
    fields = _Fields(body, f"Service/{body.get('namespace', 'default')}/{body.get('name', '?')}")
    fields.unknown({"name", "namespace", "port"})
    service = Service(name=fields.string("name"), namespace=fields.string("namespace", "default"),
                      port=fields.port("port") or 0)
    fields.raise_if_bad()
    return service


_ENDPOINT_FIELDS = {"instance", "workload", "service", "namespace", "address", "port", "labels",
                    "service_account", "has_sidecar", "healthy", "app_port"}


def parse_endpoint(doc: object) -> RegisteredEndpoint:
    """A `RegisteredEndpoint` from its JSON (see `RegisteredEndpoint.to_dict`); ConfigError on bad fields."""
    body = _object(doc, "Endpoint")
    fields = _Fields(body, f"Endpoint/{body.get('namespace', 'default')}/{body.get('instance', '?')}")
    fields.unknown(_ENDPOINT_FIELDS)
    instance = fields.string("instance")
    endpoint = Endpoint(
        instance=instance, workload=fields.string("workload", instance or None),
        service=fields.string("service"),
        namespace=fields.string("namespace", "default"), address=fields.string("address", "127.0.0.1"),
        port=fields.port("port") or 0, labels=fields.labels("labels"),
        service_account=fields.string("service_account", "default"),
        has_sidecar=fields.flag("has_sidecar", True), healthy=fields.flag("healthy", True),
    )
    app_port = fields.port("app_port", optional=True)
    fields.raise_if_bad()
    return RegisteredEndpoint(endpoint, app_port)


# -- the registry ----------------------------------------------------------------------------------


class ServiceRegistry:
    """Services and endpoints, persisted write-through, with change notifications."""

    def __init__(self, connection: sqlite3.Connection, *, root_pem: str | None = None) -> None:
        self._db = connection
        self._root_pem = root_pem
        self._services: dict[tuple[str, str], Service] = {}
        self._endpoints: dict[tuple[str, str], RegisteredEndpoint] = {}
        self._workloads: dict[tuple[str, str], Node] = {}  # sidecars of no service, by (ns, instance)
        self._listeners: list[Callable[[], None]] = []
        self._view: RegistryView | None = None
        self._external: dict[str, str] = {}  # "host:port" -> "address:port" (external stand-ins)
        self._real_dns = False
        self._external_ca: str | None = None  # CA (PEM) of the stand-ins' HTTPS certificates
        self._load()

    # -- reading --------------------------------------------------------------------------------

    def view(self) -> RegistryView:
        """The registry now, as immutable data (cached until the next change)."""
        if self._view is None:
            self._view = RegistryView(
                services=tuple(self._services[k] for k in sorted(self._services)),
                endpoints=tuple(self._endpoints[k].endpoint for k in sorted(self._endpoints)),
                root_pem=self._root_pem,
                external_hosts=tuple(sorted(self._external.items())),
                real_dns=self._real_dns,
                external_ca=self._external_ca,
            )
        return self._view

    def services(self) -> list[Service]:
        return [self._services[k] for k in sorted(self._services)]

    def endpoints(self, service: str | None = None, namespace: str | None = None) -> list[RegisteredEndpoint]:
        return [
            self._endpoints[k] for k in sorted(self._endpoints)
            if (service is None or self._endpoints[k].endpoint.service == service)
            and (namespace is None or k[0] == namespace)
        ]

    def node_for(self, proxy_id: str, kind: str = "sidecar") -> Node:
        """The Node of proxy ``<instance>.<namespace>``: from its endpoint if registered, else bare."""
        instance, _, namespace = proxy_id.rpartition(".")
        if not instance:
            instance, namespace = proxy_id, "default"
        registered = self._endpoints.get((namespace, instance))
        if kind != "sidecar":
            # A gateway is its own workload (istio-ingressgateway-0 -> istio-ingressgateway), so
            # metrics name it as Istio does instead of "unknown".
            workload = re.sub(r"-\d+$", "", instance)
            if registered is not None and GATEWAY_NAME_LABEL in registered.endpoint.labels:
                # a gateway the runtime registered with its pod's labels and service account (the proxy
                # of a Gateway API Gateway, `runtime.kube_gateways`): its Deployment's, as on Istio
                e = registered.endpoint
                return Node(instance=instance, namespace=namespace, kind=kind,
                            workload=e.workload or workload, service=e.service, labels=dict(e.labels),
                            service_account=e.service_account or f"{workload}-service-account")
            return Node(instance=instance, namespace=namespace, kind=kind, workload=workload,
                        labels={"app": workload, "istio": workload.removeprefix("istio-")},
                        service_account=f"{workload}-service-account")  # Istio's gateway SA
        if registered is None:
            return self._workloads.get((namespace, instance)) or Node(instance=instance, namespace=namespace,
                                                                      kind=kind)
        return registered.node()

    def service_account_of(self, proxy_id: str, kind: str = "sidecar") -> str | None:
        """The service account proxy ``proxy_id`` runs as, when the registry knows it (else None)."""
        instance, _, namespace = proxy_id.rpartition(".")
        known = kind != "sidecar" or (namespace, instance) in self._endpoints \
            or (namespace, instance) in self._workloads
        return self.node_for(proxy_id, kind).service_account if known else None

    # -- notifications --------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- changing -------------------------------------------------------------------------------

    def set_root_pem(self, root_pem: str | None) -> None:
        if root_pem != self._root_pem:
            self._root_pem = root_pem
            self._changed()

    def external(self) -> dict[str, Any]:
        """Where hosts outside the mesh are: ``{"hosts": {"host:port": "address:port"}, "real_dns": b,
        "ca_pem": the stand-ins' CA or None}``."""
        return {"hosts": dict(sorted(self._external.items())), "real_dns": self._real_dns,
                "ca_pem": self._external_ca}

    def set_external(self, hosts: Mapping[str, str], real_dns: bool, ca_pem: str | None = None) -> bool:
        """Replace the external host map (``meshkit deploy external``, ``--real-dns``) and the CA of the
        stand-ins' HTTPS; whether it changed."""
        if dict(hosts) == self._external and real_dns == self._real_dns and ca_pem == self._external_ca:
            return False
        self._external, self._real_dns, self._external_ca = dict(hosts), real_dns, ca_pem
        self._db.execute("INSERT OR REPLACE INTO registry_external (id, doc) VALUES (1, ?)",
                         (json.dumps(self.external()),))
        self._changed()
        return True

    def set_workloads(self, nodes: list[Node]) -> bool:
        """Replace the nodes of sidecars that belong to no service; returns whether anything changed."""
        workloads = {(node.namespace, node.instance): node for node in nodes}
        if workloads == self._workloads:
            return False
        self._workloads = workloads
        self._changed()
        return True

    def register_service(self, service: Service) -> bool:
        """Add or update ``service``; returns whether anything changed."""
        key = (service.namespace, service.name)
        if self._services.get(key) == service:
            return False
        self._db.execute("INSERT OR REPLACE INTO registry_services (namespace, name, doc) VALUES (?, ?, ?)",
                         (service.namespace, service.name, json.dumps(service_to_dict(service))))
        self._services[key] = service
        self._changed()
        return True

    def deregister_service(self, namespace: str, name: str) -> list[str]:
        """Remove a service and its endpoints; returns the removed endpoint instances."""
        if (namespace, name) not in self._services:
            text = f"service {namespace}/{name} is not registered"
            raise self._unknown(f"Service/{namespace}/{name}", text)
        gone = [k for k, r in self._endpoints.items() if k[0] == namespace and r.endpoint.service == name]
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM registry_services WHERE namespace = ? AND name = ?",
                             (namespace, name))
            self._db.executemany("DELETE FROM registry_endpoints WHERE namespace = ? AND instance = ?", gone)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        del self._services[(namespace, name)]
        for key in gone:
            del self._endpoints[key]
        self._changed()
        return [instance for _, instance in gone]

    def register_endpoint(self, registered: RegisteredEndpoint) -> bool:
        """Add or update an endpoint of a registered service; returns whether anything changed."""
        e = registered.endpoint
        if (e.namespace, e.service) not in self._services:
            raise self._unknown(f"Endpoint/{e.namespace}/{e.instance}",
                                f"service {e.namespace}/{e.service} is not registered; register it first",
                                "service")
        key = (e.namespace, e.instance)
        if self._endpoints.get(key) == registered:
            return False
        self._db.execute("INSERT OR REPLACE INTO registry_endpoints (namespace, instance, doc) "
                         "VALUES (?, ?, ?)",
                         (e.namespace, e.instance, json.dumps(registered.to_dict())))
        self._endpoints[key] = registered
        self._changed()
        return True

    def deregister_endpoint(self, namespace: str, instance: str) -> None:
        if (namespace, instance) not in self._endpoints:
            raise self._unknown(f"Endpoint/{namespace}/{instance}",
                                f"endpoint {namespace}/{instance} is not registered")
        self._db.execute("DELETE FROM registry_endpoints WHERE namespace = ? AND instance = ?",
                         (namespace, instance))
        del self._endpoints[(namespace, instance)]
        self._changed()

    def set_health(self, namespace: str, instance: str, healthy: bool) -> bool:
        registered = self._endpoints.get((namespace, instance))
        if registered is None:
            raise self._unknown(f"Endpoint/{namespace}/{instance}",
                                f"endpoint {namespace}/{instance} is not registered")
        e = registered.endpoint
        updated = Endpoint(e.instance, e.workload, e.service, e.namespace, e.address, e.port, dict(e.labels),
                           e.service_account, e.has_sidecar, healthy)
        return self.register_endpoint(RegisteredEndpoint(updated, registered.app_port))

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _unknown(resource: str, text: str, field: str = "") -> NotFoundError:
        return NotFoundError([Message(codes.MK0911, Severity.ERROR, resource, field, text)])

    def _changed(self) -> None:
        self._view = None
        for listener in list(self._listeners):
            listener()

    def _load(self) -> None:
        for (doc,) in self._db.execute("SELECT doc FROM registry_services"):
            service = parse_service(json.loads(doc))
            self._services[(service.namespace, service.name)] = service
        for (doc,) in self._db.execute("SELECT doc FROM registry_external"):
            external = json.loads(doc)
            self._external, self._real_dns = dict(external["hosts"]), bool(external["real_dns"])
            self._external_ca = external.get("ca_pem")
        for (doc,) in self._db.execute("SELECT doc FROM registry_endpoints"):
            registered = parse_endpoint(json.loads(doc))
            self._endpoints[(registered.endpoint.namespace, registered.endpoint.instance)] = registered
