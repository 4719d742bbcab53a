"""Envoy's per-cluster stats, named as Envoy and Istio name them, for the admin pages.

``cluster_stats(snapshot, upstream)`` reads the live state (``Cluster.traffic`` counters,
ejections, open upstream connections) of every cluster of the snapshot in effect and names
each cluster as Istio names Envoy's: ``outbound|<port>|<subset>|<service>.<ns>.svc.cluster.local``
(the workload's own app: ``inbound|<port>||``). ``render_text`` gives Envoy's ``/stats`` lines
(``cluster.<name>.upstream_rq_pending_overflow: 3``, what Istio's circuit-breaking task greps
for ``pending``); ``render_prometheus`` gives ``envoy_cluster_<stat>{cluster_name="<name>"}``
series for ``/stats/prometheus``.

Only the admin pages call this: nothing here runs on the request path.
"""

from __future__ import annotations

from typing import Any

# (Envoy stat name, Prometheus type). Envoy counts requests turned away by max_requests
# (http2MaxRequests) as pending overflow too, so upstream_rq_pending_overflow is their sum.
STATS: tuple[tuple[str, str], ...] = (
    ("upstream_cx_active", "gauge"),
    ("upstream_rq_active", "gauge"),
    ("upstream_rq_pending_active", "gauge"),
    ("upstream_rq_pending_overflow", "counter"),
    ("upstream_rq_retry", "counter"),
    ("upstream_rq_retry_success", "counter"),
    ("upstream_rq_retry_overflow", "counter"),
    ("upstream_rq_retry_limit_exceeded", "counter"),
    ("upstream_rq_timeout", "counter"),
    ("upstream_rq_per_try_timeout", "counter"),
    ("upstream_cx_none_healthy", "counter"),
    ("outlier_detection_ejections_active", "gauge"),
    ("outlier_detection_ejections_overflow", "counter"),
    ("membership_total", "gauge"),
    ("membership_healthy", "gauge"),
)


def envoy_cluster_name(cluster: Any, snapshot: Any) -> str:
    """Istio's name of the Envoy cluster behind ``cluster`` (a ``balancer.Cluster``)."""
    if cluster.name.startswith("inbound|"):
        return str(cluster.name)
    namespace = cluster.namespace
    if namespace is None:
        identity = next((ep.identity for ep in cluster.endpoints if ep.identity), None)
        namespace = snapshot.destination_namespace(identity)
    return f"outbound|{cluster.port}|{cluster.subset or ''}|{cluster.service}.{namespace}.svc.cluster.local"


def _values(cluster: Any, cx_by_endpoint: dict[tuple[str, int], int]) -> dict[str, int]:
    traffic = cluster.traffic
    view = cluster.admin_view()
    return {
        "upstream_cx_active": sum(cx_by_endpoint.get((ep.address, ep.port), 0) for ep in cluster.endpoints),
        "upstream_rq_active": traffic.rq_active,
        "upstream_rq_pending_active": len(traffic.pending),
        "upstream_rq_pending_overflow": traffic.upstream_rq_pending_overflow + traffic.upstream_rq_overflow,
        "upstream_rq_retry": traffic.upstream_rq_retry,
        "upstream_rq_retry_success": traffic.upstream_rq_retry_success,
        "upstream_rq_retry_overflow": traffic.upstream_rq_retry_overflow,
        "upstream_rq_retry_limit_exceeded": traffic.upstream_rq_retry_limit_exceeded,
        "upstream_rq_timeout": traffic.upstream_rq_timeout,
        "upstream_rq_per_try_timeout": traffic.upstream_rq_per_try_timeout,
        "upstream_cx_none_healthy": traffic.upstream_cx_none_healthy,
        "outlier_detection_ejections_active": int(view.get("ejections_active") or 0),
        "outlier_detection_ejections_overflow": int(view.get("ejections_overflow") or 0),
        "membership_total": len(cluster.endpoints),
        "membership_healthy": sum(1 for ep in cluster.endpoints if ep.healthy and not ep.ejected),
    }


def cluster_stats(snapshot: Any, upstream: Any) -> list[tuple[str, dict[str, int]]]:
    """``[(envoy cluster name, {stat: value})]``, sorted by name; [] before the first snapshot."""
    if snapshot is None:
        return []
    cx_by_endpoint = upstream.cx_active_by_endpoint()
    clusters = list(snapshot.clusters.values())
    if snapshot.inbound_cluster is not None:
        clusters.append(snapshot.inbound_cluster)
    entries = {envoy_cluster_name(c, snapshot): _values(c, cx_by_endpoint) for c in clusters}
    return sorted(entries.items())


def flat(entries: list[tuple[str, dict[str, int]]]) -> dict[str, int]:
    """Envoy's stat names: ``cluster.<cluster name>.<stat>`` -> value."""
    return {f"cluster.{name}.{stat}": values[stat] for name, values in entries for stat, _ in STATS}


def render_text(entries: list[tuple[str, dict[str, int]]]) -> str:
    """Envoy's text ``/stats`` lines, sorted as Envoy sorts them."""
    return "".join(f"{name}: {value}\n" for name, value in sorted(flat(entries).items()))


def render_prometheus(entries: list[tuple[str, dict[str, int]]]) -> str:
    out: list[str] = []
    for stat, kind in STATS:
        out.append(f"# TYPE envoy_cluster_{stat} {kind}")
        for name, values in entries:
            label = name.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'envoy_cluster_{stat}{{cluster_name="{label}"}} {values[stat]}')
    return "\n".join(out) + "\n" if entries else ""
