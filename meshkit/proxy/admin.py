"""The admin listener's pages (Envoy-like): config dump, Prometheus metrics, clusters, stats, readiness.

``Admin(...).handle`` is an ordinary terminal handler for a ``Listener``: small JSON or text
replies, no filters. Pages are GET (read-only); the one mutating endpoint, like Envoy's admin
``POST`` endpoints, is ``POST /certs/rotate`` (renew the workload certificate now; JSON with the
old and new serial and expiry; 409 without mTLS or with fixed certificates, 503 when the CA is
unreachable or refuses, the old certificate serving on). It is answered only to callers on the
loopback interface (403 otherwise), even when the admin port listens wider (Kubernetes pods).

Pages: ``/config_dump`` (current snapshot, version, last
NACK), ``/stats/prometheus`` (Istio metrics, then Envoy's ``envoy_cluster_*`` per-cluster
series), ``/stats`` (JSON counters; ``"cluster"`` holds Envoy's per-cluster stats by their
Envoy names; ``/stats?format=text`` is Envoy's text form of those; ``tracing``: spans recorded,
shipped, dropped), ``/clusters``
(per-cluster balancer view), ``/certs`` (the workload certificate chain, validity, serial
and time to rotation; ``{"ready": false}`` without mTLS), ``/ready`` and ``/healthz/ready``
(200 once a snapshot is applied and, with mTLS, the first certificate installed; else 503),
``/access_log?request_id=ID`` (this sidecar's access-log lines of one request: `access_search`),
``/memory`` (RSS and PSS of each of the sidecar's processes).

With ``--concurrency N`` (``workers``) the admin port is the first process's: ``/stats`` and
``/stats/prometheus`` sum every process's counters, asked over the workers' pipes when scraped
(``stats_merge``; ``/stats`` adds ``"workers"``, each process's pid and own counts), ``/ready`` waits
until every worker has applied the current snapshot and installed the current certificate, and
``/config_dump``, ``/clusters`` and ``/certs`` show the first process's view (the workers apply the
same snapshots and certificates).
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from meshkit.proxy.access_search import MAX_ID, find_lines
from meshkit.proxy.cluster_stats import cluster_stats, flat, render_prometheus, render_text
from meshkit.proxy.http import Headers, Request, Response
from meshkit.proxy.listener import Listener
from meshkit.proxy.stats import IstioMetrics
from meshkit.proxy.upstream import Upstream
from meshkit.proxy.xds import ConfigState

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _reply(status: int, body: str, content_type: str) -> Response:
    data = body.encode()
    headers = Headers([("content-type", content_type), ("cache-control", "no-cache")])
    return Response(status, headers, data)


def _json(value: Any, status: int = 200) -> Response:
    return _reply(status, json.dumps(value, indent=2, default=str) + "\n", "application/json")


def _config_gauges(current: Any) -> str:
    """When the snapshot in effect was applied, and when it served its first request (if it has):
    the control plane's scraper reads these for the apply-to-effect timeline."""
    if current is None:
        return ""
    version = current.version.replace("\\", "\\\\").replace('"', '\\"')
    lines = [
        "# HELP meshkit_config_applied_timestamp_seconds When the snapshot in effect was applied.",
        "# TYPE meshkit_config_applied_timestamp_seconds gauge",
        f'meshkit_config_applied_timestamp_seconds{{version="{version}"}} {current.applied_at:.6f}',
    ]
    if current.first_request_at is not None:
        lines += [
            "# HELP meshkit_config_first_request_timestamp_seconds When the snapshot in effect served "
            "its first request.",
            "# TYPE meshkit_config_first_request_timestamp_seconds gauge",
            f'meshkit_config_first_request_timestamp_seconds{{version="{version}"}} '
            f"{current.first_request_at:.6f}",
        ]
    return "\n".join(lines) + "\n"


