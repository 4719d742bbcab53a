"""`istioctl proxy-config` tables from a proxy's own admin pages (what the sidecar really holds).

Each function takes the JSON of the proxy's admin pages (``/config_dump``, ``/clusters``, ``/certs``)
and returns istioctl's rows (header first), in istioctl's column names and order:

- `cluster_rows`: ``SERVICE FQDN  PORT  SUBSET  DIRECTION  TYPE  DESTINATION RULE``
- `endpoint_rows`: ``ENDPOINT  STATUS  OUTLIER CHECK  CLUSTER`` (Envoy's cluster names,
  ``outbound|9080|v1|reviews.default.svc.cluster.local``)
- `secret_rows`: ``RESOURCE NAME  TYPE  STATUS  VALID CERT  SERIAL NUMBER  NOT AFTER  NOT BEFORE``
  (``default``: the workload certificate, ``ROOTCA``: the mesh root, ``kubernetes://NAME`` and
  ``kubernetes://NAME-cacert``: the credentials a gateway serves or originates with; serials in
  decimal, as istioctl prints them)
- `route_rows`: ``NAME  VHOST NAME  DOMAINS  MATCH  VIRTUAL SERVICE``
- `listener_rows`: ``ADDRESSES  PORT  MATCH  DESTINATION``

Approximations (the local proxy's model is not Envoy's): TYPE is ``EDS`` for every outbound cluster;
the DESTINATION RULE column shows ``<host>.<namespace>`` when the proxy holds that host's subsets or a
traffic policy (the snapshot does not carry the rule's own name); listeners are Istio's virtual
listeners (``0.0.0.0:<service port>``, ``virtualInbound`` 15006), not the local ports they run on.

It must not talk to a proxy, nor print: the CLI fetches the pages and renders the rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CLUSTER_HEADER = ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]
ENDPOINT_HEADER = ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]
SECRET_HEADER = ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]
ROUTE_HEADER = ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
LISTENER_HEADER = ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
CLUSTER_SUFFIX = "svc.cluster.local"
INBOUND_PORT = 15006  # Istio's virtualInbound listener


class ProxyConfigError(ValueError):
    """A filter or a page the tables cannot use: what, and why."""


def fqdn(service: str, namespace: str | None) -> str:
    """``reviews``/``default`` -> ``reviews.default.svc.cluster.local``; a host with a dot (a
    ServiceEntry's ``edition.cnn.com``) stays as it is."""
    if "." in service or not namespace:
        return service
    return f"{service}.{namespace}.{CLUSTER_SUFFIX}"


def envoy_name(cluster: dict[str, Any]) -> str:
    """Envoy's name of a snapshot cluster: ``outbound|9080|v1|reviews.default.svc.cluster.local``."""
    return (f"outbound|{cluster.get('port') or ''}|{cluster.get('subset') or ''}|"
            f"{fqdn(str(cluster.get('service') or ''), cluster.get('namespace'))}")


def _snapshot(dump: dict[str, Any]) -> dict[str, Any]:
    snapshot = dump.get("snapshot")
    if not isinstance(snapshot, dict):
        raise ProxyConfigError("the proxy has applied no configuration yet "
                               "(its /config_dump has no snapshot)")
    return snapshot


def _rule_hosts(clusters: dict[str, Any]) -> set[tuple[str, str]]:
    """(service, namespace) of the hosts a DestinationRule shapes in this proxy: subsets, or a policy."""
    return {(str(c.get("service")), str(c.get("namespace"))) for c in clusters.values()
            if c.get("subset") or c.get("outlier_detection") or c.get("connection_pool")
            or (c.get("tls") or {}).get("mode") in ("SIMPLE", "MUTUAL")}


def cluster_rows(dump: dict[str, Any], *, fqdn_filter: str | None = None, port: int | None = None,
                 subset: str | None = None, direction: str | None = None) -> list[list[str]]:
    """istioctl's cluster table of the proxy's snapshot; the filters as istioctl's ``--fqdn`` (the
    FQDN contains it), ``--port``, ``--subset``, ``--direction``."""
    snapshot = _snapshot(dump)
    clusters: dict[str, Any] = snapshot.get("clusters") or {}
    ruled = _rule_hosts(clusters)
    found: list[tuple[str, int, str, str, str, str]] = []
    for cluster in clusters.values():
        service, namespace = str(cluster.get("service") or ""), str(cluster.get("namespace") or "")
        rule = f"{service}.{namespace}" if (service, namespace) in ruled else ""
        found.append((fqdn(service, namespace), int(cluster.get("port") or 0),
                      str(cluster.get("subset") or ""), "outbound", "EDS", rule))
    inbound = snapshot.get("inbound") or {}
    node = snapshot.get("node") or {}
    if inbound.get("service_port"):
        found.append(("", int(inbound["service_port"]), "", "inbound", "ORIGINAL_DST", ""))
    statics = ["BlackHoleCluster"] if node.get("kind") == "gateway" else [
        "BlackHoleCluster", "InboundPassthroughCluster", "PassthroughCluster"]
    found += [(name, 0, "", "", "STATIC" if name == "BlackHoleCluster" else "ORIGINAL_DST", "")
              for name in statics]
    rows = [CLUSTER_HEADER]
    for name, number, sub, way, kind, rule in sorted(found, key=lambda r: (r[0], r[1], r[2], r[3])):
        if fqdn_filter and fqdn_filter not in name:
            continue
        if port is not None and number != port:
            continue
        if subset is not None and sub != subset:
            continue
        if direction is not None and way != direction:
            continue
        rows.append([name, str(number) if number else "-", sub or "-", way or "-", kind, rule])
    return rows


def endpoint_rows(clusters_view: dict[str, Any], dump: dict[str, Any], *, cluster: str | None = None,
                  port: int | None = None, status: str | None = None) -> list[list[str]]:
    """istioctl's endpoint table of the proxy's balancers (``/clusters``): STATUS is the endpoint's
    health, OUTLIER CHECK ``FAILED`` while outlier detection has it ejected. ``cluster``: Envoy's
    cluster name (or meshkit's, ``reviews.default|v1``); ``status``: healthy or unhealthy."""
    snapshot = _snapshot(dump)
    known = snapshot.get("clusters") or {}
    rows = [ENDPOINT_HEADER]
    found: list[tuple[str, str, str, str]] = []
    for key, view in clusters_view.items():
        name = envoy_name(known[key]) if key in known else str(key)
        if cluster is not None and cluster not in (name, key):
            continue
        for endpoint in view.get("endpoints") or []:
            hostport = str(endpoint.get("hostport") or "")
            health = "HEALTHY" if endpoint.get("healthy", True) else "UNHEALTHY"
            outlier = "FAILED" if endpoint.get("ejected") else "OK"
            if port is not None and not hostport.endswith(f":{port}"):
                continue
            if status is not None and health != status.upper():
                continue
            found.append((hostport, health, outlier, name))
    rows += [list(row) for row in sorted(found, key=lambda r: (r[3], r[0]))]
    return rows


def _when(text: str | None) -> str:
    """``2026-12-08T22:00:30+00:00`` -> istioctl's ``2026-12-08T22:00:30Z``."""
    if not text:
        return ""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _valid(not_before: str | None, not_after: str | None, now: datetime) -> bool:
    if not not_before or not not_after:
        return False
    return datetime.fromisoformat(not_before) <= now <= datetime.fromisoformat(not_after)


def _cert_row(name: str, kind: str, view: dict[str, Any], now: datetime) -> list[str]:
    serial = str(view.get("serial") or "")
    decimal = str(int(serial, 16)) if serial else ""
    valid = _valid(view.get("not_before"), view.get("not_after"), now)
    return [name, kind, "ACTIVE", "true" if valid else "false", decimal,
            _when(view.get("not_after")), _when(view.get("not_before"))]


def pem_view(pem: str) -> dict[str, Any] | None:
    """Serial (hex) and validity of the first certificate of a PEM, as ``/certs`` shows them; None
    when there is no readable certificate."""
    from cryptography import x509  # noqa: PLC0415 - only the secret table reads PEMs

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return {"serial": f"{cert.serial_number:x}", "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}


def credentials(dump: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(resource name, TYPE, cert view) of the Secrets the proxy's snapshot carries: a gateway's HTTPS
    servers' ``credentialName`` and a DestinationRule's ``MUTUAL`` origination ``credentialName``
    (``kubernetes://NAME`` Cert Chain; its ``ca.crt`` as ``kubernetes://NAME-cacert`` CA)."""
    snapshot = _snapshot(dump)
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    servers = [s for key in ("gateway_tls", "kube_gateway_tls") for s in
               ((snapshot.get(key) or {}).get("servers") or []) if isinstance(s, dict)]
    for server in servers:
        view = pem_view(str(server.get("cert_pem") or ""))
        if server.get("credential") and view is not None:
            found.setdefault(f"kubernetes://{server['credential']}", ("Cert Chain", view))
    for cluster in (snapshot.get("clusters") or {}).values():
        tls = cluster.get("tls") or {}
        name = tls.get("credential")
        if tls.get("mode") != "MUTUAL" or not name or "/" in str(name):  # a file path: not a Secret
            continue
        view = pem_view(str(tls.get("client_cert_pem") or ""))
        if view is not None:
            found.setdefault(f"kubernetes://{name}", ("Cert Chain", view))
        ca = pem_view(str(tls.get("ca_pem") or ""))
        if ca is not None:
            found.setdefault(f"kubernetes://{name}-cacert", ("CA", ca))
    return [(name, kind, view) for name, (kind, view) in sorted(found.items())]


def secret_rows(certs: dict[str, Any], dump: dict[str, Any], now: datetime | None = None) -> list[list[str]]:
    """istioctl's secret table: ``default`` and ``ROOTCA`` from ``/certs``, then the credentials."""
    moment = now or datetime.now(UTC)
    rows = [SECRET_HEADER]
    chain, root = certs.get("chain") or [], certs.get("root") or []
    if chain:
        rows.append(_cert_row("default", "Cert Chain", chain[0], moment))
    if root:
        rows.append(_cert_row("ROOTCA", "CA", root[0], moment))
    rows += [_cert_row(name, kind, view, moment) for name, kind, view in credentials(dump)]
    return rows


def _match(route: dict[str, Any]) -> str:
    matches = route.get("match") or []
    if not matches:
        return "/*"
    shown = []
    for match in matches:
        uri = (match or {}).get("uri") or {}
        if "exact" in uri:
            shown.append(str(uri["exact"]))
        elif "prefix" in uri:
            shown.append(f"{uri['prefix']}*")
        elif "regex" in uri:
            shown.append(str(uri["regex"]))
        else:
            shown.append("/*")
    return ", ".join(dict.fromkeys(shown))


def _domains(domains: list[str]) -> str:
    """istioctl's short form: the shortest name without a port, ``+ N more...`` for the rest."""
    plain = sorted({d for d in domains if ":" not in d}, key=lambda d: (len(d), d))
    if not plain:
        return ", ".join(domains)
    rest = len(plain) - 1
    return plain[0] + (f" + {rest} more..." if rest else "")


def _virtual_service(source: str) -> str:
    """A route's source ``VirtualService/default/reviews#http[0]`` -> istioctl's ``reviews.default``;
    the proxy's default route has none."""
    kind, _, rest = source.partition("#")[0].partition("/")
    namespace, _, name = rest.partition("/")
    return f"{name}.{namespace}" if kind and name else ""


def route_rows(dump: dict[str, Any], *, name: str | None = None) -> list[list[str]]:
    """istioctl's route table: one row per route of each outbound virtual host, the route config named
    by its port (``--name 9080``); VIRTUAL SERVICE is the route's source when a VirtualService made it."""
    snapshot = _snapshot(dump)
    rows = [ROUTE_HEADER]
    for host in (snapshot.get("outbound") or {}).get("virtual_hosts") or []:
        config = str(host.get("port") or "")
        if name is not None and config != name:
            continue
        for route in host.get("routes") or []:
            service = _virtual_service(str(route.get("source") or ""))
            rows.append([config, str(host.get("name") or ""), _domains(list(host.get("domains") or [])),
                         _match(route), service])
    return rows


def listener_rows(dump: dict[str, Any], *, port: int | None = None) -> list[list[str]]:
    """istioctl's listener table, as Istio's virtual listeners: ``0.0.0.0:<port>`` per outbound service
    port (HTTP: ``Route: <port>``; TCP: ``Cluster: <name>``), and ``virtualInbound`` 15006 to the
    inbound cluster."""
    snapshot = _snapshot(dump)
    found: dict[tuple[int, str], str] = {}
    for host in (snapshot.get("outbound") or {}).get("virtual_hosts") or []:
        number = int(host.get("port") or 0)
        if number:
            found[(number, "ALL")] = f"Route: {number}"
    clusters = snapshot.get("clusters") or {}
    for route in (snapshot.get("tcp") or {}).get("routes") or []:
        number = int(route.get("port") or 0)
        if not number or (number, "ALL") in found:
            continue
        targets = [d.get("cluster") for d in route.get("destinations") or []]
        names = [envoy_name(clusters[t]) for t in targets if t in clusters]
        found[(number, "ALL")] = f"Cluster: {names[0]}" if len(names) == 1 else "Cluster: (weighted)"
    inbound = snapshot.get("inbound") or {}
    if inbound.get("service_port"):
        protocol = "http" if inbound.get("protocol") == "http" else "tcp"
        target = f"inbound|{inbound['service_port']}||"
        match = f"Trans: raw_buffer; Addr: *:{inbound['service_port']}"
        found[(INBOUND_PORT, match)] = f"Inline Route: /*  ({target})" if protocol == "http" else \
            f"Cluster: {target}"
    rows = [LISTENER_HEADER]
    for (number, match), destination in sorted(found.items()):
        if port is not None and number != port:
            continue
        rows.append(["0.0.0.0", str(number), match, destination])
    return rows
