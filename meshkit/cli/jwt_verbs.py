"""``meshkit jwt``: tokens and keys for Istio's end-user authentication tasks, with no internet.

- ``jwt issue --claims groups=group1,group2 [--expires 1h]``: a token signed by the demo key of
  this MESHKIT_HOME (`meshkit.control.jwt_demo`), printed alone on stdout (``TOKEN=$(meshkit jwt issue)``).
- ``jwt jwks-uri``: the URL to put in a RequestAuthentication's ``jwksUri`` (the control plane's
  ``/.well-known/jwks.json``: the demo key and Istio's sample key).
- ``jwt status``: every jwksUri in the config, fetched or why not.

Thin: parsing and printing only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshkit.cli.common import EXIT_REJECTED, ControlOption, Printer, _call, _client, _control_url, _fail, app

jwt_app = typer.Typer(
    name="jwt", no_args_is_help=True,
    help="Demo JWTs for RequestAuthentication: mint tokens, show the JWKS URL and fetch status.")
app.add_typer(jwt_app, name="jwt")


def _seconds(text: str) -> float | None:
    """``"1h"`` -> 3600; ``"-10m"`` (already expired, for the 401 lesson) -> -600; ``"never"`` -> None."""
    from meshkit.config.resources import parse_duration_ms  # noqa: PLC0415

    if text in ("never", "none", "0"):
        return None
    negative = text.startswith("-")
    try:
        ms = parse_duration_ms(text[1:] if negative else text)
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: --expires {text!r}: {error}")
    return (-ms if negative else ms) / 1000.0


@jwt_app.command("issue")
def issue(  # noqa: PLR0917 (typer maps parameters to options)
    claims: Annotated[list[str] | None, typer.Option(
        "--claims", "-c",
        help="NAME=VALUE, repeatable; a value with commas is a list (groups=group1,group2), "
             "JSON objects/arrays/numbers/booleans are taken as JSON.")] = None,
    expires: Annotated[str, typer.Option(
        "--expires", help='Lifetime: "1h", "30m"; "-5m" for an expired token; "never" for no exp.')] = "1h",
    issuer: Annotated[str, typer.Option("--issuer", help="iss (Istio's tasks use testing@secure.istio.io).")]
    = "testing@secure.istio.io",
    subject: Annotated[str, typer.Option("--subject", help="sub.")] = "testing@secure.istio.io",
    audience: Annotated[list[str] | None, typer.Option("--aud", help="aud, repeatable.")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="The control plane's state dir (default $MESHKIT_HOME/control).")] = None,
    decoded: Annotated[bool, typer.Option("--show-claims", help="Also print the claims on stderr.")] = False,
) -> None:
    """Mint a JWT signed by this MESHKIT_HOME's demo key (served at the control plane's JWKS URL)."""
    from meshkit.control import jwt_demo  # noqa: PLC0415
    from meshkit.control.address import default_control_dir  # noqa: PLC0415

    try:
        body = jwt_demo.parse_claims(claims or [])
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    if audience:
        body["aud"] = audience[0] if len(audience) == 1 else list(audience)
    try:
        token = jwt_demo.issue(state_dir or default_control_dir(), body, expires_s=_seconds(expires),
                               issuer=issuer, subject=subject)
    except jwt_demo.DemoKeyError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    if decoded:
        import base64  # noqa: PLC0415

        payload = token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        Printer().problem(json.dumps(json.loads(base64.urlsafe_b64decode(padded))))
    typer.echo(token)


@jwt_app.command("jwks-uri")
def jwks_uri(control: ControlOption = None) -> None:
    """The jwksUri serving the demo key and Istio's sample key (put it in a RequestAuthentication)."""
    from meshkit.control.jwt_demo import JWKS_PATH  # noqa: PLC0415

    typer.echo(_control_url(control).rstrip("/") + JWKS_PATH)


@jwt_app.command("status")
def status(control: ControlOption = None,
           output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table") -> None:
    """Every jwksUri of the config: which RequestAuthentication uses it, fetched or the error."""
    answer = _call(_client(control).jwks_status)
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    printer = Printer()
    rows = answer.get("jwks", [])
    if not rows:
        printer.line("no RequestAuthentication uses a jwksUri")
    for row in rows:
        state = "fetched" if row["ok"] else f"ERROR {row['error']}"
        printer.line(f"{row['uri']}  {', '.join(row['resources'])}  {state}")
