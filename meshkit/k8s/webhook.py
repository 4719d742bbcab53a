"""The operator's admission webhook server: kopf's server, plus what a real cluster needs.

`MeshkitWebhookServer` wraps any kopf webhook server and adds two things:

* it copies the request's namespace into the object before kopf sees it (pods created
  through a Deployment reach the webhook with no ``metadata.namespace``; the injector needs it);
* in a cluster, it publishes the serving certificate's CA into the static webhook
  configurations shipped in ``operator/deploy`` (their ``caBundle``), through `publish_ca_bundle`.

`self_signed_certificate` makes the serving certificate with ``cryptography`` (no extra
dependency); the Service's DNS names are its SANs.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import logging
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("meshkit.k8s.webhook")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CERT_VALIDITY = datetime.timedelta(days=365)

ClientConfigHook = Callable[[dict[str, Any]], Awaitable[None]]
WebhookServerLike = Callable[..., AsyncIterator[Any]]


class MeshkitWebhookServer:
    """A kopf webhook server (``settings.admission.server``) that fills namespaces and publishes its CA."""

    def __init__(self, inner: WebhookServerLike, on_client_config: ClientConfigHook | None = None) -> None:
        self.inner = inner
        self.on_client_config = on_client_config

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def with_namespace(request: dict[str, Any], **kwargs: Any) -> Any:
            return await fn(fill_namespace(request), **kwargs)

        async for client_config in self.inner(with_namespace):
            if self.on_client_config is not None:
                await self.on_client_config(dict(client_config))
            yield client_config


def fill_namespace(review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview with ``request.namespace`` copied into objects that lack one."""
    request = review.get("request")
    if not isinstance(request, dict) or not request.get("namespace"):
        return review
    filled = copy.deepcopy(review)
    for key in ("object", "oldObject"):
        obj = filled["request"].get(key)
        if isinstance(obj, dict):
            metadata = obj.setdefault("metadata", {})
            if not metadata.get("namespace"):
                metadata["namespace"] = request["namespace"]
    return filled


# ---------------------------------------------------------------------------------------------
# serving certificate
# ---------------------------------------------------------------------------------------------


def self_signed_certificate(hostnames: Sequence[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``hostnames``: self-signed, so it is its own CA bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_certificate(directory: Path, hostnames: Sequence[str]) -> tuple[Path, Path]:
    """Write a fresh self-signed pair into ``directory`` (mode 0600 key); return (cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = self_signed_certificate(hostnames)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def service_hostnames(service: str, namespace: str) -> list[str]:
    base = f"{service}.{namespace}"
    return [f"{base}.svc", f"{base}.svc.cluster.local", base]


# ---------------------------------------------------------------------------------------------
# publishing the CA bundle into the static webhook configurations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiAccess:
    """How to reach the Kubernetes API: in the cluster from the service account, in tests from a URL."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    @classmethod
    def in_cluster(cls, environ: dict[str, str]) -> ApiAccess:
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not running in a pod: KUBERNETES_SERVICE_HOST is not set")
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", token=token, ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"))

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure or not self.server.startswith("https"):
            return False
        return ssl.create_default_context(cafile=self.ca_file)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


NATIVE_SIDECAR_MINOR = 29  # SidecarContainers is on by default from Kubernetes 1.29


def server_version(api: ApiAccess, timeout_s: float = 10.0) -> tuple[int, int] | None:
    """(major, minor) of the API server (``GET /version``), or None when it cannot be read."""
    request = urllib.request.Request(f"{api.server.rstrip('/')}/version", headers=api.headers())
    context = api.ssl_context()
    tls = context if isinstance(context, ssl.SSLContext) else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=tls) as answer:
            doc = json.loads(answer.read())
        major = int(str(doc.get("major", "")).rstrip("+"))
        minor = int(str(doc.get("minor", "")).rstrip("+"))
    except (OSError, ValueError, AttributeError) as error:
        log.warning("cannot read the API server's version: %s", error)
        return None
    return major, minor


def native_sidecars_supported(api: ApiAccess) -> bool:
    """Whether the cluster runs init containers with ``restartPolicy: Always`` as sidecars."""
    version = server_version(api)
    return version is not None and version >= (1, NATIVE_SIDECAR_MINOR)


WEBHOOK_PATHS = {
    "mutating": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "validating": "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
}


async def publish_ca_bundle(api: ApiAccess, targets: Sequence[tuple[str, str]], ca_bundle: str) -> None:
    """Set ``clientConfig.caBundle`` on every webhook of each (``mutating``|``validating``, name) target.

    Read, modify, merge-patch the whole ``webhooks`` list (with the resourceVersion read, when
    the server gives one, so a concurrent change makes the patch fail instead of being lost).
    """
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=api.headers(), timeout=timeout) as session:
        for kind, name in targets:
            url = f"{api.server.rstrip('/')}{WEBHOOK_PATHS[kind]}/{name}"
            async with session.get(url, ssl=api.ssl_context()) as response:
                if response.status != 200:
                    text = await response.text()
                    raise RuntimeError(
                        f"cannot read {kind} webhook configuration {name}: {response.status} {text}"
                    )
                current = await response.json()
            webhooks = copy.deepcopy(current.get("webhooks") or [])
            for webhook in webhooks:
                webhook.setdefault("clientConfig", {})["caBundle"] = ca_bundle
            patch: dict[str, Any] = {"webhooks": webhooks}
            version = (current.get("metadata") or {}).get("resourceVersion")
            if version:
                patch["metadata"] = {"resourceVersion": version}
            async with session.patch(
                url, json=patch, ssl=api.ssl_context(),
                headers={"Content-Type": "application/merge-patch+json"},
            ) as response:
                if response.status != 200:
                    text = await response.text()
                    raise RuntimeError(
                        f"cannot patch {kind} webhook configuration {name}: {response.status} {text}"
                    )


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def ca_bundle_publisher(api: ApiAccess, targets: Sequence[tuple[str, str]],
                        delays: Sequence[float] = RETRY_DELAYS_S) -> ClientConfigHook:
    """Publish the bundle, retrying until it is in place: the webhook configurations may not exist
    yet (applied after the operator), or the API may be briefly unreachable. Failing instead made
    the operator exit at start. The webhook server already serves while this retries."""

    async def publish(client_config: dict[str, Any]) -> None:
        bundle = client_config.get("caBundle")
        attempt = 0
        while bundle:
            try:
                await publish_ca_bundle(api, targets, bundle)
                return
            except (RuntimeError, aiohttp.ClientError, OSError, TimeoutError) as error:
                delay = delays[min(attempt, len(delays) - 1)]
                attempt += 1
                log.warning("cannot publish the webhook CA bundle yet (attempt %d): %s; retrying in %.1f s",
                            attempt, error, delay)
                await asyncio.sleep(delay)

    return publish


def encode_ca_bundle(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def kopf_server(
    *, addr: str, port: int, host: str | None, cert_dir: Path | None, hostnames: Sequence[str]
) -> kopf.WebhookServer:
    """kopf's aiohttp server: HTTPS with a fresh self-signed certificate; plain HTTP without ``cert_dir``."""
    if cert_dir is None:
        return kopf.WebhookServer(addr=addr, port=port, host=host, insecure=True)
    cert, key = write_certificate(cert_dir, hostnames)
    return kopf.WebhookServer(addr=addr, port=port, host=host, certfile=cert, pkeyfile=key, cafile=cert)
