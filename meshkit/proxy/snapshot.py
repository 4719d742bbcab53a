"""The runtime snapshot: docs/snapshot.md's JSON (typed in `proxy.schema`) validated and compiled once.

``Snapshot.from_json(doc, previous)`` checks the document and builds everything the
request path needs (route table, clusters with their balancing state carried over from
``previous``, the inbound app cluster, the rate limiter, the label values this proxy
reports about itself). Any problem raises ``SnapshotError`` whose message starts with
the key path, which is what the proxy NACKs with while keeping its previous snapshot.
A request holds on to the Snapshot it started with, so swapping is one assignment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from meshkit.proxy import network_policy
from meshkit.proxy.balancer import Cluster
from meshkit.proxy.egress import Egress, EgressError
from meshkit.proxy.filters.authn import mtls_mode_for_port
from meshkit.proxy.filters.authz import AuthzPolicies, compile_authz
from meshkit.proxy.filters.fault import check_fault
from meshkit.proxy.filters.jwt import compile_jwt
from meshkit.proxy.filters.mirror import check_mirror
from meshkit.proxy.filters.ratelimit import TokenBucket
from meshkit.proxy.filters.retry import check_retries
from meshkit.proxy.filters.timeout import check_timeout
from meshkit.proxy.filters.tracing import DEFAULT_SAMPLING
from meshkit.proxy.paths import DEFAULT_MODE as DEFAULT_PATH_MODE
from meshkit.proxy.paths import check_mode as check_path_mode
from meshkit.proxy.routing import RouteTable
from meshkit.proxy.stats import canonical_revision, canonical_service
from meshkit.proxy.tls_routing import TlsRouting

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import SnapshotDoc

# the snapshot schema this proxy reads: meshkit.proxy.schema.SCHEMA, defined again here so that a running
# sidecar never loads the schema's types (tests/config/test_snapshot_schema.py checks they agree)
SCHEMA = 1
ROUTE_CHECKS = (check_fault, check_mirror, check_timeout, check_retries)

UNKNOWN = "unknown"
SOURCE_HEADER = "x-meshkit-source"  # "<workload>;<namespace>;<app>;<version>;<principal>"
GATEWAY_SERVER_NAME = "istio-envoy"


class SnapshotError(ValueError):
    """A snapshot the proxy refuses (NACK); the message names the offending key."""


def _opt_str(spec: dict[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise SnapshotError(f"{where}.{key}: expected a string or null, got {value!r}")
    return value


def _namespace_of(identity: str | None) -> str | None:
    """``spiffe://cluster.local/ns/<ns>/sa/<sa>`` -> ``<ns>``."""
    if not identity:
        return None
    parts = identity.split("/")
    try:
        return parts[parts.index("ns") + 1]
    except (ValueError, IndexError):
        return None


class NodeLabels:
    """What this proxy says about its own workload in metrics and propagation headers."""

    __slots__ = (
        "app", "canonical_revision", "canonical_service", "namespace", "principal", "service", "version",
        "workload",
    )

    def __init__(self, node: dict[str, Any]) -> None:
        labels = node.get("labels") or {}
        self.workload = node.get("workload") or UNKNOWN
        self.namespace = node.get("namespace") or UNKNOWN
        self.app = labels.get("app") or node.get("service") or UNKNOWN
        self.version = node.get("version") or labels.get("version") or UNKNOWN
        self.principal = node.get("identity") or UNKNOWN
        self.service = node.get("service")
        self.canonical_service = canonical_service(labels, self.workload)
        self.canonical_revision = canonical_revision({"version": node.get("version") or "", **labels})


