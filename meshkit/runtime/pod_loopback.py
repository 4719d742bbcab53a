"""curl in a pod's ``istio-proxy`` container to the pod's own ports (``127.0.0.1:<port>`` in the pod).

Istio's "Ingress Gateway without TLS Termination" checks nginx from inside its own pod:
``kubectl exec POD -c istio-proxy -- curl -sS -v -k --resolve nginx.example.com:443:127.0.0.1
https://nginx.example.com``. In a pod, ``127.0.0.1:443`` is nginx's container port; on the local
mesh the pods share the host's loopback, so a pod's ports are mapped to its instance's real ones
(`pod_ports`): the app's container port to its app port, 15000 to the sidecar's admin port. A port
nothing in the pod listens on is refused (curl's exit 7), and a host that is not the pod itself (by
the URL or ``--resolve``) is refused by name: the proxy container's own traffic leaves the pod
uncaptured (Istio's iptables exclude its UID 1337), which the local mesh does not model.

The request goes straight to the app: TLS for ``https://`` (SNI the URL's host, the certificate
checked as curl checks it, or not with ``-k``: then, as curl, the verify result is still reported,
which takes a first handshake that verifies), and ``-v``'s lines on ``err`` as curl writes them to
stderr: the connection, the TLS version and cipher, the server certificate (subject, dates, issuer,
in OpenSSL's order and words), the request and the response headers. The body goes to ``out``.

It must not start processes or route through a sidecar; which pod is `meshkit.runtime.exec_command`'s
decision.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from meshkit.runtime import curl_tls

if TYPE_CHECKING:
    from meshkit.runtime.exec_command import CurlCall

ADMIN_PORT = 15000  # Envoy's admin port in the pod (the sidecar's admin page)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
USER_AGENT = "curl/7.88.1"  # Debian 12's curl, the proxy image's stand-in

Write = Callable[[str], None]


class PodCurlError(ValueError):
    """The command cannot run from the proxy container on the local mesh: what, and why."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # the URL's host (SNI, Host header)
    port: int  # the port in the pod
    path: str
    resolved: str | None  # the --resolve entry that applied ("host:port:address"), if any


