"""The control plane's JWKS resolver: fetch every RequestAuthentication ``jwksUri``, as istiod does.

Sidecars never fetch keys: the fetched key set goes inline into their snapshots (`compile` reads
`JwksResolver.keys` / `.errors`). Whenever the config changes, URIs not known yet are fetched (a
``GET`` with a 5 s timeout; the answer must be a JSON Web Key Set); a fetch that fails is logged as
a warning naming the RequestAuthentication(s) that use the URI, kept in ``errors`` (shown by
``GET /api/v1/jwks``) and retried with back-off (0.25 s doubling to a minute), and good key sets are refreshed
every 20 minutes (istiod's default refresh); a refresh that fails keeps the last good keys (the
error is still shown). Each change of a key set or an error triggers a
recompute, so the sidecars get the keys, or reject every token of that issuer with 401, within
moments. Nothing already applied is lost: the resolver never touches the config store.

Istio's own sample key set, the ``jwksUri`` its JWT tasks write
(``https://raw.githubusercontent.com/istio/istio/<branch>/security/tools/jwt/samples/jwks.json``), is
answered from the verbatim copy meshkit ships (`jwt_demo.istio_sample_jwks`) without going to the
network: classrooms are offline, and it is the key set Istio's sample tokens (``demo.jwt``,
``groups-scope.jwt``) are signed with, so the tasks' YAML works unchanged.

Must not: decide what a rule means (that is `config.authn`), block the loop, keep state outside
this object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from meshkit.config.authn import jwks_uris
from meshkit.config.resources import Resource
from meshkit.control.jwt_demo import istio_sample_jwks

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0
REFRESH_S = 20 * 60.0
RETRY_FIRST_S = 0.25  # quick: at start-up a jwksUri may point at this very control plane, not listening yet
RETRY_MAX_S = 60.0
MAX_JWKS_BYTES = 1 << 20
# the URL of Istio's sample JWKS in its JWT tasks, any branch or tag (release-1.2x, master)
ISTIO_SAMPLE_JWKS_URI = re.compile(
    r"https://raw\.githubusercontent\.com/istio/istio/[^/]+/security/tools/jwt/samples/jwks\.json")


@dataclass
class UriState:
    uri: str
    resources: list[str] = field(default_factory=list)  # "RequestAuthentication/ns/name"
    jwks: str | None = None
    error: str | None = None
    fetched_at: float | None = None
    attempts: int = 0
    task: asyncio.Task[None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "resources": list(self.resources), "ok": self.jwks is not None,
                "error": self.error, "fetched_at": self.fetched_at, "attempts": self.attempts}


class JwksResolver:
    """Fetches the ``jwksUri`` of every RequestAuthentication in the store; see the module docstring."""

    def __init__(self, resources: Callable[[], Sequence[Resource]], on_change: Callable[[], None]) -> None:
        self._resources = resources
        self._on_change = on_change
        self._states: dict[str, UriState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    # -- what compile reads -----------------------------------------------------------------------

    @property
    def keys(self) -> dict[str, str | None]:
        return {uri: state.jwks for uri, state in self._states.items() if state.jwks is not None}

    @property
    def errors(self) -> dict[str, str]:
        return {
            uri: f"{', '.join(state.resources)}: {state.error}"
            for uri, state in self._states.items() if state.jwks is None and state.error is not None
        }

    def status(self) -> list[dict[str, Any]]:
        return [self._states[uri].to_dict() for uri in sorted(self._states)]

    # -- reacting to the config -------------------------------------------------------------------

    def sync(self) -> None:
        """Start fetching URIs that appeared, forget those no longer used (a store subscriber)."""
        if self._closing:
            return
        wanted: dict[str, list[str]] = {}
        for uri, ref in jwks_uris(self._resources()):
            wanted.setdefault(uri, []).append(ref)
        for uri in list(self._states):
            if uri not in wanted:
                gone = self._states.pop(uri)
                if gone.task is not None:
                    gone.task.cancel()
        for uri, refs in wanted.items():
            state = self._states.get(uri)
            if state is None:
                state = self._states[uri] = UriState(uri)
            state.resources = sorted(set(refs))
            if state.task is None or state.task.done():
                state.task = asyncio.get_running_loop().create_task(self._keep_fetched(state))

    async def refresh(self, uri: str) -> UriState | None:
        """Fetch ``uri`` again now (tests, ``POST /api/v1/jwks/refresh``)."""
        state = self._states.get(uri)
        if state is not None:
            await self._fetch_once(state)
        return state

    async def _keep_fetched(self, state: UriState) -> None:
        delay = RETRY_FIRST_S
        while not self._closing and self._states.get(state.uri) is state:
            ok = await self._fetch_once(state)
            if ok:
                delay = RETRY_FIRST_S
                await asyncio.sleep(REFRESH_S)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _fetch_once(self, state: UriState) -> bool:
        state.attempts += 1
        try:
            text = await self._get(state.uri)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: named, kept, retried
            error = f"cannot fetch the JWKS at {state.uri}: {exc or type(exc).__name__}"
            if state.jwks is not None:  # a refresh failed: keep the last good keys, as istiod does
                if state.error != error:
                    log.warning("%s: %s; the keys fetched before stay in force",
                                ", ".join(state.resources), error)
                state.error = error
                return False
            changed = state.error != error or state.jwks is not None
            state.error, state.jwks = error, None
            if changed or state.attempts == 2:
                # the first try may come too early (a jwksUri of this very control plane, not yet listening)
                level = logging.INFO if state.attempts == 1 else logging.WARNING
                log.log(level, "%s: %s; every token of this issuer is rejected (401) until it can be fetched",
                        ", ".join(state.resources), error)
            if changed:
                self._on_change()
            return False
        state.fetched_at = time.time()
        changed = state.jwks != text or state.error is not None
        state.jwks, state.error = text, None
        if changed:
            log.info("fetched the JWKS at %s for %s", state.uri, ", ".join(state.resources))
            self._on_change()
        return True

    async def _get(self, uri: str) -> str:
        if ISTIO_SAMPLE_JWKS_URI.fullmatch(uri):
            return json.dumps(istio_sample_jwks(), sort_keys=True, separators=(",", ":"))
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        async with self._session.get(uri) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"the answer is not JSON ({exc})") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list) or not keys:
            raise ValueError('the answer is not a JSON Web Key Set with keys ({"keys": [...]})')
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    async def close(self) -> None:
        self._closing = True
        for state in self._states.values():
            if state.task is not None:
                state.task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
