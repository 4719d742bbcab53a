"""A small async client of the Kubernetes API: list, watch and create, over aiohttp.

What it is for: the control plane's Kubernetes backend (`meshkit.k8s.control_plane`) reads
the Istio CRDs, Services, EndpointSlices and Pods and posts TokenReviews. It needs four
verbs, not a whole client library, and it must stay on the control plane's event loop
(the ``kubernetes`` package's client is synchronous).

Where to connect (`KubeAccess`): an explicit URL (``kubectl proxy``, a mock server; no
credentials), or the ``kubernetes`` package's loaders for a kubeconfig or the in-cluster
service account (the token is read again before each request, so a rotated projected token
is picked up). That package is the ``k8s`` extra; without it only the explicit URL works.

What it must not do: interpret objects (that is `meshkit.k8s.sources`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

DEFAULT_TIMEOUT_S = 30.0


class KubeApiError(Exception):
    """The API answered an error status (``status`` is the HTTP status, 0 when unreachable)."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One kind of object, as the API addresses it: ``/api/v1/pods``, ``/apis/<group>/<version>/<plural>``."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def collection(self) -> str:
        """The path listing every object of this type in all namespaces."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


@dataclass(frozen=True)
class KubeAccess:
    """Where the API server is and how to authenticate; build it with one of the classmethods."""

    server: str
    ssl_context: ssl.SSLContext | bool = True
    authorization: Callable[[], str | None] = lambda: None  # "Bearer ..." or None

    @classmethod
    def url(cls, server: str, *, insecure: bool = False) -> KubeAccess:
        """An API server (or ``kubectl proxy``) at ``server``, without credentials."""
        return cls(server=server.rstrip("/"), ssl_context=not insecure)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubeAccess:
        """From a kubeconfig (``path``, else ``$KUBECONFIG``, else ``~/.kube/config``)."""
        kubernetes = _kubernetes_package()
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=path, context=context,
                                           client_configuration=configuration)
        return cls._from_configuration(configuration)

    @classmethod
    def in_cluster(cls) -> KubeAccess:
        """From the pod's service account (what ``meshkit control --kubernetes`` uses in a cluster)."""
        kubernetes = _kubernetes_package()
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return cls._from_configuration(configuration)

    @classmethod
    def detect(cls, kubeconfig: str | None = None) -> KubeAccess:
        """In-cluster when running in a pod (and no kubeconfig is named), else the kubeconfig."""
        kubernetes = _kubernetes_package()
        if kubeconfig is None:
            try:
                return cls.in_cluster()
            except kubernetes.config.ConfigException:
                pass
        return cls.from_kubeconfig(kubeconfig)

    @classmethod
    def _from_configuration(cls, configuration: Any) -> KubeAccess:
        context: ssl.SSLContext | bool
        if configuration.verify_ssl:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)

        def authorization() -> str | None:
            # auth_settings() runs the loader's refresh hook (a rotated in-cluster token is read again)
            for setting in configuration.auth_settings().values():
                if setting.get("in") == "header" and str(setting.get("key")).lower() == "authorization":
                    return str(setting["value"]) if setting.get("value") else None
            return None

        return cls(server=str(configuration.host).rstrip("/"), ssl_context=context,
                   authorization=authorization)


def _kubernetes_package() -> Any:
    try:
        import kubernetes  # noqa: PLC0415 (optional: the k8s extra)
    except ImportError as error:
        raise KubeApiError(0, "reading a kubeconfig or the in-cluster config needs the kubernetes "
                              "package: pip install 'meshkit[k8s]' (or pass an API URL, e.g. from "
                              "kubectl proxy)") from error
    return kubernetes


class KubeApi:
    """The four calls the control plane's Kubernetes backend makes. Use ``async with`` or ``close()``."""

    def __init__(self, access: KubeAccess, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.access = access
        self.timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=access.ssl_context),
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s),
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        authorization = self.access.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def list(self, resource: ResourceType) -> tuple[list[dict[str, Any]], str | None]:
        """Every object of ``resource`` in all namespaces, and the list's resourceVersion."""
        doc = await self._json("GET", resource.collection, what=f"list {resource}")
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise KubeApiError(0, f"list {resource}: the answer has no items list")
        version = (doc.get("metadata") or {}).get("resourceVersion")
        objects = [item for item in items if isinstance(item, dict)]
        return objects, version if isinstance(version, str) else None

    async def get(self, path: str) -> dict[str, Any] | None:
        """GET one object at ``path``; None when the API answers 404."""
        try:
            doc = await self._json("GET", path, what=f"GET {path}")
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"GET {path}: the answer is not a JSON object")
        return doc

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` (e.g. a TokenReview); the created object as the API answers it."""
        doc = await self._json("POST", path, body=body, what=f"POST {path}")
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"POST {path}: the answer is not a JSON object")
        return doc

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body`` to ``path`` (an object that exists); the object as the API answers it."""
        doc = await self._json("PUT", path, body=body, what=f"PUT {path}")
        if not isinstance(doc, dict):
            raise KubeApiError(0, f"PUT {path}: the answer is not a JSON object")
        return doc

    async def watch(self, resource: ResourceType, resource_version: str | None,
                    timeout_s: int) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) of ``resource`` in all namespaces, for up to ``timeout_s``.

        The stream ends when the server ends it; an ``ERROR`` event is raised as KubeApiError with the
        status it carries (410 Gone: the resourceVersion is too old, list again).
        """
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_s)}
        if resource_version:
            params["resourceVersion"] = resource_version
        url = self.access.server + resource.collection
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_read=timeout_s + 30)
        try:
            async with self._session.get(url, params=params, headers=self._headers(),
                                         timeout=timeout) as response:
                if response.status >= 400:
                    raise KubeApiError(response.status, f"watch {resource}: HTTP {response.status}: "
                                                        f"{status_message(await response.text())}")
                async for line in response.content:
                    event = _event(line, resource)
                    if event is not None:
                        yield event
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeApiError(0, f"watch {resource}: {type(error).__name__}: {error}") from error

    async def _json(self, method: str, path: str, *, what: str, body: Any = None) -> Any:
        url = self.access.server + path
        try:
            async with asyncio.timeout(self.timeout_s), self._session.request(
                    method, url, json=body, headers=self._headers()) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeApiError(0, f"{what}: cannot reach {self.access.server}: "
                                  f"{type(error).__name__}: {error}") from error
        if response.status >= 400:
            raise KubeApiError(response.status, f"{what}: HTTP {response.status}: {status_message(text)}")
        try:
            return json.loads(text)
        except ValueError as error:
            raise KubeApiError(0, f"{what}: the answer is not JSON: {text[:200]!r}") from error


def status_message(text: str) -> str:
    """The ``message`` of a Kubernetes Status document, else the (shortened) text."""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(text).get("message")
        if isinstance(message, str) and message:
            return message
    return text[:300]


def _event(line: bytes, resource: ResourceType) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError as error:
        raise KubeApiError(0, f"watch {resource}: not a JSON event: {text[:200]!r}") from error
    if not isinstance(event, dict):
        return None
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        code = status.get("code") if isinstance(status, dict) else None
        message = status.get("message") if isinstance(status, dict) else None
        raise KubeApiError(code if isinstance(code, int) else 0,
                           f"watch {resource}: {message or 'error event'}")
    return event
