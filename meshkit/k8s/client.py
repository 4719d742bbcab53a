"""A small synchronous client of the Kubernetes API (stdlib urllib), for the CLI and notebooks.

What it is for: `meshkit.k8s.cluster_config` writes and reads the Istio objects of a cluster
on behalf of ``meshkit apply`` and ``meshkit.connect("kind")``. Both are synchronous callers
(a notebook cell already runs inside the kernel's event loop, so the async
`meshkit.k8s.api.KubeApi` cannot be driven from it), and need five plain calls: get,
list, create, merge-patch, delete. Where to connect and how to authenticate is the same
`KubeAccess` the control plane's backend uses (kubeconfig, in-cluster, or a bare URL).

Errors are `KubeApiError`: ``status`` is the HTTP status (0 when the API server is
unreachable) and the text carries the API server's own message verbatim (an admission
webhook's denial, an RBAC refusal), prefixed with what was being done.

What it must not do: interpret objects (that is `cluster_config` and `sources`).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from meshkit.k8s.api import DEFAULT_TIMEOUT_S, KubeAccess, KubeApiError, ResourceType, status_message

MERGE_PATCH = "application/merge-patch+json"


class KubeClient:
    """Blocking calls to the API server at ``access``; every answer is the parsed JSON document."""

    def __init__(self, access: KubeAccess, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.access = access
        self.timeout_s = timeout_s

    @property
    def server(self) -> str:
        return self.access.server

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context urllib needs for this server (None: the default one, or plain HTTP)."""
        context = self.access.ssl_context
        if isinstance(context, ssl.SSLContext):
            return context
        if context is False:
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            return insecure
        return None

    def headers(self) -> dict[str, str]:
        """The credentials to send (asked again each time: a rotated token is picked up)."""
        authorization = self.access.authorization()
        return {"Authorization": authorization} if authorization else {}

    # -- calls ----------------------------------------------------------------------------------

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None when the API server answers 404."""
        try:
            return self._object("GET", path, what=f"get {path}")
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, resource: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``resource`` (in ``namespace``, or in all namespaces)."""
        path = namespaced_collection(resource, namespace) if namespace else resource.collection
        doc = self._object("GET", path, what=f"list {resource}")
        items = doc.get("items")
        if not isinstance(items, list):
            raise KubeApiError(0, f"list {resource}: the answer has no items list")
        return [item for item in items if isinstance(item, dict)]

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._object("POST", path, body=body, what=f"create {path}")

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): keys set to None are removed, lists are replaced."""
        return self._object("PATCH", path, body=patch, content_type=MERGE_PATCH, what=f"patch {path}")

    def delete(self, path: str) -> dict[str, Any]:
        return self._object("DELETE", path, what=f"delete {path}")

    # -- plumbing -------------------------------------------------------------------------------

    def _object(self, method: str, path: str, *, what: str, body: Any = None,
                content_type: str = "application/json") -> dict[str, Any]:
        doc = self._json(method, path, what=what, body=body, content_type=content_type)
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"{what}: the answer is not a JSON object")
        return doc

    def _json(self, method: str, path: str, *, what: str, body: Any, content_type: str) -> Any:
        headers = {"Accept": "application/json", **self.headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,
                                        context=self.ssl_context()) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as error:
            detail = status_message(error.read().decode(errors="replace"))
            raise KubeApiError(error.code, f"{what}: HTTP {error.code}: {detail}") from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise KubeApiError(0, f"{what}: cannot reach the Kubernetes API at {self.server}: "
                                  f"{reason}") from None
        try:
            return json.loads(text)
        except ValueError:
            raise KubeApiError(0, f"{what}: the answer is not JSON: {text[:200]!r}") from None


def namespaced_collection(resource: ResourceType, namespace: str, version: str | None = None) -> str:
    """``/apis/<group>/<version>/namespaces/<ns>/<plural>`` (``version`` overrides the type's)."""
    ns = urllib.parse.quote(namespace, safe="")
    if resource.group:
        return f"/apis/{resource.group}/{version or resource.version}/namespaces/{ns}/{resource.plural}"
    return f"/api/{version or resource.version}/namespaces/{ns}/{resource.plural}"


def object_path(resource: ResourceType, namespace: str, name: str, version: str | None = None) -> str:
    return f"{namespaced_collection(resource, namespace, version)}/{urllib.parse.quote(name, safe='')}"


def service_proxy_path(namespace: str, service: str, port_name: str) -> str:
    """The API server's proxy to a Service: ``/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy``."""
    return (f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/services/"
            f"{urllib.parse.quote(service, safe='')}:{urllib.parse.quote(port_name, safe='')}/proxy")
