"""Who may call the control plane's API: the admin token, workload credentials, and the request guard.

Callers present ``Authorization: Bearer <token>``:

* the **admin token** (`ensure_admin_token`): 256 random bits in ``<state dir>/admin-token``
  (mode 0600, created by the first of `meshkit up` / the control plane that needs it), read by
  the CLI, ``meshkit.lab``, the workshop and the local runtime (`discover_admin_token`). It may
  do everything. On Kubernetes the control plane also keeps it in the Secret
  ``meshkit-control-admin`` (so RBAC on that Secret decides who is admin) and the cluster
  client sends it as ``X-Meshkit-Token``, since the API server's service proxy drops
  ``Authorization``;
* a **workload credential**: a sidecar's CA bootstrap token (local mesh) or its projected
  ServiceAccount token checked by a Kubernetes TokenReview: the same `ca.CallerAuthenticator`
  the CA uses. It may only follow its own snapshot (``xds/stream``, ``xds/ack`` for a proxy id
  of its identity, see `may_act_as`), ask for its certificate and read the root.

`guard` (aiohttp middleware) refuses, before any handler runs: a state-changing call whose
``Origin``/``Sec-Fetch-Site`` says it comes from another site (403, MK0972), a call without a
valid credential (401, MK0970), a body that is neither ``application/json`` nor
``application/yaml`` (415, MK0973), and a workload calling an admin endpoint (403, MK0971).
It adds no CORS header, so a browser never lets another site read an answer.

This module decides who may call; it does not parse bodies, change state or mint workload tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from meshkit.config import codes

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"
TOKEN_ENV = "MESHKIT_CONTROL_TOKEN"  # the admin token itself (CI, a remote notebook)
TOKEN_FILE_ENV = "MESHKIT_CONTROL_TOKEN_FILE"  # a file holding it
ADMIN_SECRET = "meshkit-control-admin"  # on Kubernetes: the Secret holding the admin token
ADMIN_SECRET_KEY = "token"
TOKEN_HEADER = "X-Meshkit-Token"  # the admin token through a proxy that keeps Authorization for itself

CODE_UNAUTHENTICATED = codes.MK0970
CODE_FORBIDDEN = codes.MK0971
CODE_CROSS_SITE = codes.MK0972
CODE_MEDIA_TYPE = codes.MK0973

BODY_TYPES = frozenset({"application/json", "application/yaml", "application/x-yaml"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CACHE_SIZE = 4096


# -- the admin token on disk ------------------------------------------------------------------------


def admin_token_file(control_dir: Path | str) -> Path:
    return Path(control_dir) / ADMIN_TOKEN_FILE


def read_admin_token(control_dir: Path | str) -> str | None:
    """The admin token of the control plane whose state dir is ``control_dir``, or None."""
    try:
        token = admin_token_file(control_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def ensure_admin_token(control_dir: Path | str) -> str:
    """The admin token in ``control_dir``, created (0600 from the first byte, atomically) if missing.

    Safe when `meshkit up` and the control plane it starts race: the first link wins, both read it.
    """
    directory = Path(control_dir)
    existing = read_admin_token(directory)
    if existing is not None:
        return existing
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".admin-token.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: use that
            os.link(tmp, admin_token_file(directory))
    finally:
        Path(tmp).unlink(missing_ok=True)
    found = read_admin_token(directory)
    if found is None:
        raise OSError(f"{admin_token_file(directory)}: could not create the control plane's admin token")
    return found


def discover_admin_token() -> str | None:
    """The admin token a client on this machine uses: ``$MESHKIT_CONTROL_TOKEN``, the file named by
    ``$MESHKIT_CONTROL_TOKEN_FILE``, else ``$MESHKIT_HOME/control/admin-token``."""
    from meshkit.control.address import default_control_dir  # noqa: PLC0415

    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return value
    named = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if named:
        try:
            return Path(named).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return read_admin_token(default_control_dir())


# -- callers ----------------------------------------------------------------------------------------


class WorkloadAuthenticator(Protocol):
    """`meshkit.control.ca.CallerAuthenticator`: a credential -> the SPIFFE identity it proves."""

    async def authenticate(self, credential: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the admin (``identity`` None) or a workload with its SPIFFE identity."""

    admin: bool
    identity: str | None = None


ADMIN = Caller(admin=True)
REQUEST_CALLER = web.RequestKey("meshkit_caller", Caller)


class Authenticator:
    """Bearer token -> `Caller`: the admin token in constant time, else the workload authenticator.

    A workload authenticator whose check is costly (a TokenReview) says how long an answer may be
    reused in its ``cache_seconds`` attribute; local bootstrap tokens are checked every time, so a
    revoked one stops working at once.
    """

    def __init__(self, admin_token: str, workloads: WorkloadAuthenticator | None = None) -> None:
        self._admin = hashlib.sha256(admin_token.encode()).digest()
        self._workloads = workloads
        self._cache_seconds = float(getattr(workloads, "cache_seconds", 0.0) or 0.0)
        self._cache: dict[bytes, tuple[float, str]] = {}

    def admin(self, token: str) -> Caller | None:
        """`ADMIN` for the admin token, else None (constant time)."""
        digest = hashlib.sha256(token.encode()).digest()
        return ADMIN if hmac.compare_digest(digest, self._admin) else None

    async def identify(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(digest, self._admin):
            return ADMIN
        if self._workloads is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return Caller(admin=False, identity=cached[1])
        try:
            identity = await self._workloads.authenticate(token)
        except Exception as error:  # a TokenReview that could not be made: refuse, the caller retries
            log.info("workload credential could not be checked: %s", error)
            return None
        if identity is None:
            return None
        if self._cache_seconds > 0:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, identity)
        return Caller(admin=False, identity=identity)


