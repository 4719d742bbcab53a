"""Upstream clusters of the sidecar: endpoints, load-balancing policies and outlier ejection.

A ``Cluster`` is built once per snapshot from one entry of the snapshot's ``clusters`` section
(docs/snapshot.md) and answers two questions on the request path: ``pick(now)`` (which endpoint
gets this request; ``None`` means "no healthy upstream", Envoy's ``UH``) and
``on_result(endpoint, status, now)`` (what happened, which drives outlier detection).

Semantics follow Envoy as Istio configures it:

* ``ROUND_ROBIN`` cycles over the available endpoints, starting at a random offset.
* ``LEAST_REQUEST`` is Envoy's unweighted least-request balancer: two random choices (with
  replacement), the one with fewer active requests wins, ties go to the first (Istio's default).
* ``RANDOM`` picks uniformly.
* ``PASSTHROUGH`` (Envoy's ORIGINAL_DST) has no original destination to honour on 127.0.0.1: the
  sidecar treats it as ``ROUND_ROBIN`` over the endpoints the snapshot lists.
* Outlier detection: per endpoint, a consecutive-5xx counter (any 5xx) and a consecutive
  gateway-error counter (502/503/504; a connect failure, reset or timeout — ``status=None`` —
  counts as both, as Envoy maps it to 503/504). Reaching a threshold ejects the endpoint if the
  share of currently ejected endpoints is below ``max_ejection_percent`` (so one endpoint may be
  ejected even when the percentage allows "less than one"); the triggering counter is reset
  either way. The ejection lasts ``base_ejection_time * backoff`` (capped at 300 s, Envoy's
  ``max_ejection_time``), where ``backoff`` grows by one per ejection and shrinks by one per
  ``interval`` the endpoint stays un-ejected. Un-ejection happens on interval ticks (Envoy's
  sweep timer); here the ticks are evaluated lazily whenever ``pick``/``on_result`` runs, so no
  timer task is needed and tests can inject ``now``.
* ``healthy=false`` endpoints are never picked. There is no panic routing (Istio sets the panic
  threshold to 0): when nothing is left, ``pick`` returns ``None``.

``now`` is ``time.monotonic()`` seconds everywhere (tests pass their own values).
State that must survive a snapshot swap (ejections, counters, in-flight gauges, the circuit
breaker's pending queue) is carried over by ``adopt_state``.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from typing import Any

LB_POLICIES = frozenset({"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH"})
GATEWAY_ERROR_CODES = frozenset({502, 503, 504})
# Istio configures Envoy's previous_hosts retry predicate with host_selection_retry_max_attempts=5.
HOST_SELECTION_ATTEMPTS = 5
MAX_EJECTION_TIME_MS = 300_000  # Envoy's default max_ejection_time; Istio does not expose it
_EPSILON = 1e-9


class EndpointLoad:
    """The in-flight request gauge of one endpoint, shared by its copies across snapshot swaps."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


class Endpoint:
    """One upstream address of a cluster plus its health and outlier-detection state."""

    __slots__ = (
        "_load",
        "address",
        "consecutive_5xx",
        "consecutive_gateway_errors",
        "eject_backoff",
        "ejected",
        "ejected_at",
        "has_sidecar",
        "healthy",
        "hostport",
        "identity",
        "instance",
        "labels",
        "port",
        "rq_error",
        "rq_success",
        "times_ejected",
        "version",
        "workload",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        instance: str = "",
        workload: str = "",
        version: str | None = None,
        labels: dict[str, str] | None = None,
        identity: str | None = None,
        has_sidecar: bool = False,
        healthy: bool = True,
    ) -> None:
        self.address = address
        self.port = port
        self.hostport = f"{address}:{port}"
        self.instance = instance or self.hostport
        self.workload = workload
        self.version = version
        self.labels = labels if labels is not None else {}
        self.identity = identity
        self.has_sidecar = has_sidecar
        self.healthy = healthy
        self._load = EndpointLoad()
        self.consecutive_5xx = 0
        self.consecutive_gateway_errors = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.eject_backoff = 0  # Envoy's ejectTimeBackoff multiplier
        self.times_ejected = 0
        self.rq_success = 0
        self.rq_error = 0

    @property
    def active_requests(self) -> int:
        return self._load.active

    @active_requests.setter
    def active_requests(self, value: int) -> None:
        self._load.active = value

    def __repr__(self) -> str:
        return f"Endpoint({self.hostport} {self.instance})"


