"""`Comparison`: lab 09's three shapes measured against one destination of the running mesh.

``bench = Comparison(mesh)`` (destination ``details``, path ``/details/0``, client
``productpage-v1-0``), then:

- ``bench.library()``: a `ResilientClient` in this process calls the app's own port (no proxy);
- ``bench.node_agent()``: a shared `NodeProxy` (started once, kept until ``close()``) forwards to
  the app's port;
- ``bench.sidecar()``: through the client's sidecar and the destination's sidecar (mTLS between
  them), as every request in the mesh goes.

Around every run the proxies' own ``/stats`` counters are read: a proxy whose counter grew by every
request of the run was on the path (none, the node proxy, or both sidecars).

``table()``, ``chart()`` (plotly FigureWidget, updated after each run) and ``capabilities()``
report latency, proxies on the path, processes and proxy memory (RSS from /proc). The
``check_*`` methods are the lab's step checks: they read real counters, never a flag set here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from meshkit.control.telemetry import REQUESTS_PREFIX, parse_labels
from meshkit.lab.checks import CheckFailed, expect
from meshkit.lab.display import LabError, Table
from meshkit.lab.history.library import Answer, ProxiedClient, ResilientClient
from meshkit.lab.history.measure import Measurement, run_bounded
from meshkit.lab.history.node_agent import NodeProxy, fetch_json, fetch_text, node_snapshot
from meshkit.lab.mesh import Mesh
from meshkit.runtime.catalog import workload_of
from meshkit.runtime.processes import rss_bytes

__all__ = [
    "CAPABILITIES",
    "COLOURS",
    "LIBRARY",
    "MAX_TELEMETRY_WINDOW",
    "MIB",
    "NODE_AGENT",
    "NODE_PROXY",
    "REQUESTS_PREFIX",
    "SHAPES",
    "SIDECAR",
    "Comparison",
    "capabilities",
]

LIBRARY, NODE_AGENT, SIDECAR = "library", "node agent", "sidecar"
NODE_PROXY = "node proxy"
SHAPES = (LIBRARY, NODE_AGENT, SIDECAR)
COLOURS = {LIBRARY: "#54a24b", NODE_AGENT: "#f58518", SIDECAR: "#4c78a8"}
MIB = 1024 * 1024
MAX_TELEMETRY_WINDOW = 600.0

CAPABILITIES = [
    {"question": "language coupling", LIBRARY: "one library per language and framework",
     NODE_AGENT: "none: any app speaks HTTP to it", SIDECAR: "none: any app speaks HTTP to it"},
    {"question": "upgrading the mesh", LIBRARY: "rebuild and redeploy every app",
     NODE_AGENT: "one proxy per node, all its workloads at once", SIDECAR: "restart each workload"},
    {"question": "blast radius of a proxy bug/crash", LIBRARY: "the one app",
     NODE_AGENT: "every workload on the node", SIDECAR: "the one workload"},
    {"question": "mTLS identity per workload", LIBRARY: "only if each library does TLS itself",
     NODE_AGENT: "holds the keys of every workload on the node (ztunnel) or one node identity (Linkerd 1)",
     SIDECAR: "yes: one key, next to its workload"},
    {"question": "L7 policy (routes, retries, authz)", LIBRARY: "in code, per language",
     NODE_AGENT: "Linkerd 1: yes; ztunnel: L4 only, L7 needs a waypoint proxy",
     SIDECAR: "yes, on both ends"},
    {"question": "the mesh sees the traffic", LIBRARY: "no (only what the app reports)",
     NODE_AGENT: "yes, one proxy per node", SIDECAR: "yes, on both ends"},
]


def capabilities() -> Table:
    """What each shape can and cannot do (the qualitative half of the comparison)."""
    return Table(CAPABILITIES, ["question", *SHAPES], title="library vs node agent vs sidecar")


class Comparison:
    """Measure the three shapes against ``service`` (``path``) of the local mesh, from ``client``."""

    def __init__(self, mesh: Mesh, *, service: str = "details", path: str = "/details/0",
                 client: str = "productpage-v1-0", min_requests: int = 200) -> None:
        self.mesh = mesh
        self.service = service
        self.path = path
        self.client = client
        self.min_requests = min_requests
        self.results: dict[str, Measurement] = {}
        self.node: NodeProxy | None = None
        self._figure: Any = None

    # -- what the mesh runs -----------------------------------------------------------------------

    def _workloads(self) -> list[dict[str, Any]]:
        rows = self.mesh.workloads()
        if not rows:
            raise LabError("lab 09 measures processes of the local mesh: connect() without a URL")
        return rows

    def _destination_rows(self) -> list[dict[str, Any]]:
        rows = [r for r in self._workloads() if r.get("service") == self.service and r.get("healthy")]
        if not rows:
            raise LabError(f"Comparison service: no healthy instance of {self.service!r} is running "
                           "(mesh.status() lists them)")
        return rows

    def _client_row(self) -> dict[str, Any]:
        for row in self._workloads():
            if row["name"] == self.client:
                if not row.get("admin_port") or not row.get("outbound_proxy"):
                    raise LabError(f"Comparison client: {self.client!r} has no sidecar to send through")
                return row
        names = ", ".join(r["name"] for r in self._workloads())
        raise LabError(f"Comparison client: no instance {self.client!r} in the mesh (instances: {names})")

    def _client_dump(self) -> dict[str, Any]:
        dump = fetch_json(f"http://127.0.0.1:{self._client_row()['admin_port']}/config_dump")
        return dict(dump)

    def _authority(self, dump: dict[str, Any]) -> str:
        hosts = (dump.get("snapshot") or {}).get("outbound", {}).get("virtual_hosts", [])
        for host in hosts:
            if host.get("service") == self.service:
                return f"{self.service}:{host.get('port')}"
        raise LabError(f"Comparison service: {self.client}'s sidecar has no route to {self.service!r}")

    def proxy_counters(self) -> dict[str, int]:
        """Requests handled so far by each proxy that could be on the path, from its own ``/stats``:
        the client's sidecar (outbound listener), the destination's sidecars (inbound, summed over
        its instances) and the node proxy when it runs."""
        client = self._client_row()
        counters = {self.client_sidecar: _listener_total(client["admin_port"], "outbound"),
                    self.destination_sidecars: sum(_listener_total(r["admin_port"], "inbound")
                                                   for r in self._destination_rows() if r.get("admin_port"))}
        if self.node is not None and self.node.alive():
            counters[NODE_PROXY] = int(self.node.stats()["listeners"]["outbound"]["downstream_rq_total"])
        return counters

    @property
    def client_sidecar(self) -> str:
        return f"{self.client} sidecar"

    @property
    def destination_sidecars(self) -> str:
        return f"{self.service} sidecar"

    def sidecar_rss(self) -> dict[str, int]:
        """RSS in bytes of every sidecar of the mesh, by instance (from /proc)."""
        rows = [r for r in self._workloads() if r.get("sidecar_pid")]
        return {r["name"]: rss_bytes(int(r["sidecar_pid"])) for r in rows}

    # -- the three shapes -------------------------------------------------------------------------

    def library(self, requests: int = 500, max_seconds: float = 10.0) -> Measurement:
        """The app's own port, with load balancing, timeouts and retries in this process."""
        client = ResilientClient([("127.0.0.1", int(r["app_port"])) for r in self._destination_rows()])
        try:
            result = self._measure(LIBRARY, client.get, requests, max_seconds)
        finally:
            client.close()
        result.extra["retries"] = client.retries
        return self._keep(result)

    def start_node_proxy(self) -> NodeProxy:
        """The shared node proxy (started once): the client sidecar's routes, endpoints on app ports."""
        if self.node is not None and self.node.alive():
            return self.node
        app_ports = {r["name"]: int(r["app_port"]) for r in self._workloads()}
        self.node = NodeProxy(node_snapshot(self._client_dump(), app_ports)).start()
        return self.node

    def node_agent(self, requests: int = 500, max_seconds: float = 10.0) -> Measurement:
        """Through one shared proxy process, straight to the app's port."""
        node = self.start_node_proxy()
        client = ProxiedClient("127.0.0.1", node.ports["outbound"], self._authority(self._client_dump()))
        try:
            result = self._measure(NODE_AGENT, client.get, requests, max_seconds)
        finally:
            client.close()
        result.extra.update(pid=node.pid, rss=node.rss())
        return self._keep(result)

    def sidecar(self, requests: int = 500, max_seconds: float = 10.0) -> Measurement:
        """Through the client's sidecar (outbound) and the destination's sidecar (inbound), mTLS between."""
        row = self._client_row()
        port = int(str(row["outbound_proxy"]).rsplit(":", 1)[1])
        client = ProxiedClient("127.0.0.1", port, self._authority(self._client_dump()))
        try:
            result = self._measure(SIDECAR, client.get, requests, max_seconds)
        finally:
            client.close()
        result.extra["caller_identity"] = self.caller_identity_seen()
        return self._keep(result)

    def caller_identity_seen(self) -> str:
        """The client's identity as the destination's sidecars know it: the SPIFFE principal and the
        connection security of their ``reporter="destination"`` metrics for calls from the client."""
        workload = workload_of(self.client)
        seen = set()
        for row in self._destination_rows():
            if not row.get("admin_port"):
                continue
            text = fetch_text(f"http://127.0.0.1:{row['admin_port']}/stats/prometheus")
            for line in text.splitlines():
                if not line.startswith(REQUESTS_PREFIX):
                    continue
                labels = parse_labels(line)
                if labels.get("reporter") == "destination" and labels.get("source_workload") == workload:
                    seen.add(f"{labels.get('source_principal', 'unknown')} "
                             f"({labels.get('connection_security_policy', 'unknown')})")
        return ", ".join(sorted(seen)) or "none"

    def interleaved(self, rounds: int = 3, requests: int = 200, max_seconds: float = 5.0) -> Table:
        """Measure all three again in alternating order, ``rounds`` times, and pool each shape's
        runs: on a busy machine that spreads the noise fairly. Returns the new table."""
        if not 1 <= rounds <= 5:
            raise LabError(f"bench.interleaved: rounds must be 1..5, got {rounds}")
        pooled: dict[str, Measurement] = {}
        runs = (self.library, self.node_agent, self.sidecar)
        for round_ in range(rounds):
            for run in runs[round_ % 3:] + runs[:round_ % 3]:
                result = run(requests, max_seconds)
                earlier = pooled.get(result.shape)
                pooled[result.shape] = earlier.merged(result) if earlier is not None else result
        self.results.update(pooled)
        self._redraw()
        return self.table()

    def _measure(self, shape: str, get: Callable[[str], Answer], requests: int,
                 max_seconds: float) -> Measurement:
        before = self.proxy_counters()
        # Every demo app stamps its JSON with its instance name ("podname"): the answer came from
        # the destination's app when that name is one of the destination's instances.
        names = [f'"{r["name"]}"'.encode() for r in self._destination_rows()]
        try:
            result = run_bounded(shape, get, self.path, requests=requests, max_seconds=max_seconds,
                                 validate=lambda body: any(name in body for name in names))
        except ValueError as exc:
            raise LabError(f"bench.{shape.replace(' ', '_')}: {exc}") from None
        after = self.proxy_counters()
        # A proxy is on the path when its own counter grew by at least every request of the run.
        sent = result.requests
        result.extra["proxies_on_path"] = [name for name, count in after.items()
                                           if sent and count - before.get(name, 0) >= sent]
        return result

    def _keep(self, result: Measurement) -> Measurement:
        self.results[result.shape] = result
        self._redraw()
        return result

    # -- checks (each reads counters of real processes) ---------------------------------------------

    def _measured(self, shape: str, call: str) -> Measurement:
        result = self.results.get(shape)
        if result is None:
            raise CheckFailed(f"no {shape} measurement yet: run {call}")
        expect(result.ok >= self.min_requests and result.from_app >= self.min_requests,
               f"the {shape} run got {result.ok} answers of 2xx and {result.from_app} from the "
               f"{self.service} app; at least {self.min_requests} of each are needed ({result.summary()})")
        return result

    def _expect_path(self, result: Measurement, expected: list[str], why: str) -> None:
        found = list(result.extra.get("proxies_on_path", []))
        expect(sorted(found) == sorted(expected),
               f"during the {result.shape} run of {result.requests} requests, the proxies whose own "
               f"counters grew by that much were: {', '.join(found) or 'none'}; expected "
               f"{', '.join(expected) or 'none'} ({why})")

    def check_library(self, mesh: Mesh) -> None:
        result = self._measured(LIBRARY, "bench.library()")
        self._expect_path(result, [], "the library calls the app's own port, past every proxy")

    def check_node_agent(self, mesh: Mesh) -> None:
        node = self.node
        if node is None or not node.alive():
            raise CheckFailed("no node proxy is running: bench.node_agent() starts one and sends traffic "
                              "through it")
        result = self._measured(NODE_AGENT, "bench.node_agent()")
        served = int(node.stats()["listeners"]["outbound"]["downstream_rq_2xx"])
        expect(served >= result.ok,
               f"the node proxy (pid {node.pid}) counted {served} answered requests, fewer than the "
               f"{result.ok} the run got: the requests did not go through it")
        app_ports = {int(r["app_port"]) for r in self._destination_rows()}
        cluster = node.clusters().get(f"{self.service}.default|", {})  # the bench runs in default
        ports = {int(str(e.get("hostport", ":0")).rsplit(":", 1)[-1]) for e in _endpoints(cluster)}
        expect(bool(ports) and ports <= app_ports,
               f"the node proxy sends {self.service} traffic to ports {sorted(ports)}, not to the app ports "
               f"{sorted(app_ports)}")
        self._expect_path(result, [NODE_PROXY], "the node proxy is the only proxy on the path")

    def check_sidecar(self, mesh: Mesh) -> None:
        result = self._measured(SIDECAR, "bench.sidecar()")
        self._expect_path(result, [self.client_sidecar, self.destination_sidecars],
                          "the client's sidecar, then the destination's")
        identity = self.caller_identity_seen()
        expect("spiffe://" in identity and "mutual_tls" in identity,
               f"{self.service}'s sidecar knows the caller {self.client} as {identity!r}; with sidecars it "
               "should be a SPIFFE identity proven by mutual TLS")
        window = min(MAX_TELEMETRY_WINDOW, max(2.0, time.time() - result.started + 2.0))
        source = workload_of(self.client)
        by_reporter = {}
        for reporter in ("source", "destination"):
            answer = mesh.telemetry(window, source=source, destination=self.service, reporter=reporter)
            edges = answer.get("edges", [])
            by_reporter[reporter] = sum(float(e.get("requests", 0)) for e in edges)
            if reporter == "destination":
                expect(all(e.get("mtls") for e in edges),
                       f"the {source} → {self.service} hop was not mutual TLS (telemetry: {edges})")
        for reporter, counted in by_reporter.items():
            expect(counted >= self.min_requests,
                   f"the mesh's telemetry shows {counted:.0f} requests {source} → {self.service} reported by "
                   f"the {reporter} sidecar in the last {window:.0f} s; at least {self.min_requests} are "
                   "needed: both sidecars must be on the path")

    # -- reporting ------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One row per measured shape: latency, proxies, processes, proxy memory."""
        sidecars = self.sidecar_rss()
        rows: list[dict[str, Any]] = []
        for shape in SHAPES:
            result = self.results.get(shape)
            if result is None:
                rows.append({"shape": shape, "requests": "not measured yet"})
                continue
            rss, processes, memory_note = self._memory(shape, result, sidecars)
            rows.append({
                "shape": shape, "requests": result.requests, "ok": result.ok,
                "p50 ms": round(result.p50_ms, 2), "p99 ms": round(result.p99_ms, 2),
                "proxies on path": len(result.extra.get("proxies_on_path", [])),
                "path": " → ".join(["client", *result.extra.get("proxies_on_path", []), "app"]),
                "proxy processes": processes,
                "proxy RSS MiB": round(rss / MIB, 1), "memory": memory_note,
                "caller identity at the destination": result.extra.get(
                    "caller_identity", "none: no proxy at the destination, the app sees a TCP peer"),
            })
        return rows

    def _memory(self, shape: str, result: Measurement, sidecars: dict[str, int]) -> tuple[int, int, str]:
        if shape == LIBRARY:
            return 0, 0, "inside every app (its code, in each language)"
        if shape == NODE_AGENT:
            rss = self.node.rss() if self.node is not None else int(result.extra.get("rss", 0))
            return rss, 1, f"one per node, serving all {len(self._workloads())} workloads here"
        total = sum(sidecars.values())
        each = total / len(sidecars) if sidecars else 0
        return total, len(sidecars), f"{len(sidecars)} sidecars x {each / MIB:.1f} MiB"

    def table(self) -> Table:
        columns = ["shape", "requests", "ok", "p50 ms", "p99 ms", "proxies on path", "path",
                   "proxy processes", "proxy RSS MiB", "memory", "caller identity at the destination"]
        title = (f"GET {self.path} on {self.service}, measured on this machine "
                 "(proxies on path: those whose own counters saw every request)")
        return Table(self.rows(), columns, title=title)

    def chart(self) -> Any:
        """A FigureWidget: p50/p99 latency bars and proxy memory bars; redrawn after each run."""
        import plotly.graph_objects as go  # noqa: PLC0415 (heavy; only drawing needs it)
        from plotly.subplots import make_subplots  # noqa: PLC0415

        base = make_subplots(rows=1, cols=2, subplot_titles=("latency per request (ms)",
                                                             "memory of the proxies (MiB)"))
        figure = go.FigureWidget(base)
        for name in ("p50", "p99"):
            figure.add_bar(name=name, x=list(SHAPES), y=[0, 0, 0], row=1, col=1)
        figure.add_bar(name="proxy RSS", x=list(SHAPES), y=[0, 0, 0], row=1, col=2, showlegend=False,
                       marker_color=[COLOURS[s] for s in SHAPES])
        figure.update_layout(barmode="group", height=360, margin={"t": 40, "b": 40, "l": 40, "r": 10})
        self._figure = figure
        self._redraw()
        return figure

    def _redraw(self) -> None:
        figure = self._figure
        if figure is None:
            return
        rows = {r["shape"]: r for r in self.rows()}
        with figure.batch_update():
            for index, key in enumerate(("p50 ms", "p99 ms")):
                figure.data[index].y = [rows[s].get(key, 0) for s in SHAPES]
            figure.data[2].y = [rows[s].get("proxy RSS MiB", 0) for s in SHAPES]
            figure.data[2].text = [rows[s].get("memory", "") for s in SHAPES]

    def close(self) -> None:
        """Stop the node proxy (the only process this comparison starts)."""
        if self.node is not None:
            self.node.stop()

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        done = ", ".join(self.results) or "nothing yet"
        return f"Comparison({self.service}{self.path} from {self.client}; measured: {done})"


def _listener_total(admin_port: int, listener: str) -> int:
    stats = fetch_json(f"http://127.0.0.1:{admin_port}/stats")
    return int(stats["listeners"][listener]["downstream_rq_total"])


def _endpoints(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    endpoints = cluster.get("endpoints", [])
    return [e for e in endpoints if isinstance(e, dict)] if isinstance(endpoints, list) else []
