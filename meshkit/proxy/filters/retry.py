"""Retries (Envoy's route retry policy, Istio's ``VirtualService.http[].retries``).

Every upstream attempt carries ``x-envoy-attempt-count`` (Istio turns it on for all virtual
hosts) and ``request.attempt``. The route's ``retries`` section says how many retries follow
the first try (``attempts``), the optional per-try timeout and the ``retry_on`` conditions:

* ``5xx``: any 5xx from the upstream, a connect failure, a reset or a per-try timeout;
* ``gateway-error``: 502/503/504 from the upstream, a connect failure, a reset or a per-try timeout;
* ``reset``: a connect failure, a reset or a per-try timeout;
* ``connect-failure`` and ``reset-before-request``: a connect failure (nothing was sent yet);
* ``retriable-4xx``: 409; ``retriable-status-codes`` with ``retriable_status_codes``; numeric codes;
* ``refused-stream`` and the gRPC conditions never match HTTP/1.1 and are ignored.

Only responses that came from the upstream are retried: local replies (``UO`` overflow, ``UH``
no healthy upstream) never are, as in Envoy. A streamed request body is never retried. Back-off
between tries is Envoy's fully jittered exponential back-off (25 ms base, 250 ms cap). When a
retriable failure is left with no retries, the last response goes back with flag ``URX`` (a
connect failure or reset becomes a 503 local reply, a per-try timeout a 504, both with their own
flag plus ``URX``). The cluster's ``max_retries`` caps retries in flight across the cluster;
over it, the failure is returned with flag ``UO``. Retries prefer another endpoint (the
load-balancing filter avoids the previous attempt's endpoint).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from meshkit.proxy.balancer import ClusterTraffic
from meshkit.proxy.filters.timeout import call_with_deadline, timeout_reply
from meshkit.proxy.http import ConnectFailure, Handler, Request, Response, UpstreamError

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RetriesDoc

ATTEMPT_HEADER = "x-envoy-attempt-count"
BACKOFF_BASE = 0.025
BACKOFF_MAX = 0.25
GATEWAY_ERROR_CODES = frozenset({502, 503, 504})
RETRIABLE_4XX = frozenset({409})
HTTP_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "reset-before-request",
        "retriable-4xx",
        "retriable-status-codes",
    }
)
IGNORED_CONDITIONS = frozenset(
    {
        "refused-stream",
        "http3-post-connect-failure",
        "envoy-ratelimited",
        "retriable-headers",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


class RetryPolicy:
    """The ``retry_on`` list of a route, folded into booleans and a set of status codes."""

    __slots__ = ("codes", "on_5xx", "on_connect_failure", "on_gateway_error", "on_reset")

    def __init__(self, spec: RetriesDoc) -> None:
        conditions = set(spec.get("retry_on") or ())
        self.on_5xx = "5xx" in conditions
        self.on_gateway_error = "gateway-error" in conditions
        self.on_reset = "reset" in conditions
        self.on_connect_failure = "connect-failure" in conditions or "reset-before-request" in conditions
        codes: set[int] = {int(c) for c in conditions if isinstance(c, str) and c.isdigit()}
        if "retriable-4xx" in conditions:
            codes |= RETRIABLE_4XX
        if "retriable-status-codes" in conditions:
            codes |= {int(c) for c in spec.get("retriable_status_codes") or ()}
        self.codes = frozenset(codes)

    def retry_status(self, status: int) -> bool:
        if status in self.codes:
            return True
        if status >= 500 and self.on_5xx:
            return True
        return self.on_gateway_error and status in GATEWAY_ERROR_CODES

    def retry_error(self, error: UpstreamError) -> bool:
        if self.on_5xx or self.on_gateway_error or self.on_reset:
            return True
        return self.on_connect_failure and isinstance(error, ConnectFailure)

    def retry_timeout(self) -> bool:
        return self.on_5xx or self.on_gateway_error or self.on_reset


def check_retries(route: dict[str, Any], where: str) -> None:
    """Validate a route's ``retries`` section (for snapshot loading); errors name the key path."""
    spec = route.get("retries")
    if spec is None:
        return
    where = f"{where}.retries"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected an object or null, got {spec!r}")
    attempts = spec.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"{where}.attempts: expected an integer >= 0, got {attempts!r}")
    per_try = spec.get("per_try_timeout_ms")
    if per_try is not None and (isinstance(per_try, bool) or not isinstance(per_try, int) or per_try < 1):
        raise ValueError(f"{where}.per_try_timeout_ms: expected an integer >= 1 or null, got {per_try!r}")
    retry_on = spec.get("retry_on") or []
    if not isinstance(retry_on, list):
        raise ValueError(f"{where}.retry_on: expected a list of strings, got {retry_on!r}")
    for index, condition in enumerate(retry_on):
        if not isinstance(condition, str) or not (
            condition in HTTP_CONDITIONS or condition in IGNORED_CONDITIONS or _is_status(condition)
        ):
            raise ValueError(f"{where}.retry_on[{index}]: unknown retry condition {condition!r}")
    codes = spec.get("retriable_status_codes") or []
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes
    ):
        raise ValueError(f"{where}.retriable_status_codes: expected a list of status codes, got {codes!r}")