# -- what a workload may do -------------------------------------------------------------------------

# (method, route) a workload credential may call; everything else needs the admin token
WORKLOAD_ROUTES = frozenset({
    ("GET", "/api/v1/xds/stream"), ("POST", "/api/v1/xds/ack"), ("GET", "/api/v1/ca/root"),
    ("POST", "/api/v1/ca/sign"), ("GET", "/api/v1/healthz"),
    ("POST", "/api/v1/traces/spans"),  # a sidecar's batches of spans (control/traces_api.py)
})
# answered without a credential: liveness (status only) and the CSR, whose body carries its token
PUBLIC_ROUTES = frozenset({("GET", "/api/v1/healthz"), ("HEAD", "/api/v1/healthz"),
                           ("POST", "/api/v1/ca/sign"),
                           # public keys: a jwksUri is fetched without credentials (control/jwt_api.py)
                           ("GET", "/.well-known/jwks.json"),
                           ("GET", "/.well-known/istio-samples/jwks.json"),
                           # the web console's static files: no data (control/console)
                           ("GET", "/ui"), ("GET", "/ui/"), ("GET", "/ui/{name}")})


def may_act_as(caller: Caller, proxy_id: str, service_account: str | None) -> bool:
    """May ``caller`` follow the snapshot of proxy ``<instance>.<namespace>``?

    The admin may; a workload only in its identity's namespace and, when the registry knows the
    proxy's endpoint, only with that endpoint's service account.
    """
    if caller.admin:
        return True
    if caller.identity is None:
        return False
    _, _, namespace = proxy_id.rpartition(".")
    parts = caller.identity.split("/")  # spiffe://<td>/ns/<ns>/sa/<sa>
    if len(parts) != 7 or parts[3] != "ns" or parts[5] != "sa":
        return False
    if parts[4] != namespace:
        return False
    return service_account is None or parts[6] == service_account


def caller_of(request: web.Request) -> Caller | None:
    return request.get(REQUEST_CALLER)


# -- the guard --------------------------------------------------------------------------------------


def _refuse(status: int, code: str, text: str) -> web.Response:
    doc = {"error": text, "messages": [{"code": code, "severity": "error", "resource": "request",
                                        "field": "", "text": text}]}
    response = web.json_response(doc, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="meshkit-control"'
    return response


def cross_site(request: web.Request) -> bool:
    """A browser says this request comes from another site (``Origin`` not this host, or
    ``Sec-Fetch-Site: cross-site``). Non-browser clients send neither."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return origin == "null" or parts.netloc.lower() != request.host.lower()


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding") is not None


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else request.path


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_guard(authenticator: Authenticator) -> Any:
    """The middleware checking every request with ``authenticator``."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = request.method
        if method not in SAFE_METHODS and cross_site(request):
            return _refuse(403, CODE_CROSS_SITE, f"{method} {request.path}: refused a cross-site request "
                           f"(Origin {request.headers.get('Origin')!r}); the control plane takes "
                           "state changes from the CLI, notebooks and sidecars only")
        key = (method, _route(request))
        caller: Caller | None = None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if TOKEN_HEADER in request.headers:  # Kubernetes' service proxy: the admin token only
            caller = authenticator.admin(request.headers[TOKEN_HEADER].strip())
        elif scheme.lower() == "bearer" and token.strip():
            caller = await authenticator.identify(token.strip())
        if caller is None and key not in PUBLIC_ROUTES:
            return _refuse(401, CODE_UNAUTHENTICATED,
                           f"{method} {request.path}: missing or unknown bearer token. Send "
                           "'Authorization: Bearer <token>' with the admin token of `meshkit up` "
                           "($MESHKIT_HOME/control/admin-token) or the sidecar's bootstrap token")
        if method not in SAFE_METHODS and _has_body(request) and request.content_type not in BODY_TYPES:
            return _refuse(415, CODE_MEDIA_TYPE, f"{method} {request.path}: Content-Type "
                           f"{request.headers.get('Content-Type', '(none)')!r} is not accepted; send "
                           "application/json or application/yaml")
        if caller is not None and not caller.admin and key not in WORKLOAD_ROUTES:
            return _refuse(403, CODE_FORBIDDEN, f"{method} {request.path}: the workload {caller.identity} "
                           "may only follow its own snapshot and ask for its certificate; this call "
                           "needs the admin token")
        if caller is not None:
            request[REQUEST_CALLER] = caller
        return await handler(request)

    return guard
