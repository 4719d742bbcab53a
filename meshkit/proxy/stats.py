"""Counters and Istio metrics of one sidecar, rendered as Prometheus text by hand.

``IstioMetrics`` holds one ``Series`` per distinct label set of Istio's standard metrics
(``istio_requests_total``, ``istio_request_duration_milliseconds``, ``istio_request_bytes``,
``istio_response_bytes``). Callers look a series up with a cheap key tuple of their own
(hashable objects they already have); the label strings are built once, on the first
request with that key. ``ProxyStats`` is the Envoy-like counter set behind the admin
``/stats`` page. No prometheus_client here: the sidecar stays small and allocation-light.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable
from typing import Any

# Istio's default buckets (istio/proxy stats plugin).
DURATION_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)
BYTES_BUCKETS: tuple[float, ...] = tuple(float(10**i) for i in range(10))  # 1 .. 1e9

# Istio's standard labels, in the order Istio's stats plugin emits them (Istio 1.2x).
LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "response_flags",
    "connection_security_policy",
)
CLUSTER_ID = "Kubernetes"  # Istio's default cluster ID (values.global.multiCluster.clusterName)
MAX_FAST_KEYS = 4096  # the key cache is dropped (not the series) when it grows beyond this


def canonical_service(labels: dict[str, str], fallback: str) -> str:
    """Istio's canonical service: ``service.istio.io/canonical-name``, ``app.kubernetes.io/name``,
    ``app``, else the workload name."""
    return (
        labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name")
        or labels.get("app") or fallback
    )


def canonical_revision(labels: dict[str, str]) -> str:
    """Istio's canonical revision: ``service.istio.io/canonical-revision``,
    ``app.kubernetes.io/version``, ``version``, else ``latest``."""
    return (
        labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version")
        or labels.get("version") or "latest"
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Histogram:
    """Non-cumulative bucket counts (cumulated at render time), plus sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Series:
    """All four Istio metrics for one label set."""

    __slots__ = ("duration", "labels", "request_bytes", "requests", "response_bytes")

    def __init__(self, labels: str) -> None:
        self.labels = labels  # 'reporter="source",source_workload="..."' (without braces)
        self.requests = 0
        self.duration = Histogram(DURATION_BUCKETS)
        self.request_bytes = Histogram(BYTES_BUCKETS)
        self.response_bytes = Histogram(BYTES_BUCKETS)

    def record(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        # Histogram.observe inlined three times: this runs once per request (3 calls less).
        self.requests += 1
        hist = self.duration
        hist.counts[bisect_left(hist.bounds, duration_ms)] += 1
        hist.sum += duration_ms
        hist.count += 1
        hist = self.request_bytes
        hist.counts[bisect_left(hist.bounds, request_bytes)] += 1
        hist.sum += request_bytes
        hist.count += 1
        hist = self.response_bytes
        hist.counts[bisect_left(hist.bounds, response_bytes)] += 1
        hist.sum += response_bytes
        hist.count += 1


class IstioMetrics:
    """The registry of Istio's request metrics for this proxy."""

    def __init__(self) -> None:
        self._fast: dict[Hashable, Series] = {}
        self._series: dict[str, Series] = {}

    @property
    def fast_keys(self) -> dict[Hashable, Series]:
        """The key -> series cache, for callers that want to skip a method call on a hit."""
        return self._fast

    def series(self, key: Hashable, labels: Callable[[], dict[str, str]]) -> Series:
        """The series for ``key``; ``labels()`` is only called the first time a key is seen."""
        found = self._fast.get(key)
        if found is not None:
            return found
        values = labels()
        text = ",".join(f'{name}="{_escape(str(values.get(name, "unknown")))}"' for name in LABEL_NAMES)
        found = self._series.get(text)
        if found is None:
            found = self._series[text] = Series(text)
        if len(self._fast) >= MAX_FAST_KEYS:
            self._fast.clear()  # cleared in place: callers may hold a reference to this dict
        self._fast[key] = found
        return found

    def render(self) -> str:
        series = list(self._series.values())
        out: list[str] = [
            "# HELP istio_requests_total Total requests handled by this proxy.",
            "# TYPE istio_requests_total counter",
        ]
        out.extend(f"istio_requests_total{{{s.labels}}} {s.requests}" for s in series)
        for name, attr, help_text in (
            ("istio_request_duration_milliseconds", "duration", "Request duration in milliseconds."),
            ("istio_request_bytes", "request_bytes", "Request body sizes in bytes."),
            ("istio_response_bytes", "response_bytes", "Response body sizes in bytes."),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} histogram")
            for s in series:
                hist: Histogram = getattr(s, attr)
                running = 0
                for bound, count in zip(hist.bounds, hist.counts, strict=False):
                    running += count
                    out.append(f'{name}_bucket{{{s.labels},le="{_format_number(bound)}"}} {running}')
                out.append(f'{name}_bucket{{{s.labels},le="+Inf"}} {hist.count}')
                out.append(f"{name}_sum{{{s.labels}}} {_format_number(hist.sum)}")
                out.append(f"{name}_count{{{s.labels}}} {hist.count}")
        return "\n".join(out) + "\n"


class ProxyStats:
    """Envoy-style counters for the admin ``/stats`` page (plain ints, bumped in place)."""

    __slots__ = (
        "downstream_cx_active",
        "downstream_cx_proxy_proto_error",
        "downstream_cx_total",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        "downstream_rq_active",
        "downstream_rq_idle_timeout",
        "downstream_rq_rejected",
        "downstream_rq_total",
    )
    downstream_cx_active: int
    downstream_cx_proxy_proto_error: int  # Envoy's proxy_protocol listener filter: connections closed
    downstream_cx_total: int
    downstream_rq_1xx: int
    downstream_rq_2xx: int
    downstream_rq_3xx: int
    downstream_rq_4xx: int
    downstream_rq_5xx: int
    downstream_rq_active: int
    downstream_rq_idle_timeout: int
    downstream_rq_rejected: int
    downstream_rq_total: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def count_status(self, status: int) -> None:
        klass = status // 100
        if klass == 2:
            self.downstream_rq_2xx += 1
        elif klass == 5:
            self.downstream_rq_5xx += 1
        elif klass == 4:
            self.downstream_rq_4xx += 1
        elif klass == 3:
            self.downstream_rq_3xx += 1
        elif klass == 1:
            self.downstream_rq_1xx += 1

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}
