"""Verbs for the security lessons: certs (a sidecar's certificate chain) and tap (bytes on the wire).

Thin like the rest of the CLI: `certs` reads the sidecar admin page ``/certs``; `tap` calls
`meshkit.runtime.tap` and prints its capture as hex + ASCII.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, EXIT_UNAVAILABLE, Printer, _fail, app

GATEWAY_NAMES = ("ingressgateway", "istio-ingressgateway", "istio-ingressgateway-0")


def _running_mesh() -> Any:
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415

    mesh = LocalMesh()
    if mesh.record() is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    return mesh


def _admin_ports(mesh: Any, name: str) -> dict[str, int]:
    """Instance name -> sidecar admin port, for an instance, a workload (all its instances) or the gateway."""
    from meshkit.runtime.ports import PortPlan  # noqa: PLC0415

    if name in GATEWAY_NAMES:
        return {"istio-ingressgateway-0": PortPlan(mesh.record().base_port).ingress_admin}
    rows = [w for w in mesh.status()["workloads"] if w["admin_port"]]
    chosen = {w["name"]: w["admin_port"] for w in rows if name in (w["name"], w["name"].rsplit("-", 1)[0])}
    if not chosen:
        known = ", ".join([*sorted(w["name"] for w in rows), "ingressgateway"])
        _fail(EXIT_REJECTED, f"error: no sidecar {name!r}; known: {known}")
    return chosen


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as error:
        _fail(EXIT_UNAVAILABLE, f"error: cannot read {url}: {error}")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _cert_lines(cert: dict[str, Any], indent: str) -> list[str]:
    return [
        f"{indent}subject     {cert['subject'] or '(empty: the identity is in the SAN)'}",
        f"{indent}SPIFFE ID   {cert['spiffe_id'] or '-'}",
        f"{indent}issuer      {cert['issuer']}",
        f"{indent}serial      {cert['serial']}",
        f"{indent}valid       {cert['not_before']} .. {cert['not_after']} "
        f"({_duration(cert['seconds_left'])} left)",
    ]


@app.command()
def certs(
    workload: Annotated[str, typer.Argument(
        help="Instance (reviews-v1-0), workload (reviews-v1, all its instances) or ingressgateway.")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
) -> None:
    """Show a sidecar's workload certificate: subject, SPIFFE ID, validity, serial, time to rotation."""
    mesh = _running_mesh()
    ports = _admin_ports(mesh, workload)
    docs = {name: _get_json(f"http://127.0.0.1:{port}/certs") for name, port in ports.items()}
    if output == "json":
        print(json.dumps(docs, indent=2))
        return
    printer = Printer()
    for name, doc in docs.items():
        if not doc.get("ready"):
            reason = doc.get("reason") or doc.get("last_error") or "no certificate yet"
            printer.line(f"{name}: no workload certificate ({reason})")
            continue
        printer.line(f"{name}  {doc['identity']}")
        for index, cert in enumerate(doc["chain"]):
            printer.line(f"  certificate {index} ({'workload' if index == 0 else 'intermediate'})")
            for line in _cert_lines(cert, "    "):
                printer.line(line)
        for cert in doc["root"]:
            printer.line("  trusted root")
            for line in _cert_lines(cert, "    "):
                printer.line(line)
        printer.line(f"  rotation    in {_duration(doc['seconds_until_rotation'])} (at {doc['rotate_at']}, "
                     f"half the lifetime); certificates issued so far: {doc['certificates_issued']}")


@app.command()
def tap(
    source: Annotated[str, typer.Argument(help="Calling instance, e.g. productpage-v1-0.")],
    target: Annotated[str, typer.Argument(help="Called instance, e.g. reviews-v1-0.")],
    path: Annotated[str, typer.Option(
        help="Path of the requests sent from SOURCE to TARGET's service.")] = "/health",
    max_bytes: Annotated[int, typer.Option(help="Bytes kept per direction (16-65536).")] = 128,
    seconds: Annotated[float, typer.Option(help="Give up after this long (max 60).")] = 10.0,
) -> None:
    """Show the first bytes on the wire from SOURCE's sidecar to TARGET's sidecar (hex + ASCII).

    A relay is put in front of TARGET's inbound port for a moment; with mTLS you see TLS records
    (16 03 ...), with mTLS disabled (DestinationRule tls.mode DISABLE) the plaintext request.
    """
    import asyncio  # noqa: PLC0415

    from meshkit.runtime import tap as wire  # noqa: PLC0415

    mesh = _running_mesh()
    rows = {w["name"]: w for w in mesh.status()["workloads"]}
    if source not in rows or not rows[source]["outbound_proxy"]:
        _fail(EXIT_REJECTED, f"error: {source!r} is not an instance with a sidecar; see `meshkit status`")
    try:
        capture = asyncio.run(wire.tap(mesh.control_url(), rows[source]["outbound_proxy"], target, path=path,
                                       max_bytes=max_bytes, seconds=seconds))
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    printer = Printer()
    if not capture.connections:
        _fail(EXIT_REJECTED, f"error: no connection from {source} reached {target} within {seconds:g} s "
                             f"({capture.requests_sent} requests sent; the balancer may have picked other "
                             "instances, or the sidecar reused a connection)")
    for title, data in ((f"{source} -> {target}", capture.client_to_server),
                        (f"{target} -> {source}", capture.server_to_client)):
        printer.line(f"{title}: first {len(data)} bytes: {wire.describe(bytes(data))}")
        for line in wire.hexdump(bytes(data)):
            printer.line(f"  {line}")
    if capture.statuses:
        printer.line(f"({capture.requests_sent} request(s) sent, answered {sorted(set(capture.statuses))})")