class OutlierPolicy:
    """The validated ``outlier_detection`` section, in seconds."""

    __slots__ = (
        "base_ejection_time",
        "consecutive_5xx",
        "consecutive_gateway_errors",
        "interval",
        "max_ejection_percent",
        "max_ejection_time",
    )

    def __init__(self, spec: dict[str, Any], where: str) -> None:
        # 0 or null disables that counter (Istio sets enforcing_* to 0 for an explicit 0).
        self.consecutive_5xx = _opt_int(spec, "consecutive_5xx_errors", where, 0) or 0
        self.consecutive_gateway_errors = _opt_int(spec, "consecutive_gateway_errors", where, 0) or 0
        self.interval = (_opt_int(spec, "interval_ms", where, 1) or 10_000) / 1000.0
        self.base_ejection_time = (_opt_int(spec, "base_ejection_time_ms", where, 1) or 30_000) / 1000.0
        self.max_ejection_time = (
            _opt_int(spec, "max_ejection_time_ms", where, 1) or MAX_EJECTION_TIME_MS
        ) / 1000.0
        percent = spec.get("max_ejection_percent", 10)
        if percent is None:
            percent = 10
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError(f"{where}.max_ejection_percent: expected a number 0-100, got {percent!r}")
        self.max_ejection_percent = float(percent)

    def _key(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, name)) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutlierPolicy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class ClusterTraffic:
    """Per-cluster gauges, counters and the circuit breaker's pending queue (Envoy cluster stats).

    Maintained by the traffic filters; shared by a cluster's successive snapshots so requests that
    started under an old snapshot still release what they took.
    """

    __slots__ = (
        "mirror_rq_failed",
        "mirror_rq_no_cluster",
        "mirror_rq_sent",
        "mirror_rq_skipped_streamed",
        "mirror_tasks",
        "pending",
        "rq_active",
        "rq_retry_active",
        "upstream_cx_none_healthy",
        "upstream_rq_overflow",
        "upstream_rq_pending_overflow",
        "upstream_rq_per_try_timeout",
        "upstream_rq_retry",
        "upstream_rq_retry_limit_exceeded",
        "upstream_rq_retry_overflow",
        "upstream_rq_retry_success",
        "upstream_rq_timeout",
    )

    COUNTERS = (
        "upstream_cx_none_healthy",
        "upstream_rq_overflow",
        "upstream_rq_pending_overflow",
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_rq_retry_limit_exceeded",
        "upstream_rq_timeout",
        "upstream_rq_per_try_timeout",
        "mirror_rq_sent",
        "mirror_rq_failed",
        "mirror_rq_skipped_streamed",
        "mirror_rq_no_cluster",
    )
    # the COUNTERS, set to 0 by __init__ (declared for the type checker)
    upstream_cx_none_healthy: int
    upstream_rq_overflow: int
    upstream_rq_pending_overflow: int
    upstream_rq_retry: int
    upstream_rq_retry_success: int
    upstream_rq_retry_overflow: int
    upstream_rq_retry_limit_exceeded: int
    upstream_rq_timeout: int
    upstream_rq_per_try_timeout: int
    mirror_rq_sent: int
    mirror_rq_failed: int
    mirror_rq_skipped_streamed: int
    mirror_rq_no_cluster: int

    def __init__(self) -> None:
        self.rq_active = 0  # requests holding a connection slot (HTTP/1.1: one per connection)
        self.rq_retry_active = 0
        self.pending: deque[Any] = deque()  # futures of requests waiting for a slot
        self.mirror_tasks: set[Any] = set()  # shadow requests in flight (kept referenced)
        for name in self.COUNTERS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.COUNTERS}
        out["upstream_rq_active"] = self.rq_active
        out["upstream_rq_pending_active"] = len(self.pending)
        out["upstream_rq_retry_active"] = self.rq_retry_active
        out["mirror_rq_active"] = len(self.mirror_tasks)
        return out


