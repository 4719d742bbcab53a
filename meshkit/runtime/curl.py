"""One request from a workload of the local mesh, like `kubectl exec sleep -- curl URL`.

`curl(mesh_status, state, source, url)` sends the request the way that workload's app would:

- from a workload with a sidecar (``sleep``): to its sidecar's outbound port as an HTTP proxy
  (absolute-form request line), so the sidecar routes it by the URL's host, applies the mesh's
  rules and, in STRICT mode, originates mTLS — exactly what the app's ``HTTP_PROXY`` does;
- from ``legacy`` (no sidecar): in plaintext straight to one endpoint of the URL's service — an
  instance's inbound sidecar port, as kube-proxy would pick a pod — with the original ``Host``;
  a STRICT PeerAuthentication then refuses it, as in Istio's mTLS migration task. The URL's host
  resolves as Kubernetes DNS does: a short name in the sender's namespace, ``svc.ns`` and
  ``svc.ns.svc.cluster.local`` in ``ns``.

``https://`` URLs are the app's own TLS (`meshkit.runtime.curl_tls`): from a workload with a sidecar,
a ``CONNECT host:443`` tunnel through that sidecar (its ``HTTPS_PROXY``), which carries the bytes where
the mesh's rules send them, then the handshake (SNI = the URL's host) and the request inside it;
from ``legacy``, only to the external stand-ins (``httpbin.org``, ``edition.cnn.com``,
``www.google.com``), straight to them as DNS would resolve those names — plain ``http://`` to them too.

A host whose notional address the sidecar does not intercept (`meshkit.runtime.interception`: Istio's
``includeIPRanges`` / ``excludeIPRanges``) is reached straight, as from ``legacy``, though the
workload has a sidecar.

Loopback URLs (``http://127.0.0.1:PORT/``) bypass the sidecar, as ``NO_PROXY`` makes the apps do.
``haproxy_protocol`` starts the connection with a PROXY protocol v1 line, as curl's
``--haproxy-protocol`` does (the source address: the socket's own, or ``haproxy_clientip`` as
curl's ``--haproxy-clientip``): a load balancer in front of an ingress gateway with
``gatewayTopology.proxyProtocol``, played by the client itself.
The result is a `CurlResult`: status (None when the connection failed, with ``error`` in curl's
words), headers, body, the time taken, and the Envoy response flags and upstream host that the
sending sidecar (or, from ``legacy``, the receiving one) wrote for this request id in its access
log — not for tunnelled HTTPS, which the sidecar logs as a TCP connection without a request id.

It must not: follow redirects or print (that is curl's command line, `meshkit.runtime.exec_command`),
or start processes.
"""

from __future__ import annotations

import html
import http.client
import ipaddress
import json
import random
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshkit.config.ip_ranges import IPRangeError
from meshkit.runtime import curl_tls, interception
from meshkit.runtime.catalog import EXTERNAL_HOSTS, EXTERNAL_TLS_DELTA, external_hosts, workload_of
from meshkit.runtime.egress_gate import EgressGate, dropped
from meshkit.runtime.state import StateDir

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
LOG_WAIT = 1.0  # seconds to wait for the access-log line of the request
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CLUSTER_SUFFIXES = (".svc.cluster.local", ".svc")


class CurlError(ValueError):
    """The request could not be formed (unknown workload, bad URL, bad header): which argument, and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field  # "from", "url", "header", "method", "timeout", "cacert"
        self.message = message


@dataclass
class CurlResult:
    """What came back for one request sent from a workload."""

    source: str  # the instance it was sent from ("sleep-v1-0")
    method: str
    url: str
    status: int | None  # None: no HTTP answer (refused, reset, timed out); see error
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    seconds: float = 0.0
    flags: str = ""  # Envoy response flags from the access log ("UO", "DI,FI"), "" for none or unknown
    upstream: str | None = None  # the upstream host:port the sidecar used, from the access log
    request_id: str = ""
    error: str | None = None  # what went wrong when there is no HTTP answer, in curl's words
    reason: str = ""  # the status line's reason phrase, as the server sent it ("OK", "Moved Permanently")
    version: str = "HTTP/1.1"  # the status line's protocol

    @property
    def status_line(self) -> str:
        """The response's status line as curl prints it (``HTTP/1.1 301 Moved Permanently``); "" for none."""
        if self.status is None:
            return ""
        return f"{self.version} {self.status} {self.reason}".rstrip()

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.text) if self.body else None
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def summary(self) -> str:
        outcome = f"HTTP {self.status}" if self.status is not None else f"no answer ({self.error})"
        extra = f", flags {self.flags}" if self.flags else ""
        extra += f", upstream {self.upstream}" if self.upstream else ""
        return f"{self.method} {self.url} from {self.source}: {outcome} in {self.seconds:.3f} s{extra}"

    def __str__(self) -> str:
        body = self.text
        if len(body) > 2000:
            body = body[:2000] + f"... ({len(self.body)} bytes)"
        return self.summary() + (f"\n{body}" if body else "")

    __repr__ = summary

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#cf222e"
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td>"
                       f"<td><code>{html.escape(v)}</code></td></tr>" for k, v in self.headers)
        parsed = self.json()
        body = json.dumps(parsed, indent=2) if parsed is not None else self.text
        if len(body) > 4000:
            body = body[:4000] + f"\n... ({len(self.body)} bytes)"
        return (f'<div><b style="color:{colour}">{html.escape(self.summary())}</b>'
                f"<details><summary>headers</summary><table>{rows}</table></details>"
                f"<pre>{html.escape(body)}</pre></div>")


