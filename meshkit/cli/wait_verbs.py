"""``meshkit wait --for=condition=NAME KIND NAME``: kubectl's ``wait`` on an object's status condition.

Istio's Gateway API tabs wait for a Gateway before they read its address
(``kubectl wait --for=condition=programmed gtw mygateway``). The verb reads the object as
``get -o yaml`` does (with the status the control plane computes for the Gateway API kinds) until
the condition, matched without regard to case as kubectl does, has status ``True``, then prints
kubectl's line ``gateway.gateway.networking.k8s.io/mygateway condition met``. It gives up after
``--timeout`` (kubectl's default 30s) with kubectl's ``timed out waiting for the condition``.
Parsing and printing only; `condition_met` is the check.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer

from meshkit.cli.common import (
    EXIT_REJECTED,
    ControlOption,
    NamespaceOption,
    Printer,
    _call,
    _client,
    _fail,
    app,
)

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")
POLL_SECONDS = 0.2


def parse_timeout(text: str) -> float:
    """kubectl's ``--timeout``: ``30s``, ``1m``, ``1m30s``, ``90`` (seconds)."""
    found = _DURATION.match(text.strip())
    if not text.strip() or found is None:
        raise ValueError(f"--timeout: expected a duration such as 30s, 2m or 1m30s, got {text!r}")
    hours, minutes, seconds = found.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def parse_for(text: str) -> tuple[str, str]:
    """``condition=Programmed`` -> (``Programmed``, ``True``); ``condition=Ready=false`` too."""
    what, _, rest = text.partition("=")
    if what != "condition" or not rest:
        raise ValueError("--for: meshkit waits for conditions only (--for=condition=NAME[=VALUE]), "
                         f"got {text!r}")
    name, _, value = rest.partition("=")
    return name, value or "True"


def condition_met(doc: dict[str, Any], condition: str, value: str = "True") -> bool:
    """Whether ``doc``'s ``status.conditions`` has ``condition`` with status ``value`` (both in any case)."""
    conditions = (doc.get("status") or {}).get("conditions") or []
    return any(str(c.get("type", "")).lower() == condition.lower()
               and str(c.get("status", "")).lower() == value.lower() for c in conditions)


def full_name(doc: dict[str, Any]) -> str:
    """kubectl's name of an object: ``gateway.gateway.networking.k8s.io/mygateway``, ``pod/x``."""
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    kind = str(doc.get("kind", "")).lower()
    return f"{kind}.{group}/{doc['metadata']['name']}" if group else f"{kind}/{doc['metadata']['name']}"


def _read(client: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    import yaml  # noqa: PLC0415

    docs = [d for d in yaml.safe_load_all(_call(client.get, kind, name, namespace, "yaml")) if d]
    if not docs:
        _fail(EXIT_REJECTED, f'Error from server (NotFound): {kind} "{name}" not found')
    return dict(docs[0])


@app.command("wait")
def wait(  # noqa: PLR0917 (typer maps parameters to options)
    resource: Annotated[str, typer.Argument(
        help="KIND or KIND/NAME (gtw, gateways.gateway.networking.k8s.io, httproute, ...).")],
    name: Annotated[str | None, typer.Argument(help="The object's name (unless KIND/NAME).")] = None,
    for_: Annotated[str, typer.Option("--for", help="condition=NAME[=VALUE] (kubectl's).")] = "",
    namespace: NamespaceOption = "default",
    timeout: Annotated[str, typer.Option("--timeout", help="How long to wait (kubectl's default: 30s).")
                       ] = "30s",
    control: ControlOption = None,
) -> None:
    """Wait for a condition of an object, as `kubectl wait --for=condition=programmed gtw mygateway`."""
    if name is None and "/" in resource:
        resource, _, name = resource.partition("/")
    if not name:
        _fail(EXIT_REJECTED, "error: wait needs a resource name (KIND NAME or KIND/NAME)")
    try:
        condition, value = parse_for(for_)
        seconds = parse_timeout(timeout)
    except ValueError as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    client = _client(control)
    deadline = time.monotonic() + seconds
    while True:
        doc = _read(client, resource, name, namespace)
        if condition_met(doc, condition, value):
            Printer().line(f"{full_name(doc)} condition met")
            return
        if time.monotonic() >= deadline:
            _fail(EXIT_REJECTED, f"error: timed out waiting for the condition on {full_name(doc)}")
        time.sleep(POLL_SECONDS)
