"""A Bookinfo-shaped registry and helpers shared by the config tests (plain data, no processes)."""

from __future__ import annotations

from pathlib import Path

from meshkit.config.loader import load_files, load_resources
from meshkit.config.registry import Endpoint, Node, RegistryView, Service
from meshkit.config.resources import Resource

SAMPLES = Path(__file__).resolve().parent / "istio_samples"

SERVICE_ACCOUNTS = {
    "productpage": "bookinfo-productpage",
    "reviews": "bookinfo-reviews",
    "ratings": "bookinfo-ratings",
    "details": "bookinfo-details",
}
VERSIONS = {"productpage": ["v1"], "reviews": ["v1", "v2", "v3"], "ratings": ["v1"], "details": ["v1"]}

# Bookinfo's ingress VirtualService (hosts "*", bound to a gateway) and an external host
BOOKINFO_GATEWAY_VS = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: external}
spec:
  hosts: [httpbin.org]
  http:
  - route: [{destination: {host: httpbin.org}}]
    timeout: 3s
"""


def bookinfo_registry(*, root_pem: str | None = "ROOT-PEM", has_sidecar: bool = True) -> RegistryView:
    services = tuple(Service(name, "default", 9080) for name in VERSIONS)
    endpoints = []
    port = 41000
    for name, versions in VERSIONS.items():
        for version in versions:
            port += 1
            endpoints.append(
                Endpoint(
                    instance=f"{name}-{version}-0",
                    workload=f"{name}-{version}",
                    service=name,
                    namespace="default",
                    address="127.0.0.1",
                    port=port,
                    labels={"app": name, "version": version},
                    service_account=SERVICE_ACCOUNTS[name],
                    has_sidecar=has_sidecar,
                )
            )
    return RegistryView(services=services, endpoints=tuple(endpoints), root_pem=root_pem)


def node_for(name: str, version: str = "v1", *, namespace: str = "default") -> Node:
    return Node(
        instance=f"{name}-{version}-0",
        namespace=namespace,
        workload=f"{name}-{version}",
        service=name,
        labels={"app": name, "version": version},
        service_account=SERVICE_ACCOUNTS.get(name, "default"),
        app_port=9080,
    )


def sample(*names: str) -> list[Resource]:
    return load_files([SAMPLES / f"{name}.yaml" for name in names])


def one(text: str) -> Resource:
    (resource,) = load_resources(text)
    return resource


def vs(http: str, *, name: str = "reviews", hosts: str = "[reviews]", namespace: str = "default") -> str:
    """A VirtualService's YAML around ``http`` (its ``spec.http`` list, indented as under ``http:``)."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: {hosts}
  http:
{http}"""