def target(call: CurlCall) -> Target:
    """Where ``call`` goes in the pod; `PodCurlError` unless it is the pod's own loopback."""
    parts = urlsplit(call.url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise PodCurlError(f"curl: protocol {scheme!r} is not supported here (http, https)")
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    address, used = host, None
    for entry in call.resolve:
        name, _, rest = entry.partition(":")
        wanted_port, _, where = rest.partition(":")
        if name.lower() == host and wanted_port == str(port) and where:
            address, used = where.strip("[]"), entry
    if address not in LOOPBACK:
        raise PodCurlError(
            f"curl: {host}:{port}: from the istio-proxy container meshkit reaches the pod's own ports "
            "only (127.0.0.1, localhost, or a name --resolve maps to 127.0.0.1)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, used)


def pod_ports(row: dict[str, Any]) -> dict[int, int]:
    """The pod's listening ports -> the instance's real ones on 127.0.0.1."""
    ports: dict[int, int] = {}
    if row.get("container_port") and row.get("app_port"):
        ports[int(row["container_port"])] = int(row["app_port"])
    if row.get("admin_port"):
        ports[ADMIN_PORT] = int(row["admin_port"])
    return ports


def _name(name: x509.Name) -> str:
    """An X.509 name as curl (OpenSSL) prints it: its RDNs in the certificate's order, ``; `` between."""
    return "; ".join(rdn.rfc4514_string() for rdn in name.rdns)


def _date(moment: datetime) -> str:
    """OpenSSL's ASN1_TIME_print: ``May 27 14:18:47 2020 GMT``."""
    return f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S %Y} GMT"


def certificate_lines(der: bytes) -> list[str]:
    """curl -v's ``Server certificate:`` block for the DER certificate ``der`` (the task's openssl line
    gives nginx's certificate serial 0, which RFC 5280 disallows and OpenSSL prints anyway)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ["* Server certificate: (not readable here)"]
    return ["* Server certificate:", f"*  subject: {_name(cert.subject)}",
            f"*  start date: {_date(cert.not_valid_before_utc)}",
            f"*  expire date: {_date(cert.not_valid_after_utc)}",
            f"*  issuer: {_name(cert.issuer)}"]


def _verify_result(address: tuple[str, int], host: str, home: Path, cacert: str | None,
                   timeout: float) -> str:
    """What curl -k still reports: the chain checked against the trust curl would use."""
    context = curl_tls.client_context(home, cacert=cacert)
    context.check_hostname = False  # curl reports the name check apart; -v -k shows the chain's result
    try:
        with socket.create_connection(address, timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return "*  SSL certificate verify ok."
    except ssl.SSLCertVerificationError as error:
        return (f"*  SSL certificate verify result: {error.verify_message} ({error.verify_code}), "
                "continuing anyway.")
    except (OSError, ssl.SSLError):
        return "*  SSL certificate verify result: unknown, continuing anyway."


def run(row: dict[str, Any], call: CurlCall, home: Path, *, out: Write, err: Write) -> int:
    """curl ``call`` in ``row``'s pod from its proxy container; curl's exit status."""
    where = target(call)
    verbose = call.verbose

    def say(line: str) -> None:
        if verbose:
            err(line + "\n")

    def fail(code: int, text: str) -> int:
        if not call.silent or call.show_error:
            err(f"curl: ({code}) {text}\n")
        if call.write_out is not None:
            out(call.write_out.replace("%{http_code}", "000").replace("\\n", "\n"))
        return code

    if where.resolved is not None:
        say(f"* Added {where.resolved} to DNS cache")
        say(f"* Hostname {where.host} was found in DNS cache")
    say(f"*   Trying 127.0.0.1:{where.port}...")
    real = pod_ports(row).get(where.port)
    if real is None:
        say(f"* connect to 127.0.0.1 port {where.port} failed: Connection refused")
        return fail(7, f"Failed to connect to {where.host} port {where.port} after 0 ms: "
                       "Couldn't connect to server")
    address = ("127.0.0.1", real)
    # -k -v: the chain is checked first, on a connection of its own (curl reports it, then goes on)
    checked = (_verify_result(address, where.host, home, call.cacert, call.timeout)
               if where.scheme == "https" and call.insecure and verbose else "*  SSL certificate verify ok.")
    try:
        sock: socket.socket = socket.create_connection(address, timeout=call.timeout)
    except ConnectionRefusedError:
        return fail(7, f"Failed to connect to {where.host} port {where.port} after 0 ms: "
                       "Couldn't connect to server")
    except TimeoutError:
        return fail(28, f"Failed to connect to {where.host} port {where.port}: Connection timed out")
    say(f"* Connected to {where.host} (127.0.0.1) port {where.port} (#0)")
    try:
        if where.scheme == "https":
            try:
                context = curl_tls.client_context(home, insecure=call.insecure, cacert=call.cacert)
            except ValueError as error:
                sock.close()
                return fail(77, str(error))
            say("* ALPN: offers http/1.1")
            try:
                sock = curl_tls.handshake(sock, context, where.host, f"{where.host}:{where.port}")
            except curl_tls.TlsFailure as error:
                text = str(error)
                return fail(60 if text.startswith(("SSL certificate", "SSL: no alternative")) else 35, text)
            assert isinstance(sock, ssl.SSLSocket)
            version, cipher = sock.version(), (sock.cipher() or ("",))[0]
            say(f"* SSL connection using {version} / {cipher}")
            protocol = sock.selected_alpn_protocol()
            say(f"* ALPN: server accepted {protocol}" if protocol
                else "* ALPN: server did not agree on a protocol. Uses default.")
            der = sock.getpeercert(binary_form=True)
            if der and verbose:
                for line in certificate_lines(der):
                    say(line)
                say(checked)
        return _exchange(sock, where, call, out=out, say=say, fail=fail)
    finally:
        sock.close()


def _exchange(sock: socket.socket, where: Target, call: CurlCall, *, out: Write, say: Write,
              fail: Callable[[int, str], int]) -> int:
    """The HTTP/1.1 request and its answer, printed as curl prints them."""
    default = 443 if where.scheme == "https" else 80
    authority = where.host if where.port == default else f"{where.host}:{where.port}"
    given = {line.partition(":")[0].strip().lower() for line in call.headers}
    head = [f"{call.method} {where.path} HTTP/1.1"]
    head += [f"Host: {authority}"] if "host" not in given else []
    head += [f"User-Agent: {USER_AGENT}"] if "user-agent" not in given else []
    head += ["Accept: */*"] if "accept" not in given else []
    head += [line for line in call.headers if line.partition(":")[2].strip()]
    body = call.data.encode() if call.data is not None else b""
    if body:
        head += [f"Content-Length: {len(body)}"]
        if "content-type" not in given:
            head += ["Content-Type: application/x-www-form-urlencoded"]
    for line in head:
        say(f"> {line}")
    say(">")
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        answer = http.client.HTTPResponse(sock, method=call.method)
        answer.begin()
        content = answer.read()
    except TimeoutError:
        return fail(28, "Operation timed out")
    except (OSError, http.client.HTTPException):
        return fail(52, "Empty reply from server")
    status_line = f"HTTP/{'1.1' if answer.version == 11 else '1.0'} {answer.status} {answer.reason}"
    headers = list(answer.msg.items())
    say(f"< {status_line}")
    for key, value in headers:
        say(f"< {key}: {value}")
    say("<")
    if call.include:
        out(status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n")
    if not call.head and call.output is None:
        out(content.decode("utf-8", errors="replace"))
    say(f"* Connection #0 to host {where.host} left intact")
    if call.write_out is not None:
        out(call.write_out.replace("%{http_code}", f"{answer.status:03d}").replace("\\n", "\n"))
    if call.fail and answer.status >= 400:
        return fail(22, f"The requested URL returned error: {answer.status}")
    return 0