@dataclass(frozen=True)
class _Route:
    host: str
    port: int
    target: str  # request-target: absolute-form through a proxy, origin-form direct
    access_log: Path | None
    direction: str = "outbound"  # which of the log's entries for the request id is ours
    tunnel: str | None = None  # "host:port" to CONNECT to through the proxy at host:port (HTTPS_PROXY)
    tls_host: str | None = None  # TLS to this server name (SNI, certificate check); None: plaintext
    where: str = ""  # the URL's host:port, for messages
    # a pod without a sidecar connects itself (its NetworkPolicy egress applies, `egress_gate`):
    # "external" for a stand-in, else the status row of the instance it connects to
    direct: dict[str, Any] | str | None = None


def find_source(workloads: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The status row of ``source``: an instance (``sleep-v1-0``, ``sleep-0.foo``), else the first
    instance of a workload (``sleep-v1``, ``sleep.foo``), else of a service (``sleep``, in ``default``
    first; ``sleep.foo``)."""
    for match in (lambda w: w["name"] == source, lambda w: workload_of(w["name"]) == source,
                  lambda w: w["service"] == source and _namespace(w) == "default",
                  lambda w: w["service"] == source,
                  lambda w: f"{w['service']}.{_namespace(w)}" == source):
        found = [w for w in workloads if match(w)]
        if found:
            return found[0]
    known = ", ".join(w["name"] for w in workloads) or "none: is the mesh running?"
    raise CurlError("from", f"no such workload {source!r} (known: {known})")


def _namespace(row: dict[str, Any]) -> str:
    return str(row.get("namespace") or "default")


def service_of(host: str, namespace: str) -> tuple[str, str]:
    """(service, namespace) a host names from a workload of ``namespace``, as Kubernetes DNS resolves it."""
    for suffix in CLUSTER_SUFFIXES:
        if host.endswith(suffix):
            host = host[: -len(suffix)]
            break
    name, _, rest = host.partition(".")
    return name, rest.split(".", maxsplit=1)[0] if rest else namespace


def _external(workloads: list[dict[str, Any]], host: str, port: int) -> tuple[str, int] | None:
    """Where the external stand-ins serve ``host:port`` (``httpbin.org:443``), as the control plane's
    external host map says (`catalog.external_hosts`), or None (not a stand-in host, none running)."""
    for row in workloads:
        if row["service"] == "external" and not row.get("inbound_port") and row.get("app_port") \
                and row.get("healthy", True):
            mapped = external_hosts(int(row["app_port"]), int(row["app_port"]) + EXTERNAL_TLS_DELTA)
            address = mapped.get(f"{host}:{port}")
            if address is not None:
                address_host, _, address_port = address.rpartition(":")
                return address_host, int(address_port)
    return None


def _intercepted(state: StateDir, workloads: list[dict[str, Any]], row: dict[str, Any], host: str, *,
                 service: str, namespace: str) -> bool:
    try:
        return interception.intercepts(state, workloads, row, host, service=service, namespace=namespace)
    except IPRangeError as error:
        raise CurlError("from", f"{row['name']}: its pod's {error}") from None


def _route(state: StateDir, workloads: list[dict[str, Any]], row: dict[str, Any], url: str) -> _Route:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CurlError("url", f"expected an absolute http:// or https:// URL such as "
                        f"http://httpbin:8000/headers, got {url!r}")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise CurlError("url", f"bad port in {url!r}") from None
    host = parts.hostname
    origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    tls_host, where = (host if secure else None), curl_tls.authority(host, port)
    if host in LOOPBACK:
        return _Route(host, port, origin_form, None, tls_host=tls_host, where=where)
    service, namespace = service_of(host, _namespace(row))
    # through the workload's sidecar, as its HTTP_PROXY / HTTPS_PROXY; unless includeIPRanges /
    # excludeIPRanges leave the host's address out: then straight, as from a pod without a sidecar
    if row["outbound_proxy"] and _intercepted(state, workloads, row, host.lower(), service=service,
                                                namespace=namespace):
        proxy = urlsplit(row["outbound_proxy"])
        if secure:  # a CONNECT tunnel: the sidecar logs a TCP connection, with no request id to look for
            return _Route(proxy.hostname or "127.0.0.1", proxy.port or 80, origin_form, None,
                          tunnel=curl_tls.authority(host, port), tls_host=tls_host, where=where)
        return _Route(proxy.hostname or "127.0.0.1", proxy.port or 80, url,
                      state.log(f"{row['name']}.access"), tls_host=tls_host, where=where)
    external = _external(workloads, host.lower(), port)
    if external is not None:  # no sidecar: straight to the stand-in, as DNS would resolve the name
        return _Route(external[0], external[1], origin_form, None, tls_host=tls_host, where=where,
                      direct="external")
    if secure:
        raise CurlError("url", f"{row['name']} has no sidecar: https from it to {host!r} is not supported "
                        f"here (only to the external stand-ins {', '.join(EXTERNAL_HOSTS)}, "
                        f"when `external` runs)")
    endpoints = [w for w in workloads if w["service"] == service and _namespace(w) == namespace
                 and w["inbound_port"] and w["healthy"]]
    if not endpoints:
        known = sorted({f"{w['service']}.{_namespace(w)}" for w in workloads if w["inbound_port"]})
        raise CurlError("url", f"{row['name']} has no sidecar, and {parts.hostname!r} names no running "
                        f"service of the mesh it could reach (services: {', '.join(known)})")
    chosen = random.choice(endpoints)  # as kube-proxy picks a pod
    log = state.log(f"{chosen['name']}.access")
    return _Route("127.0.0.1", int(chosen["inbound_port"]), origin_form, log, "inbound", where=where,
                  direct=chosen)


def _headers(given: dict[str, str] | list[str] | None) -> list[tuple[str, str]]:
    if given is None:
        return []
    if isinstance(given, dict):
        pairs = list(given.items())
    else:
        pairs = []
        for raw in given:
            name, sep, value = raw.partition(":")
            if not sep:
                raise CurlError("header", f"expected 'Name: value', got {raw!r}")
            pairs.append((name, value))
    cleaned = []
    for raw_name, raw_value in pairs:
        name, value = str(raw_name).strip(), str(raw_value).strip()
        if not name or any(c in name + value for c in "\r\n") or " " in name:
            raise CurlError("header", f"invalid header {name!r}: {value!r}")
        cleaned.append((name, value))
    return cleaned


def _log_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _logged(route: _Route, offset: int, request_id: str, wait: float) -> dict[str, Any] | None:
    """The access-log entry of ``request_id`` written after ``offset`` (the sink flushes within a loop turn).

    A mirrored copy (authority ``...-shadow``) carries the same request id; it is not ours.
    """
    path = route.access_log
    if path is None:
        return None
    deadline = time.monotonic() + wait
    marker = f'"request_id":"{request_id}"'
    while True:
        try:
            with path.open("rb") as log:
                log.seek(offset)
                for line in log.read().decode(errors="replace").splitlines():
                    if marker not in line:
                        continue
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("direction") == route.direction and \
                            not str(entry.get("authority", "")).endswith("-shadow"):
                        return entry
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def haproxy_v1_line(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """The PROXY protocol v1 line curl's ``--haproxy-protocol`` sends (TCP6 for an IPv6 source)."""
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode("ascii")


def _client_ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise CurlError("haproxy-clientip", f"expected an IPv4 or IPv6 address, got {value!r}") from None


def _connect(route: _Route, context: ssl.SSLContext | None, timeout: float, *,
             haproxy: bool = False, client_ip: str | None = None) -> socket.socket:
    """The connection the request goes on: plain TCP, or TLS (through a CONNECT tunnel when proxied);
    with ``haproxy``, curl's PROXY protocol v1 line first."""
    sock = socket.create_connection((route.host, route.port), timeout=timeout)
    if haproxy:
        local, peer = sock.getsockname(), sock.getpeername()
        sock.sendall(haproxy_v1_line(client_ip or local[0], peer[0], local[1], peer[1]))
    if context is None or route.tls_host is None:
        return sock
    try:
        if route.tunnel is not None:
            curl_tls.open_tunnel(sock, route.tunnel)
    except BaseException:
        sock.close()
        raise
    return curl_tls.handshake(sock, context, route.tls_host, route.where)


def curl(state: StateDir, workloads: list[dict[str, Any]], source: str, url: str, *, method: str = "GET",
         headers: dict[str, str] | list[str] | None = None, body: str | bytes | None = None,
         timeout: float = DEFAULT_TIMEOUT, insecure: bool = False, cacert: str | None = None,
         haproxy_protocol: bool = False, haproxy_clientip: str | None = None,
         egress: EgressGate | None = None, connect_timeout: float | None = None) -> CurlResult:
    """Send one request from ``source`` (a `meshkit status` workload name) and return what came back.

    ``workloads`` are the rows of `LocalMesh.status()`. Never raises for an HTTP error or a
    failed connection (see `CurlResult.status` and ``error``); `CurlError` for bad arguments.
    For ``https://``: ``insecure`` (curl's ``-k``) skips the certificate check, ``cacert`` (``--cacert``)
    is the CA bundle to check it against instead of the pod's (system CAs + the stand-ins' CA).
    ``egress``: the mesh's NetworkPolicies; a connection of a pod without a sidecar that they do not
    allow is dropped (``connect_timeout``: curl's ``--connect-timeout``), as `egress_gate` says.
    """
    row = find_source(workloads, source)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise CurlError("timeout", f"expected seconds in (0, {MAX_TIMEOUT:g}], got {timeout!r}")
    method = method.upper()
    if not method.isalpha():
        raise CurlError("method", f"expected an HTTP method such as GET or POST, got {method!r}")
    client_ip = _client_ip(haproxy_clientip)
    route = _route(state, workloads, row, url)
    context = None
    if route.tls_host is not None:
        try:
            context = curl_tls.client_context(state.root, insecure=insecure, cacert=cacert)
        except ValueError as error:
            raise CurlError("cacert", str(error)) from None
    pairs = _headers(headers)
    parts = urlsplit(url)
    # an x-request-id to find the sidecar's access-log line by; not where no sidecar sees the request
    # (inside a TLS tunnel, or from legacy to a stand-in): a pod's curl sends none of its own
    tagged = route.access_log is not None or parts.hostname in LOOPBACK
    request_id = next((v for k, v in pairs if k.lower() == "x-request-id"), None) or \
        (str(uuid.uuid4()) if tagged else "")
    if request_id and not any(k.lower() == "x-request-id" for k, _ in pairs):
        pairs.append(("x-request-id", request_id))
    if not any(k.lower() == "host" for k, _ in pairs):
        pairs.insert(0, ("Host", parts.netloc))
    payload = body.encode() if isinstance(body, str) else body
    result = CurlResult(row["name"], method, url, None, request_id=request_id)
    offset = _log_size(route.access_log)
    began = time.monotonic()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    to = route.direct
    if egress is not None and to is not None and not egress.allows(row, to if isinstance(to, dict) else None,
                                                                   port):
        result.error = dropped(parts.hostname or "", port, connect_timeout, timeout)
        result.seconds = time.monotonic() - began
        return result
    conn = http.client.HTTPConnection(route.host, route.port, timeout=timeout)
    try:
        conn.sock = _connect(route, context, timeout, haproxy=haproxy_protocol or client_ip is not None,
                             client_ip=client_ip)
        conn.putrequest(method, route.target, skip_host=True, skip_accept_encoding=True)
        for name, value in pairs:
            conn.putheader(name, value)
        if payload is not None:
            conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        response = conn.getresponse()
        result.status, result.reason = response.status, response.reason
        result.version = "HTTP/1.0" if response.version == 10 else "HTTP/1.1"
        result.headers = list(response.getheaders())
        result.body = response.read()
    except curl_tls.TlsFailure as failure:
        result.error = str(failure)
    except TimeoutError:
        result.error = f"timed out after {timeout:g} s"
    except ConnectionRefusedError:
        result.error = f"connection refused by 127.0.0.1:{route.port}"
    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
        result.error = f"connection reset by 127.0.0.1:{route.port} before an HTTP answer"
    except http.client.BadStatusLine:  # not HTTP (an opaque TCP server answered): curl's own words
        result.error = "Received HTTP/0.9 when not allowed"
    except (OSError, http.client.HTTPException) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    result.seconds = time.monotonic() - began
    entry = _logged(route, offset, request_id, LOG_WAIT if result.status is not None else 0.2)  # None: tunnel
    if entry is not None:
        result.flags = "" if entry.get("response_flags") in (None, "", "-") else str(entry["response_flags"])
        result.upstream = entry.get("upstream_host")
    return result