class Admin:
    """Answers admin requests from the proxy's live state."""

    def __init__(
        self,
        state: ConfigState,
        metrics: IstioMetrics,
        upstream: Upstream,
        listeners: dict[str, Listener],
        *,
        certificates: Any = None,
        tls_stats: Any = None,
        spans: Any = None,
        passthrough: Any = None,
        tunnels: Any = None,
        access_log_path: str | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.upstream = upstream
        self.listeners = listeners
        self.certificates = certificates  # tls.sidecar.SidecarCertificates, None = plaintext sidecar
        self.tls_stats = tls_stats  # tls.inbound.TlsStats
        self.spans = spans  # spans.SpanRecorder, None = no collector to ship spans to
        self.passthrough = passthrough  # passthrough.PassthroughStats (a captured pod's sidecar)
        self.tunnels = tunnels  # tunnel.TcpMetrics: Istio's TCP metrics of CONNECT/passthrough tunnels
        self.access_log_path = access_log_path  # the JSON access log file (None: off, or stdout)
        self.started = time.time()
        self.workers: Any = None  # workers.Pool of a --concurrency N > 1 sidecar

    async def handle(self, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        action = self._actions.get(path)
        if action is not None:
            if request.method != "POST":
                return _reply(405, f"{path} changes the sidecar: use POST\n", "text/plain")
            if not _loopback(request.downstream_addr):
                return _reply(403, f"{path} is answered only on 127.0.0.1 (caller "
                                   f"{request.downstream_addr or 'unknown'})\n", "text/plain")
            return await action(self)
        if request.method not in ("GET", "HEAD"):
            return _reply(405, f"admin page {path!r} is read-only (GET); POST only to: "
                               f"{', '.join(sorted(self._actions))}\n", "text/plain")
        if self.workers is not None and path in ("/stats", "/stats/prometheus"):
            return await self.summed(path, query)
        if path == "/stats":
            return self.stats(query)
        if path == "/access_log":
            return self.access_lines(query)
        page = self._pages.get(path)
        if page is None:
            known = ", ".join(sorted(self._pages))
            return _reply(404, f"no admin page {path!r}; pages: {known}; POST: "
                               f"{', '.join(sorted(self._actions))}\n", "text/plain")
        return page(self)

    async def rotate_certificate(self) -> Response:
        certificates = self.certificates
        if certificates is None:
            return _json({"rotated": False, "error": "this sidecar runs without mTLS (no CA token): "
                                                      "there is no workload certificate to rotate"}, 409)
        rotate_now = getattr(certificates, "rotate_now", None)
        if rotate_now is None:
            return _json({"rotated": False, "error": "this sidecar's certificate comes from files "
                                                      "(--tls-dir), not from a CA: it is never rotated"}, 409)
        from meshkit.proxy.tls.sidecar import RotationRefused  # noqa: PLC0415 - TLS modules only with mTLS

        try:
            answer: dict[str, Any] = await rotate_now()
        except RotationRefused as refused:
            return _json({"rotated": False, "error": str(refused)}, refused.status)
        return _json(answer)

    def ready(self) -> Response:
        if self.state.current is None:
            return _reply(503, "not ready: no snapshot applied yet\n", "text/plain")
        if self.certificates is not None and not self.certificates.ready:
            return _reply(503, "not ready: no workload certificate yet\n", "text/plain")
        lagging = self.workers.lagging() if self.workers is not None else None
        if lagging is not None:
            return _reply(503, f"not ready: {lagging}\n", "text/plain")
        return _reply(200, "LIVE\n", "text/plain")

    async def summed(self, path: str, query: str) -> Response:
        """``/stats`` or ``/stats/prometheus`` of a --concurrency sidecar: every process's counters."""
        from meshkit.proxy import stats_merge  # noqa: PLC0415 - only with --concurrency N > 1

        reports = await self.workers.reports()
        if path == "/stats/prometheus":
            texts = [self.worker_prometheus()] + [str(r.get("prometheus", "")) for r in reports]
            text = stats_merge.prometheus(texts) + _config_gauges(self.state.current)
            return _reply(200, text, PROMETHEUS_TYPE)
        if urllib.parse.parse_qs(query).get("format") == ["text"]:  # Envoy's per-cluster text: this process's
            return self.stats(query)
        own = self.stats_document()
        merged = stats_merge.documents([own] + [r.get("stats") for r in reports])
        merged["uptime_s"], merged["config"] = own["uptime_s"], own["config"]
        by_pid = {r.get("pid"): r for r in reports}
        workers = self.workers.describe()
        for entry in workers:
            doc = own if entry["index"] == 0 else (by_pid.get(entry["pid"]) or {}).get("stats")
            entry["reported"] = doc is not None
            if doc is not None:
                entry["listeners"] = {name: {"downstream_rq_total": lst.get("downstream_rq_total"),
                                             "downstream_cx_total": lst.get("downstream_cx_total")}
                                      for name, lst in doc.get("listeners", {}).items()}
        merged["workers"] = workers
        return _json(merged)

    def worker_prometheus(self) -> str:
        """This process's Istio and per-cluster series (a --concurrency worker's part of the sum)."""
        clusters = cluster_stats(self.state.current, self.upstream)
        text = self.metrics.render() + render_prometheus(clusters)
        if self.passthrough is not None:
            text += self.passthrough.prometheus()
        if self.tunnels is not None:
            text += self.tunnels.prometheus()
        return text

    def memory(self) -> Response:
        """RSS and PSS of the sidecar's processes (one, or the --concurrency workers too)."""
        if self.workers is not None:
            return _json(self.workers.memory())
        import os  # noqa: PLC0415

        from meshkit.proxy.workers import process_memory  # noqa: PLC0415 - a small leaf, read on demand

        own = {"index": 0, "pid": os.getpid(), **process_memory(os.getpid())}
        return _json({"concurrency": 1, "processes": [own], "rss_bytes": own["rss_bytes"],
                      "pss_bytes": own["pss_bytes"]})

    def access_lines(self, query: str) -> Response:
        """``/access_log?request_id=ID``: this sidecar's access-log lines of that request."""
        request_id = (urllib.parse.parse_qs(query).get("request_id") or [""])[0]
        if not request_id or len(request_id) > MAX_ID:
            return _json({"error": f"request_id: required, at most {MAX_ID} characters"}, 400)
        if self.access_log_path is None:
            return _json({"request_id": request_id, "lines": [], "reason": "this sidecar writes no access "
                          "log file (--access-log off or -)"})
        try:
            lines = find_lines(self.access_log_path, request_id)
        except OSError as exc:
            reason = f"cannot read the access log: {exc}"
            return _json({"request_id": request_id, "lines": [], "reason": reason})
        return _json({"request_id": request_id, "lines": lines})

    def certs(self) -> Response:
        if self.certificates is None:
            return _json({"ready": False, "mtls": False, "reason": "this sidecar runs without a CA token"})
        return _json({"mtls": True, **self.certificates.describe()})

    def config_dump(self) -> Response:
        current = self.state.current
        return _json(
            {
                "version": current.version if current is not None else None,
                "snapshot": current.doc if current is not None else None,
                "last_nack": self.state.last_nack,
                "applied": self.state.applied,
                "rejected": self.state.rejected,
                "source": self.state.source,
                "source_error": self.state.source_error,
            }
        )

    def prometheus(self) -> Response:
        clusters = cluster_stats(self.state.current, self.upstream)
        text = self.metrics.render() + render_prometheus(clusters) + _config_gauges(self.state.current)
        if self.passthrough is not None:
            text += self.passthrough.prometheus()
        if self.tunnels is not None:
            text += self.tunnels.prometheus()
        return _reply(200, text, PROMETHEUS_TYPE)

    def stats(self, query: str = "") -> Response:
        params = urllib.parse.parse_qs(query)
        clusters = cluster_stats(self.state.current, self.upstream)
        if params.get("format") == ["text"]:
            return _reply(200, render_text(clusters), "text/plain")
        return _json(self.stats_document(clusters))

    def stats_document(self, clusters: Any = None) -> dict[str, Any]:
        """``/stats``'s JSON document, of this process."""
        upstream = self.upstream
        if clusters is None:
            clusters = cluster_stats(self.state.current, self.upstream)
        return (
            {
                "uptime_s": round(time.time() - self.started, 3),
                "listeners": {name: lst.stats.as_dict() for name, lst in self.listeners.items()},
                "upstream": {
                    "cx_total": upstream.cx_total,
                    "cx_active": upstream.cx_active,
                    "cx_connect_fail": upstream.cx_connect_fail,
                    "rq_total": upstream.rq_total,
                    "cx_mtls_total": upstream.cx_mtls_total,
                    "cx_peer_identity_fail": upstream.cx_peer_identity_fail,
                },
                "mtls": self.tls_stats.as_dict() if self.tls_stats is not None else None,
                "gateway_mtls": self._gateway_mtls(),
                "cluster": flat(clusters),
                "tracing": self.spans.stats() if self.spans is not None else None,
                "passthrough": self.passthrough.as_dict() if self.passthrough is not None else None,
                "config": {
                    "version": self.state.current.version if self.state.current is not None else None,
                    "applied": self.state.applied,
                    "rejected": self.state.rejected,
                },
            }
        )

    def _gateway_mtls(self) -> dict[str, int] | None:
        """A gateway's ISTIO_MUTUAL servers' counters (tls.gateway_mutual), once it had such a server."""
        outbound = self.listeners.get("outbound")
        found = getattr(getattr(outbound, "acceptor", None), "mutual_stats", None)
        return found.as_dict() if found is not None else None

    def clusters(self) -> Response:
        current = self.state.current
        if current is None:
            return _json({})
        view = {name: cluster.admin_view() for name, cluster in current.clusters.items()}
        if current.inbound_cluster is not None:
            view[current.inbound_cluster.name] = current.inbound_cluster.admin_view()
        return _json(view)

    _actions: dict[str, Callable[[Admin], Awaitable[Response]]] = {
        "/certs/rotate": rotate_certificate,
    }

    _pages: dict[str, Callable[[Admin], Response]] = {
        "/ready": ready,
        "/healthz/ready": ready,
        "/config_dump": config_dump,
        "/stats/prometheus": prometheus,
        "/stats": stats,
        "/clusters": clusters,
        "/certs": certs,
        "/memory": memory,
    }


def _loopback(address: str) -> bool:
    """The caller's address (the listener's peer host) is 127.0.0.0/8 or ::1 (also IPv4-mapped)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)
