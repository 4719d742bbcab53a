"""The sidecar's status port (15021): kubelet's app probes, run by the sidecar against the app.

On Kubernetes the injector rewrites each app container's ``httpGet`` and ``tcpSocket`` probes to
``httpGet`` on the sidecar's status port, path ``/app-health/<container>/readyz|livez|startupz``
(as Istio does), and hands the original probes to the sidecar as JSON in the environment
(``MESHKIT_APP_PROBERS``: path -> ``{"httpGet": {...}}`` or ``{"tcpSocket": {...}}``, plus
``timeoutSeconds``). Why: port 15021 is not captured, so kubelet's plain-HTTP probe works under
STRICT mTLS and principal-based policies, and a TCP probe reaches the app itself instead of
succeeding against the sidecar's inbound listener while the app is down.

``AppProbers.handle`` is an admin-style handler (``Request`` -> ``Response``) served by a plain
``Listener`` on 15021: ``/app-health/...`` runs the probe (HTTP GET to the app over loopback:
2xx/3xx is success, as kubelet counts it; TCP: a connection opens) and answers 200 or 503;
``/healthz/ready`` answers the sidecar's own readiness (delegated).

It must not do: anything on other paths, or follow redirects. Standard library only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from meshkit.proxy.http import Headers, Request, Response

PROBERS_ENV = "MESHKIT_APP_PROBERS"
APP_HEALTH_PREFIX = "/app-health/"
DEFAULT_TIMEOUT_S = 1.0  # kubelet's default timeoutSeconds


class ProberError(ValueError):
    """The probers JSON is not what the injector writes."""


@dataclass(frozen=True, slots=True)
class AppProbe:
    kind: str  # "http" | "tcp"
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S


def parse_probers(text: str) -> dict[str, AppProbe]:
    """``MESHKIT_APP_PROBERS`` -> path -> probe; errors name the path and field."""
    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ProberError(f"{PROBERS_ENV}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProberError(f"{PROBERS_ENV}: expected an object of path -> probe")
    probes: dict[str, AppProbe] = {}
    for path, spec in doc.items():
        if not isinstance(spec, dict) or not str(path).startswith(APP_HEALTH_PREFIX):
            raise ProberError(f"{PROBERS_ENV}[{path!r}]: expected a probe under {APP_HEALTH_PREFIX}")
        timeout = float(spec.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = get.get("port")
            if not isinstance(port, int):
                raise ProberError(f"{PROBERS_ENV}[{path!r}].httpGet.port: expected a number, got {port!r}")
            headers = tuple((str(h["name"]), str(h["value"])) for h in get.get("httpHeaders") or [])
            scheme = str(get.get("scheme") or "HTTP")
            probes[path] = AppProbe("http", port, str(get.get("path") or "/"), scheme, headers, timeout)
        elif "tcpSocket" in spec:
            port = spec["tcpSocket"].get("port")
            if not isinstance(port, int):
                raise ProberError(f"{PROBERS_ENV}[{path!r}].tcpSocket.port: expected a number, got {port!r}")
            probes[path] = AppProbe("tcp", port, timeout_s=timeout)
        else:
            raise ProberError(f"{PROBERS_ENV}[{path!r}]: expected httpGet or tcpSocket")
    return probes


async def run_probe(probe: AppProbe, host: str = "127.0.0.1") -> tuple[bool, str]:
    """(success, what happened) of one probe against the app."""
    try:
        async with asyncio.timeout(probe.timeout_s):
            if probe.scheme.upper() == "HTTPS":
                import ssl  # noqa: PLC0415

                unverified = ssl.create_default_context()
                unverified.check_hostname = False  # kubelet does not verify the app's certificate
                unverified.verify_mode = ssl.CERT_NONE
                context: ssl.SSLContext | None = unverified
            else:
                context = None
            reader, writer = await asyncio.open_connection(host, probe.port, ssl=context)
            try:
                if probe.kind == "tcp":
                    return True, f"tcp {probe.port}: connected"
                lines = [f"GET {probe.path} HTTP/1.1", f"Host: {host}:{probe.port}",
                         "User-Agent: kube-probe/meshkit", "Connection: close",
                         *(f"{name}: {value}" for name, value in probe.headers)]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                await writer.drain()
                status_line = (await reader.readline()).decode("latin-1").split()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return False, f"{probe.kind} {probe.port}: {exc or type(exc).__name__}"
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    return 200 <= status < 400, f"http {probe.port}{probe.path}: {status or 'no status'}"


class AppProbers:
    """The status port's handler (see the module docstring)."""

    def __init__(self, probes: dict[str, AppProbe], ready: Callable[[], Response] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.probes = probes
        self.ready = ready
        self.host = host

    async def handle(self, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == "/healthz/ready" and self.ready is not None:
            return self.ready()
        probe = self.probes.get(path)
        if probe is None:
            return _text(404, f"no app probe at {path}\n")
        ok, detail = await run_probe(probe, self.host)
        return _text(200 if ok else 503, detail + "\n")


def _text(status: int, body: str) -> Response:
    headers = Headers([("content-type", "text/plain"), ("cache-control", "no-cache")])
    return Response(status, headers, body.encode())


def from_environment(environ: dict[str, str], ready: Callable[[], Response] | None = None) -> AppProbers:
    return AppProbers(parse_probers(environ.get(PROBERS_ENV, "")), ready)

