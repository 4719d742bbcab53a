"""Istio YAML and registry entries shared by the control-plane tests."""

from __future__ import annotations

from typing import Any

DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def virtual_service(subset: str = "v1", name: str = "reviews", timeout: str | None = None,
                    host: str = "reviews") -> str:
    timeout_line = f"    timeout: {timeout}\n" if timeout else ""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}, subset: {subset}}}
{timeout_line}"""


BOOKINFO_REVIEWS = DESTINATION_RULE + "---\n" + virtual_service("v1")

# a route to a subset no DestinationRule defines: the analyzer's Error MK0101, reported, not refused
# (Istio's API server accepts it)
BAD_VIRTUAL_SERVICE = virtual_service("v9", name="ratings-bad", host="ratings")

# what Istio's validation refuses: weights that sum to 0 (MK0102)
REFUSED_VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-refused}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
      weight: 0
    - destination: {host: reviews}
      weight: 0
"""

SERVICE: dict[str, Any] = {"name": "reviews", "namespace": "default", "port": 9080}


def endpoint(instance: str, version: str = "v1", port: int = 41000, **extra: Any) -> dict[str, Any]:
    return {"instance": instance, "workload": f"reviews-{version}", "service": "reviews",
            "namespace": "default", "address": "127.0.0.1", "port": port,
            "labels": {"app": "reviews", "version": version}, "service_account": "bookinfo-reviews",
            "app_port": 9080, **extra}
