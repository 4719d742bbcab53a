"""Verbs for the security lessons: certs (a sidecar's certificate chain), certs rotate, tap (the wire).

Thin like the rest of the CLI: `certs` reads the sidecar admin page ``/certs``; `certs rotate`
POSTs to its ``/certs/rotate`` (the sidecar renews at once) and prints old -> new serial;
`tap` calls `meshkit.runtime.tap` and prints its capture as hex + ASCII.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from meshkit.cli.common import EXIT_REJECTED, EXIT_UNAVAILABLE, Printer, _fail, app

GATEWAY_NAMES = ("ingressgateway", "istio-ingressgateway", "istio-ingressgateway-0")
SIGN_WAIT = 30.0  # the sidecar gives up on the CA after 10 s; this covers a loaded machine


def _running_mesh() -> Any:
    from meshkit.runtime.local import LocalMesh  # noqa: PLC0415

    mesh = LocalMesh()
    if mesh.record() is None:
        _fail(EXIT_UNAVAILABLE, "error: no local mesh is running; start one with `meshkit up`")
    return mesh


def _admin_ports(mesh: Any, name: str) -> dict[str, int]:
    """Instance name -> sidecar admin port, for an instance, a workload (all its instances) or the gateway."""
    from meshkit.runtime.catalog import refers_to  # noqa: PLC0415
    from meshkit.runtime.ports import PortPlan  # noqa: PLC0415

    if name in GATEWAY_NAMES:
        return {"istio-ingressgateway-0": PortPlan(mesh.record().base_port).ingress_admin}
    rows = [w for w in mesh.status()["workloads"] if w["admin_port"]]
    chosen = {w["name"]: w["admin_port"] for w in rows if refers_to(name, w, by_service=False)}
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


def _post_json(url: str) -> tuple[int, Any]:
    """POST with an empty body; (status, JSON answer). A sidecar's refusal (4xx/5xx) is an answer too."""
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=SIGN_WAIT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"error": body.decode(errors="replace").strip()}
    except (OSError, ValueError) as error:
        _fail(EXIT_UNAVAILABLE, f"error: cannot reach {url}: {error}")


def _rotate(ports: dict[str, int], output: str) -> None:
    answers = {name: _post_json(f"http://127.0.0.1:{port}/certs/rotate") for name, port in ports.items()}
    if output == "json":
        print(json.dumps({name: doc for name, (_, doc) in answers.items()}, indent=2))
    printer = Printer()
    failed = [(name, status, doc) for name, (status, doc) in answers.items() if status != 200]
    for name, (status, doc) in answers.items():
        if status == 200 and output != "json":
            old, new = doc["old"], doc["new"]
            printer.line(f"{name}: certificate rotated in {doc['seconds']:.2f} s ({doc['identity']})")
            printer.line(f"  old serial  {old['serial']}  valid until {old['not_after']}")
            printer.line(f"  new serial  {new['serial']}  valid until {new['not_after']}")
    if failed:
        code = EXIT_REJECTED if all(status == 409 for _, status, _ in failed) else EXIT_UNAVAILABLE
        lines = [f"error: {name}: HTTP {status}: {doc.get('error') if isinstance(doc, dict) else doc}"
                 for name, status, doc in failed]
        _fail(code, "\n".join(lines))


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
        help="Instance (reviews-v1-0), workload (reviews-v1, all its instances) or ingressgateway; "
             "or `rotate` followed by one of those.")],
    instance: Annotated[str | None, typer.Argument(
        help="After `rotate`: the instance, workload or ingressgateway whose certificate to renew now.",
        show_default=False)] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
) -> None:
    """Show a sidecar's workload certificate, or renew it now: `meshkit certs rotate reviews-v1-0`.

    Showing: subject, SPIFFE ID, validity, serial, time to rotation. `rotate` asks the sidecar
    (admin POST /certs/rotate) for a new key and certificate at once: new connections use it,
    open ones finish on the old one; if the CA cannot be reached the old one keeps serving.
    """
    if output not in ("text", "json"):
        _fail(EXIT_REJECTED, f"error: --output: expected text or json, got {output!r}")
    if workload == "rotate" and instance is None:
        _fail(EXIT_REJECTED, "error: `meshkit certs rotate` needs an instance, e.g. reviews-v1-0")
    if workload != "rotate" and instance is not None:
        _fail(EXIT_REJECTED, f"error: unexpected argument {instance!r}: `meshkit certs WORKLOAD` shows a "
                             "certificate, `meshkit certs rotate WORKLOAD` renews it")
    mesh = _running_mesh()
    if workload == "rotate":
        assert instance is not None
        _rotate(_admin_ports(mesh, instance), output)
        return
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
    instances: Annotated[list[str], typer.Argument(
        help="SOURCE TARGET (calling and called instance, e.g. productpage-v1-0 reviews-v1-0), "
             "or only TARGET with --from.", show_default=False)],
    from_: Annotated[str | None, typer.Option(
        "--from", help="The calling instance (instead of SOURCE); one without a sidecar, like legacy, "
                       "sends plaintext straight to TARGET's inbound port.", show_default=False)] = None,
    path: Annotated[str, typer.Option(
        help="Path of the requests sent from SOURCE to TARGET's service.")] = "/health",
    max_bytes: Annotated[int, typer.Option(help="Bytes kept per direction (16-65536).")] = 128,
    seconds: Annotated[float, typer.Option(help="Give up after this long (max 60).")] = 10.0,
) -> None:
    """Show the first bytes on the wire from SOURCE to TARGET's sidecar (hex + ASCII).

    A relay is put in front of TARGET's inbound port for a moment; with mTLS you see TLS records
    (16 03 ...), with mTLS disabled (DestinationRule tls.mode DISABLE) the plaintext request.
    A SOURCE without a sidecar (`--from legacy`) sends plaintext straight to TARGET's inbound
    port, as it does for real: under STRICT you see the request and no answer.
    """
    import asyncio  # noqa: PLC0415

    from meshkit.runtime import tap as wire  # noqa: PLC0415

    if from_ is not None and len(instances) != 1:
        _fail(EXIT_REJECTED, f"error: with --from give only TARGET, got {' '.join(instances)!r}")
    if from_ is None and len(instances) != 2:
        _fail(EXIT_REJECTED, "error: expected SOURCE TARGET (or --from SOURCE TARGET), got "
                             f"{' '.join(instances)!r}")
    source, target = (from_, instances[0]) if from_ is not None else (instances[0], instances[1])
    mesh = _running_mesh()
    workloads = mesh.status()["workloads"]
    # an instance (legacy-v1-0), a workload (legacy-v1: its first instance) or a service (legacy)
    from meshkit.runtime.catalog import refers_to  # noqa: PLC0415

    row = next((w for w in workloads if refers_to(source, w)), None)
    if row is None:
        known = ", ".join(w["name"] for w in workloads)
        _fail(EXIT_REJECTED, f"error: no instance {source!r}; known: {known}")
    source = row["name"]
    source_proxy = row["outbound_proxy"] or None  # None: no sidecar, plaintext straight to TARGET
    try:
        capture = asyncio.run(wire.tap(mesh.control_url(), source_proxy, target, path=path,
                                       max_bytes=max_bytes, seconds=seconds, token=mesh.admin_token()))
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