def _is_status(text: str) -> bool:
    return text.isdigit() and 100 <= int(text) <= 599


async def _discard(response: Response) -> None:
    """Close the body of a response that will not be sent (the connection is then not reused)."""
    body = response.body
    if not isinstance(body, bytes):
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def _error_reply(error: UpstreamError, flag: str) -> Response:
    reason = "connection failure" if isinstance(error, ConnectFailure) else "connection termination"
    reason = getattr(error, "reset_reason", reason)  # a connect timeout says so (proxy/network_policy.py)
    text = f"upstream connect error or disconnect/reset before headers. reset reason: {reason}"
    return Response.local(error.status, text, f"{error.flag},{flag}")


def retry(request: Request, call_next: Handler) -> Awaitable[Response]:
    request.attempt = 1
    request.headers.set(ATTEMPT_HEADER, "1")
    route = request.route
    spec = route.get("retries") if route is not None else None
    if spec is None:
        return call_next(request)  # nothing to retry: no coroutine frame of our own
    per_try_ms = spec.get("per_try_timeout_ms")
    retries_left = spec.get("attempts") or 0
    if not isinstance(request.body, bytes):
        retries_left = 0  # a streamed body cannot be replayed
    if not retries_left and not per_try_ms:
        return call_next(request)
    return _with_retries(request, call_next, spec, per_try_ms, retries_left)


async def _with_retries(
    request: Request, call_next: Handler, spec: RetriesDoc, per_try_ms: int | None, retries_left: int
) -> Response:
    per_try = per_try_ms / 1000.0 if per_try_ms else None
    policy: RetryPolicy | None = None
    traffic: ClusterTraffic | None = None
    holding_budget = False
    backoff = BACKOFF_BASE
    try:
        while True:
            response: Response | None = None
            error: UpstreamError | None = None
            try:
                if per_try is None:
                    response = await call_next(request)
                else:
                    response = await call_with_deadline(call_next, request, per_try)
            except UpstreamError as exc:
                error = exc
            timed_out = response is None and error is None
            if response is not None and (response.status < 400 or not response.upstream_host):
                if request.attempt > 1 and traffic is not None:
                    traffic.upstream_rq_retry_success += 1
                return response  # success, or a local reply (never retried)
            cluster = request.config.clusters.get(request.cluster)
            traffic = cluster.traffic if cluster is not None else None
            if timed_out and traffic is not None:
                traffic.upstream_rq_per_try_timeout += 1
            if policy is None:
                policy = RetryPolicy(spec)
            if response is not None:
                retriable = policy.retry_status(response.status)
            elif error is not None:
                retriable = policy.retry_error(error)
            else:
                retriable = policy.retry_timeout()
            if not retriable:
                return _final(response, error, None)
            if retries_left == 0:
                if traffic is not None:
                    traffic.upstream_rq_retry_limit_exceeded += 1
                return _final(response, error, "URX")
            retries_left -= 1
            if holding_budget and traffic is not None:
                traffic.rq_retry_active -= 1
                holding_budget = False
            if cluster is not None and traffic is not None:
                if cluster.max_retries is not None and traffic.rq_retry_active >= cluster.max_retries:
                    traffic.upstream_rq_retry_overflow += 1
                    return _final(response, error, "UO")
                traffic.rq_retry_active += 1
                traffic.upstream_rq_retry += 1
                holding_budget = True
            if response is not None:
                await _discard(response)
            await asyncio.sleep(random.random() * backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            request.attempt += 1
            request.headers.set(ATTEMPT_HEADER, str(request.attempt))
    finally:
        if holding_budget and traffic is not None:
            traffic.rq_retry_active -= 1


def _final(response: Response | None, error: UpstreamError | None, flag: str | None) -> Response:
    """The answer once no (more) retry happens: the last outcome, with ``flag`` added if any."""
    if response is not None:
        if flag:
            response.add_flag(flag)
        return response
    if error is not None:
        if flag is None:
            raise error  # the local-reply filter turns it into 503 + its flag
        return _error_reply(error, flag)
    return timeout_reply(flag) if flag else timeout_reply()
