"""The ``meshkit`` command: kubectl/istioctl-like verbs for the config and the local mesh.

Thin on purpose: each verb parses its options, calls into the packages below it and prints.
Heavy modules are imported inside the verbs, so ``meshkit --help`` stays fast.

- `cluster_verbs`: cluster-info dump (the notional service range)
- `common`: the Typer app, output helpers, how the control plane is found, exit codes
- `config_verbs`: control, apply, get, delete, analyze, history, rollback, proxy-status, proxy, kind
- `object_verbs`: create namespace, label, patch, kube-inject (one stored object edited in place)
- `create_verbs`: create secret tls|generic, create configmap (objects from files)
- `mesh_verbs`: up, down, status, curl, logs, kill, restart, load, top, lab
- `security_verbs`: certs, tap
- `proxy_config_verbs`: proxy-config (pc) cluster|endpoint|secret|route|listener|all (istioctl's tables)
- `trace_verbs`: traces, trace, explain
- `console_verbs`: dashboard (the web console's URL)
- `jwt_verbs`: jwt issue, jwt jwks-uri, jwt status
- `workshop_verbs`: workshop serve, workshop export-student
- `wait_verbs`: wait (kubectl's wait for a status condition)

It must not hold logic of its own beyond parsing and printing.
"""

from __future__ import annotations

import os
import sys

# Importing the verb modules registers their verbs on `app`.
from meshkit.cli import (  # noqa: F401
    cluster_verbs,
    config_verbs,
    console_verbs,
    create_verbs,
    jwt_verbs,
    mesh_verbs,
    object_verbs,
    proxy_config_verbs,
    security_verbs,
    trace_verbs,
    wait_verbs,
    workshop_verbs,
)
from meshkit.cli.common import EXIT_REJECTED, app

__all__ = ["app", "leading_namespace", "main"]


def leading_namespace(argv: list[str]) -> list[str]:
    """istioctl's and kubectl's ``-n NS`` before the command (``istioctl -n istio-system proxy-config
    secret deploy/istio-egressgateway``), moved after it (before a ``--``), where the verbs take it."""
    if len(argv) < 3 or argv[0] not in ("-n", "--namespace"):
        return argv
    option, rest = argv[:2], argv[2:]
    end = rest.index("--") if "--" in rest else len(rest)
    return rest[:end] + option + rest[end:]


def main() -> None:
    """Console-script entry point (``meshkit``): a bug prints one line, not a traceback (unless
    ``MESHKIT_DEBUG`` is set)."""
    sys.argv[1:] = leading_namespace(sys.argv[1:])
    try:
        app()
    except Exception as error:
        if os.environ.get("MESHKIT_DEBUG"):
            raise
        print(f"error: internal error: {type(error).__name__}: {error} "
              "(set MESHKIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        sys.exit(EXIT_REJECTED)