class Cluster:
    """One snapshot cluster: its endpoints, policy knobs and balancing/ejection state."""

    def __init__(
        self,
        name: str,
        *,
        service: str,
        subset: str,
        port: int,
        lb: str,
        endpoints: list[Endpoint],
        connection_pool: dict[str, Any] | None = None,
        outlier_detection: dict[str, Any] | None = None,
        tls: dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> None:
        where = f"clusters.{name}"
        if lb not in LB_POLICIES:
            raise ValueError(f"{where}.lb: unknown policy {lb!r} (expected one of {sorted(LB_POLICIES)})")
        self.name = name
        self.service = service
        self.namespace = namespace  # the service's namespace; None for a host outside the registry
        self.subset = subset
        self.port = port
        self.lb = lb
        self.endpoints = endpoints
        self.connection_pool = connection_pool
        self.outlier_detection = outlier_detection
        self.tls = tls
        pool = connection_pool or {}
        pool_where = f"{where}.connection_pool"
        # Istio only sets a circuit-breaker threshold when the value is > 0: 0 and null = unlimited.
        self.max_connections = _opt_int(pool, "max_connections", pool_where, 0) or None
        self.max_pending_requests = _opt_int(pool, "http1_max_pending_requests", pool_where, 0) or None
        self.max_requests = _opt_int(pool, "max_requests", pool_where, 0) or None
        self.max_retries = _opt_int(pool, "max_retries", pool_where, 0) or None
        self.max_requests_per_connection = (
            _opt_int(pool, "max_requests_per_connection", pool_where, 0) or None
        )
        self.connect_timeout_ms = _opt_int(pool, "connect_timeout_ms", pool_where, 1)
        self.idle_timeout_ms = _opt_int(pool, "idle_timeout_ms", pool_where, 1)
        self._outlier = (
            OutlierPolicy(outlier_detection, f"{where}.outlier_detection")
            if outlier_detection is not None
            else None
        )
        self.traffic = ClusterTraffic()
        self._next_sweep: float | None = None
        self._ejections_active = 0
        self._ejections_overflow = 0
        self._rr = random.randrange(len(endpoints)) if endpoints else 0
        self._choose = {
            "ROUND_ROBIN": self._round_robin,
            "PASSTHROUGH": self._round_robin,
            "LEAST_REQUEST": self._least_request,
            "RANDOM": self._random,
        }[lb]
        self._available: list[Endpoint] = []
        self._refresh()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, name: str, spec: dict[str, Any]) -> Cluster:
        """Validate one ``clusters`` entry; errors name the key path (``clusters.<name>.<key>``)."""
        where = f"clusters.{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object, got {type(spec).__name__}")
        service = _req_str(spec, "service", where)
        subset = spec.get("subset", "")
        if subset is None:
            subset = ""
        if not isinstance(subset, str):
            raise ValueError(f"{where}.subset: expected a string, got {subset!r}")
        port = _req_port(spec, "port", where)
        namespace = spec.get("namespace")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ValueError(f"{where}.namespace: expected a namespace name or null, got {namespace!r}")
        lb = spec.get("lb", "LEAST_REQUEST")
        if lb not in LB_POLICIES:
            raise ValueError(f"{where}.lb: unknown policy {lb!r} (expected one of {sorted(LB_POLICIES)})")
        raw_endpoints = spec.get("endpoints")
        if not isinstance(raw_endpoints, list):
            raise ValueError(f"{where}.endpoints: expected a list, got {raw_endpoints!r}")
        endpoints = [_endpoint(item, f"{where}.endpoints[{i}]") for i, item in enumerate(raw_endpoints)]
        sections: dict[str, dict[str, Any] | None] = {}
        for key in ("connection_pool", "outlier_detection", "tls"):
            value = spec.get(key)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected an object or null, got {value!r}")
            sections[key] = value
        return cls(
            name,
            service=service,
            subset=subset,
            port=port,
            lb=lb,
            endpoints=endpoints,
            connection_pool=sections["connection_pool"],
            outlier_detection=sections["outlier_detection"],
            tls=sections["tls"],
            namespace=namespace,
        )

    def adopt_state(self, previous: Cluster) -> None:
        """Carry state over from the same-named cluster of the previous snapshot.

        Endpoints are matched on ``hostport``. The in-flight gauge object is shared (requests in
        flight on the old snapshot decrement it); request counters are copied. The outlier
        detector's state (consecutive errors, ejections) is kept only when both snapshots have
        the SAME outlier policy: Envoy starts a fresh detector when the policy changes and drops
        ejections with it (a carried counter already past a lowered threshold never ejects).
        """
        self.traffic = previous.traffic
        self._rr = previous._rr
        old = {ep.hostport: ep for ep in previous.endpoints}
        keep_outlier = self._outlier is not None and self._outlier == previous._outlier
        for ep in self.endpoints:
            prev = old.get(ep.hostport)
            if prev is None:
                continue
            ep._load = prev._load
            ep.rq_success = prev.rq_success
            ep.rq_error = prev.rq_error
            ep.times_ejected = prev.times_ejected
            if keep_outlier:
                ep.consecutive_5xx = prev.consecutive_5xx
                ep.consecutive_gateway_errors = prev.consecutive_gateway_errors
                ep.ejected = prev.ejected
                ep.ejected_at = prev.ejected_at
                ep.eject_backoff = prev.eject_backoff
        if keep_outlier:
            self._next_sweep = previous._next_sweep
            self._ejections_overflow = previous._ejections_overflow
        self._ejections_active = sum(1 for ep in self.endpoints if ep.ejected)
        self._refresh()

    # -- request path -------------------------------------------------------------------------

    def pick(self, now: float, avoid: Endpoint | None = None) -> Endpoint | None:
        """Choose an endpoint, or ``None`` when no healthy, non-ejected endpoint is left.

        ``avoid`` is the endpoint a previous attempt of the same request failed on: the choice is
        repeated up to ``HOST_SELECTION_ATTEMPTS`` times to get another one (Envoy's
        previous_hosts retry predicate), then the last choice is taken anyway.
        """
        if self._outlier is not None:
            self._sweep(now)
        hosts = self._available
        count = len(hosts)
        if count == 0:
            return None
        if count == 1:
            return hosts[0]
        choose = self._choose
        endpoint = choose(hosts, count)
        if avoid is not None:
            tries = 1
            while endpoint is avoid and tries < HOST_SELECTION_ATTEMPTS:
                endpoint = choose(hosts, count)
                tries += 1
        return endpoint

    def on_result(self, endpoint: Endpoint, status: int | None, now: float) -> None:
        """Record one upstream outcome; ``status=None`` is a connect failure, reset or timeout."""
        if status is not None and status < 500:
            endpoint.rq_success += 1
            endpoint.consecutive_5xx = 0
            endpoint.consecutive_gateway_errors = 0
            return
        endpoint.rq_error += 1
        policy = self._outlier
        if policy is None:
            return
        self._sweep(now)
        if status is None or status in GATEWAY_ERROR_CODES:
            endpoint.consecutive_gateway_errors += 1
            if endpoint.consecutive_gateway_errors == policy.consecutive_gateway_errors and self._eject(
                endpoint, now
            ):
                endpoint.consecutive_gateway_errors = 0
        else:
            endpoint.consecutive_gateway_errors = 0
        endpoint.consecutive_5xx += 1
        if endpoint.consecutive_5xx == policy.consecutive_5xx and self._eject(endpoint, now):
            endpoint.consecutive_5xx = 0

    # -- balancing policies -------------------------------------------------------------------

    def _round_robin(self, hosts: list[Endpoint], count: int) -> Endpoint:
        index = self._rr
        self._rr = index + 1
        return hosts[index % count]

    def _least_request(self, hosts: list[Endpoint], count: int) -> Endpoint:
        first = hosts[int(random.random() * count)]
        second = hosts[int(random.random() * count)]
        return second if second._load.active < first._load.active else first

    def _random(self, hosts: list[Endpoint], count: int) -> Endpoint:
        return hosts[int(random.random() * count)]

    # -- outlier detection --------------------------------------------------------------------

    def _eject(self, endpoint: Endpoint, now: float) -> bool:
        """Handle a detected outlier; False when it was already ejected (Envoy ignores those).

        True means the detection was processed (the caller resets the triggering counter),
        whether or not ``max_ejection_percent`` allowed the ejection itself.
        """
        policy = self._outlier
        if policy is None or endpoint.ejected:
            return False
        ejected_percent = 100.0 * self._ejections_active / len(self.endpoints)
        if ejected_percent >= policy.max_ejection_percent:
            self._ejections_overflow += 1
            return True
        endpoint.ejected = True
        endpoint.ejected_at = now
        endpoint.times_ejected += 1
        if endpoint.eject_backoff * policy.base_ejection_time < (
            policy.max_ejection_time + policy.base_ejection_time
        ):
            endpoint.eject_backoff += 1
        self._ejections_active += 1
        self._refresh()
        return True

    def _ejection_duration(self, endpoint: Endpoint) -> float:
        policy = self._outlier
        assert policy is not None
        return min(policy.base_ejection_time * endpoint.eject_backoff, policy.max_ejection_time)

    def _sweep(self, now: float) -> None:
        """Run every interval tick in ``(last tick, now]`` (un-ejection and backoff decay)."""
        policy = self._outlier
        assert policy is not None
        first_tick = self._next_sweep
        if first_tick is None:
            self._next_sweep = now + policy.interval
            return
        if now < first_tick:
            return
        interval = policy.interval
        ticks = int((now - first_tick) // interval) + 1
        changed = False
        for ep in self.endpoints:
            if ep.ejected:
                due = ep.ejected_at + self._ejection_duration(ep)
                index = 0 if due <= first_tick else math.ceil((due - first_tick) / interval - _EPSILON)
                if index < ticks:
                    ep.ejected = False
                    ep.consecutive_5xx = 0
                    ep.consecutive_gateway_errors = 0
                    self._ejections_active -= 1
                    changed = True
                    # Envoy decays the backoff on each later tick the endpoint stays un-ejected.
                    ep.eject_backoff = max(0, ep.eject_backoff - (ticks - index - 1))
            elif ep.eject_backoff:
                ep.eject_backoff = max(0, ep.eject_backoff - ticks)
        self._next_sweep = first_tick + ticks * interval
        if changed:
            self._refresh()

    def _refresh(self) -> None:
        self._available = [ep for ep in self.endpoints if ep.healthy and not ep.ejected]

    # -- introspection ------------------------------------------------------------------------

    def admin_view(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready state for the admin ``/clusters`` page."""
        if now is None:
            now = time.monotonic()
        policy = self._outlier
        endpoints = []
        for ep in self.endpoints:
            remaining_ms = None
            if ep.ejected and policy is not None:
                remaining_ms = max(0, round((ep.ejected_at + self._ejection_duration(ep) - now) * 1000))
            endpoints.append(
                {
                    "hostport": ep.hostport,
                    "instance": ep.instance,
                    "workload": ep.workload,
                    "version": ep.version,
                    "healthy": ep.healthy,
                    "ejected": ep.ejected,
                    "ejection_remaining_ms": remaining_ms,
                    "times_ejected": ep.times_ejected,
                    "active_requests": ep._load.active,
                    "consecutive_5xx": ep.consecutive_5xx,
                    "consecutive_gateway_errors": ep.consecutive_gateway_errors,
                    "rq_success": ep.rq_success,
                    "rq_error": ep.rq_error,
                }
            )
        return {
            "name": self.name,
            "service": self.service,
            "subset": self.subset,
            "port": self.port,
            "lb": self.lb,
            "circuit_breakers": {
                "max_connections": self.max_connections,
                "max_pending_requests": self.max_pending_requests,
                "max_requests": self.max_requests,
                "max_retries": self.max_retries,
                "max_requests_per_connection": self.max_requests_per_connection,
            },
            "outlier_detection": self.outlier_detection,
            "ejections_active": self._ejections_active,
            "ejections_overflow": self._ejections_overflow,
            "stats": self.traffic.as_dict(),
            "endpoints": endpoints,
        }


# -- validation helpers (snapshot JSON -> typed values, errors naming the key path) -------------


def _endpoint(item: Any, where: str) -> Endpoint:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {item!r}")
    address = _req_str(item, "address", where)
    port = _req_port(item, "port", where)
    labels = item.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"{where}.labels: expected an object of strings, got {labels!r}")
    flags = {}
    for key, default in (("has_sidecar", False), ("healthy", True)):
        value = item.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"{where}.{key}: expected true or false, got {value!r}")
        flags[key] = value
    return Endpoint(
        address,
        port,
        instance=_opt_str(item, "instance", where) or "",
        workload=_opt_str(item, "workload", where) or "",
        version=_opt_str(item, "version", where),
        labels=labels,
        identity=_opt_str(item, "identity", where),
        has_sidecar=flags["has_sidecar"],
        healthy=flags["healthy"],
    )


def _req_str(spec: dict[str, Any], key: str, where: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _opt_str(spec: dict[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string or null, got {value!r}")
    return value


def _req_port(spec: dict[str, Any], key: str, where: str) -> int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{where}.{key}: expected a port number 1-65535, got {value!r}")
    return value


def _opt_int(spec: dict[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{key}: expected an integer >= {minimum} or null, got {value!r}")
    return value