class Snapshot:
    """One applied configuration; see the module docstring."""

    __slots__ = (
        "applied_at",
        "authz",
        "clusters",
        "doc",
        "egress",
        "egress_allowed",
        "first_request_at",
        "gateway_authz",
        "gateway_jwt",
        "gateway_mutual",
        "gateway_tls",
        "inbound",
        "inbound_cluster",
        "inbound_service_fqdn",
        "jwt",
        "mtls_mode",
        "node",
        "node_labels",
        "originate",
        "path_normalization",
        "proxy_protocol",
        "rate_limiter",
        "routes",
        "server_name",
        "source_headers",
        "stream_idle_timeout",
        "tls",
        "trace_report",
        "trace_sampling",
        "upstream_sni",
        "upstream_tls",
        "version",
    )

    def __init__(self) -> None:
        self.version = ""
        self.doc: SnapshotDoc = {"schema": SCHEMA, "version": ""}  # the document as received
        self.node: dict[str, Any] = {}
        self.routes = RouteTable([])
        self.clusters: dict[str, Cluster] = {}
        self.inbound: dict[str, Any] = {}
        self.rate_limiter: TokenBucket | None = None
        self.authz: AuthzPolicies | None = None  # compiled AuthorizationPolicies (None: no policy)
        self.jwt: Any = None  # compiled RequestAuthentication rules (None: none applies)
        self.gateway_jwt: Any = None  # the same for a gateway, checked before routing
        self.gateway_authz: AuthzPolicies | None = None  # a gateway's AuthorizationPolicies, before routing
        self.inbound_cluster: Cluster | None = None
        self.node_labels = NodeLabels({})
        self.inbound_service_fqdn = UNKNOWN
        self.source_headers: list[tuple[str, str]] = []
        self.mtls_mode = "PERMISSIVE"  # PeerAuthentication mode of the inbound port (Istio's default)
        self.upstream_tls: dict[str, frozenset[str]] = {}  # ISTIO_MUTUAL cluster -> server identities
        self.upstream_sni: dict[str, str] = {}  # ISTIO_MUTUAL cluster -> the SNI it sends (tls.sni)
        self.originate: dict[str, Any] = {}  # SIMPLE cluster -> tls.originate.Origination (TLS origination)
        self.gateway_tls: list[Any] = []  # a gateway's HTTPS servers (tls.serving.ServerCertificate)
        self.gateway_mutual: Any = None  # a gateway's ISTIO_MUTUAL servers (tls.gateway_mutual), or None
        self.tls = TlsRouting()  # TLS carried unopened by SNI, a gateway's TCP by port (tls_routing, tunnel)
        # unknown hosts: outboundTrafficPolicy, the stand-in map (proxy/egress.py); None on a gateway
        self.egress: Egress | None = Egress()
        # the pod's NetworkPolicy egress: the upstream "address:port"s it may connect to (None: any)
        self.egress_allowed: frozenset[str] | None = None
        self.path_normalization = DEFAULT_PATH_MODE  # meshConfig.pathNormalization (Istio's default)
        self.stream_idle_timeout: float | None = None  # seconds; None: the listener's own limit
        self.proxy_protocol = False  # a gateway's connections must start with a PROXY header
        self.server_name: str | None = None  # the ``server`` header this proxy sets on responses
        self.trace_sampling = DEFAULT_SAMPLING  # percent of new traces sampled (tracing.sampling)
        self.trace_report = True  # record spans of sampled requests (Telemetry disableSpanReporting: False)
        self.applied_at = 0.0  # wall clock when this proxy put it in effect (xds.ConfigState.apply)
        # wall clock of the first request a listener served under it (the apply-to-effect timeline)
        self.first_request_at: float | None = None

    @classmethod
    def from_json(
        cls, doc: Any, previous: Snapshot | None = None, *, app_address: str | None = None
    ) -> Snapshot:
        """``app_address``: where inbound requests are delivered instead of the snapshot's
        ``inbound.app.address`` (a captured pod's own IP, as Istio >= 1.10 delivers)."""
        if not isinstance(doc, dict):
            raise SnapshotError(f"snapshot: expected a JSON object, got {type(doc).__name__}")
        schema = doc.get("schema")
        if schema != SCHEMA:
            raise SnapshotError(f"schema: unsupported snapshot schema {schema!r} (this proxy knows {SCHEMA})")
        version = doc.get("version")
        if not isinstance(version, str) or not version:
            raise SnapshotError(f"version: expected a non-empty string, got {version!r}")
        snap = cls()
        snap.version = version
        snap.doc = cast("SnapshotDoc", doc)  # checked by everything below before anyone reads it
        snap.node = cls._node(doc.get("node"))
        try:
            snap.routes = RouteTable.from_snapshot(doc.get("outbound"))
            for vhost in snap.routes.virtual_hosts:
                for compiled in vhost.routes:
                    for check in ROUTE_CHECKS:
                        check(cast(dict[str, Any], compiled.raw), compiled.where)  # validators: untrusted
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        snap.clusters = cls._clusters(doc.get("clusters"), previous)
        snap.inbound = cls._inbound(doc.get("inbound"))
        snap.inbound_cluster = cls._inbound_cluster(snap.node, snap.inbound, previous, app_address)
        try:
            snap.rate_limiter = TokenBucket.from_snapshot(snap.inbound.get("rate_limit"))
            before = (previous.jwt or previous.gateway_jwt) if previous is not None else None
            compiled_jwt = compile_jwt(snap.inbound.get("jwt"), before)
            if snap.node.get("kind") == "gateway":
                snap.gateway_jwt = compiled_jwt
            else:
                snap.jwt = compiled_jwt
            snap.proxy_protocol = cls._proxy_protocol(doc.get("mesh"), snap.node)
            snap.authz = compile_authz(snap.inbound.get("authz"), port=snap.inbound.get("service_port"),
                                       trusted_hops=cls._trusted_hops(doc.get("mesh"), snap.node),
                                       proxied=snap.proxy_protocol)
            if snap.node.get("kind") == "gateway":  # judged before routing (filters/authz.gateway_authz)
                snap.gateway_authz, snap.authz = snap.authz, None
            service_port = snap.inbound.get("service_port") or 0
            snap.mtls_mode = mtls_mode_for_port(snap.inbound.get("mtls"), service_port)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        snap.upstream_tls = cls._upstream_tls(doc.get("clusters"))
        try:
            snap.egress_allowed = network_policy.parse(doc.get("network_policy"))
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        snap.upstream_sni = {name: spec["tls"]["sni"] for name, spec in (doc.get("clusters") or {}).items()
                             if name in snap.upstream_tls and isinstance(spec.get("tls"), dict)
                             and isinstance(spec["tls"].get("sni"), str) and spec["tls"]["sni"]}
        snap.originate = cls._originate(doc.get("clusters"), doc.get("egress"), previous)
        snap.gateway_tls = cls._gateway_tls(doc.get("gateway_tls"), previous)
        snap.gateway_mutual = cls._gateway_mutual(doc.get("gateway_tls"))
        try:
            snap.tls = TlsRouting.from_snapshot(doc.get("tls"), doc.get("mesh"), doc.get("egress"),
                                                doc.get("tcp"))
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        snap.path_normalization, snap.stream_idle_timeout = cls._mesh(doc.get("mesh"))
        try:
            egress = Egress.from_snapshot(doc.get("mesh"), doc.get("egress"))
            # a gateway, or a hand-written snapshot without "egress": unknown hosts are 404 NR
            snap.egress = None if snap.node.get("kind") == "gateway" or doc.get("egress") is None else egress
        except EgressError as exc:
            raise SnapshotError(str(exc)) from None
        # Istio's gateways answer with Envoy's server_name "istio-envoy" (HCM server_header
        # OVERWRITE); sidecars pass the app's own ``server`` header through.
        snap.server_name = GATEWAY_SERVER_NAME if snap.node.get("kind") == "gateway" else None
        snap.trace_sampling = cls._sampling(doc.get("tracing"))
        report = (doc.get("tracing") or {}).get("report", True)
        if not isinstance(report, bool):
            raise SnapshotError(f"tracing.report: expected true or false, got {report!r}")
        snap.trace_report = report
        labels = NodeLabels(snap.node)
        snap.node_labels = labels
        if labels.service:
            snap.inbound_service_fqdn = f"{labels.service}.{labels.namespace}.svc.cluster.local"
        # One header tells the destination sidecar who is calling (see filters/metrics.py).
        source = ";".join((labels.workload, labels.namespace, labels.app, labels.version, labels.principal))
        snap.source_headers = [(SOURCE_HEADER, source)]
        return snap

    @staticmethod
    def _proxy_protocol(mesh: Any, node: dict[str, Any]) -> bool:
        """A gateway's ``mesh.proxy_protocol``: its listeners require a PROXY protocol header
        (sidecars never read one, as Istio's ``gatewayTopology`` is for gateways only)."""
        if node.get("kind") != "gateway" or not isinstance(mesh, dict):
            return False
        value = mesh.get("proxy_protocol", False)
        if not isinstance(value, bool):
            raise ValueError(f"mesh.proxy_protocol: expected true or false, got {value!r}")
        return value

    @staticmethod
    def _trusted_hops(mesh: Any, node: dict[str, Any]) -> int:
        """A gateway's ``mesh.num_trusted_proxies`` (sidecars trust no ``X-Forwarded-For``)."""
        if node.get("kind") != "gateway" or not isinstance(mesh, dict):
            return 0
        hops = mesh.get("num_trusted_proxies", 0)
        if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
            raise ValueError(f"mesh.num_trusted_proxies: expected a whole number >= 0, got {hops!r}")
        return hops

    @staticmethod
    def _mesh(mesh: Any) -> tuple[str, float | None]:
        """``mesh``: the mesh-wide settings (Istio's meshConfig) that change request handling."""
        if mesh is None:
            return DEFAULT_PATH_MODE, None
        if not isinstance(mesh, dict):
            raise SnapshotError(f"mesh: expected an object, got {mesh!r}")
        try:
            mode = check_path_mode(mesh.get("path_normalization"), "mesh.path_normalization")
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        idle = mesh.get("stream_idle_timeout_ms")
        if idle is not None and (not isinstance(idle, int) or isinstance(idle, bool) or idle <= 0):
            raise SnapshotError(f"mesh.stream_idle_timeout_ms: expected a positive integer, got {idle!r}")
        return mode, None if idle is None else idle / 1000.0

    @staticmethod
    def _sampling(tracing: Any) -> float:
        """``tracing: {"sampling": PERCENT, "report": BOOL}`` (absent or null: Istio's default of 1%)."""
        if tracing is None:
            return DEFAULT_SAMPLING
        if not isinstance(tracing, dict):
            raise SnapshotError(f"tracing: expected an object or null, got {tracing!r}")
        value = tracing.get("sampling", DEFAULT_SAMPLING)
        if value is None:
            return DEFAULT_SAMPLING
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 100.0:
            raise SnapshotError(f"tracing.sampling: expected a percentage from 0 to 100, got {value!r}")
        return float(value)

    @staticmethod
    def _node(node: Any) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise SnapshotError(f"node: expected an object, got {node!r}")
        for key in ("id", "workload", "instance", "namespace", "service", "version", "identity", "kind"):
            _opt_str(node, key, "node")
        labels = node.get("labels")
        if labels is not None and (
            not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())
        ):
            raise SnapshotError(f"node.labels: expected an object of strings, got {labels!r}")
        return node

    @staticmethod
    def _clusters(clusters: Any, previous: Snapshot | None) -> dict[str, Cluster]:
        if clusters is None:
            return {}
        if not isinstance(clusters, dict):
            raise SnapshotError(f"clusters: expected an object, got {type(clusters).__name__}")
        built: dict[str, Cluster] = {}
        for name, spec in clusters.items():
            try:
                cluster = Cluster.from_snapshot(name, spec)
            except ValueError as exc:
                raise SnapshotError(str(exc)) from None
            if previous is not None and name in previous.clusters:
                cluster.adopt_state(previous.clusters[name])
            built[name] = cluster
        return built

    @staticmethod
    def _upstream_tls(clusters: Any) -> dict[str, frozenset[str]]:
        """Clusters whose ``tls.mode`` is ISTIO_MUTUAL, with the SPIFFE ids their servers may present.

        An empty set means "the chosen endpoint's own identity" (docs/snapshot.md).
        """
        found: dict[str, frozenset[str]] = {}
        for name, spec in (clusters or {}).items():
            tls = spec.get("tls")
            if tls is None:
                continue
            where = f"clusters.{name}.tls"
            mode = tls.get("mode")
            if mode not in ("DISABLE", "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"):
                raise SnapshotError(
                    f"{where}.mode: expected DISABLE, ISTIO_MUTUAL, SIMPLE or MUTUAL, got {mode!r}")
            identities = tls.get("server_identities") or []
            if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
                raise SnapshotError(
                    f"{where}.server_identities: expected a list of SPIFFE ids, got {identities!r}"
                )
            if mode == "ISTIO_MUTUAL":
                found[name] = frozenset(identities)
        return found

    @staticmethod
    def _originate(clusters: Any, egress: Any, previous: Snapshot | None) -> dict[str, Any]:
        """Clusters whose ``tls.mode`` is SIMPLE or MUTUAL (TLS origination), with their client contexts;
        the ``ssl`` machinery is loaded only when there is one."""
        if not any(isinstance(spec, dict) and isinstance(spec.get("tls"), dict)
                   and spec["tls"].get("mode") in ("SIMPLE", "MUTUAL") for spec in (clusters or {}).values()):
            return {}
        from meshkit.proxy.tls.originate import originations  # noqa: PLC0415 - only with TLS origination

        try:
            return originations(clusters, egress, previous.originate if previous is not None else None)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None

    @staticmethod
    def _gateway_tls(section: Any, previous: Snapshot | None) -> list[Any]:
        """A gateway's HTTPS servers with their loaded certificates (``ssl`` only when there is one)."""
        if section is None or (isinstance(section, dict) and section.get("servers") == []):
            return []
        from meshkit.proxy.tls.servercerts import server_certificates  # noqa: PLC0415 - only with HTTPS servers

        try:
            return server_certificates(section, previous.gateway_tls if previous is not None else ())
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None

    @staticmethod
    def _gateway_mutual(section: Any) -> Any:
        """A gateway's ISTIO_MUTUAL servers (``gateway_tls.istio_mutual``), or None when it has none."""
        mutual = section.get("istio_mutual") if isinstance(section, dict) else None
        if mutual is None or (isinstance(mutual, dict) and not mutual.get("servers")
                              and mutual.get("plaintext", True) is True):
            return None
        from meshkit.proxy.tls.gateway_mutual import MutualServers  # noqa: PLC0415 - only with such servers

        try:
            return MutualServers.from_snapshot(mutual)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None

    @staticmethod
    def _inbound(inbound: Any) -> dict[str, Any]:
        if inbound is None:
            return {}
        if not isinstance(inbound, dict):
            raise SnapshotError(f"inbound: expected an object, got {inbound!r}")
        app = inbound.get("app")
        if app is not None:
            if not isinstance(app, dict):
                raise SnapshotError(f"inbound.app: expected an object or null, got {app!r}")
            address = app.get("address")
            if not isinstance(address, str) or not address:
                raise SnapshotError(f"inbound.app.address: expected a host address, got {address!r}")
            port = app.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise SnapshotError(f"inbound.app.port: expected a port number, got {port!r}")
        return inbound

    @staticmethod
    def _inbound_cluster(
        node: dict[str, Any], inbound: dict[str, Any], previous: Snapshot | None,
        app_address: str | None = None,
    ) -> Cluster | None:
        app = inbound.get("app")
        if not app:
            return None
        port = int(inbound.get("service_port") or app["port"])
        name = f"inbound|{port}||"
        spec = {
            "service": node.get("service") or node.get("workload") or "app",
            "subset": "",
            "port": port,
            "lb": "ROUND_ROBIN",
            "endpoints": [
                {
                    "address": app_address or app["address"],
                    "port": app["port"],
                    "instance": node.get("instance") or "app",
                    "workload": node.get("workload") or "app",
                    "version": node.get("version"),
                    "labels": node.get("labels") or {},
                    "identity": node.get("identity"),
                    "has_sidecar": False,
                    "healthy": True,
                }
            ],
        }
        try:
            cluster = Cluster.from_snapshot(name, spec)
        except ValueError as exc:
            raise SnapshotError(f"inbound.app: {exc}") from None
        old = previous.inbound_cluster if previous is not None else None
        if old is not None and old.name == name:
            cluster.adopt_state(old)
        return cluster

    def destination_namespace(self, identity: str | None) -> str:
        return _namespace_of(identity) or self.node_labels.namespace
