"""Entry point of the meshkit operator: ``python operator/main.py [--cluster | --managed NAME] ...``.

In a pod (``--cluster``, as ``operator/deploy`` runs it): HTTPS webhooks on 15017 with a fresh
self-signed certificate whose CA is published into the static webhook configurations, login
as the pod's service account, liveness on :8080/healthz.
Outside a cluster (development, tests): ``--managed NAME`` lets kopf write its own webhook
configurations pointing at ``--webhook-host``, and ``--api-server URL`` talks to an API
server (``kubectl proxy``, KMock) without credentials; otherwise the kubeconfig is used.

Handlers live in ``meshkit.k8s.operator`` on their own registry, so ``kopf run`` on this file
would see none of them: run it with python. (No ``__init__.py`` in this folder on purpose:
it would shadow the standard library's ``operator`` module.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import kopf

from meshkit.k8s import names
from meshkit.k8s.inject import InjectSettings
from meshkit.k8s.operator import OperatorConfig, add_cluster_login, build_registry
from meshkit.k8s.webhook import ApiAccess, native_sidecars_supported


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python operator/main.py", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cluster", action="store_true",
                      help="run in a pod: TLS webhooks, CA published into the static configurations")
    mode.add_argument("--managed", metavar="NAME",
                      help="let kopf manage webhook configurations named NAME (development)")
    parser.add_argument("--webhook-addr", default="0.0.0.0")
    parser.add_argument("--webhook-port", type=int, default=names.PORT_WEBHOOK)
    parser.add_argument("--webhook-host", help="host name put into webhook URLs (--managed)")
    parser.add_argument("--insecure-webhook", action="store_true", help="serve webhooks over plain HTTP")
    parser.add_argument("--cert-dir", type=Path, default=Path("/tmp/meshkit-webhook"))
    parser.add_argument("--api-server", metavar="URL", help="API server URL, no credentials (kubectl proxy)")
    parser.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--image", default=os.environ.get("MESHKIT_IMAGE", names.DEFAULT_IMAGE),
                        help="sidecar image (env MESHKIT_IMAGE)")
    parser.add_argument("--control", default=os.environ.get("MESHKIT_CONTROL", names.DEFAULT_CONTROL_ADDRESS),
                        help="control plane URL the sidecars use (env MESHKIT_CONTROL)")
    parser.add_argument("--native-sidecar", choices=["auto", "on", "off"], default="auto",
                        help="inject the proxy as a native sidecar (init container, restartPolicy Always); "
                        "auto: when the API server is 1.29 or newer")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.cluster and args.liveness is None:
        args.liveness = "http://0.0.0.0:8080/healthz"
    return args


def build(args: argparse.Namespace) -> tuple[kopf.OperatorRegistry, OperatorConfig]:
    api: ApiAccess | None = None
    if args.cluster:
        api = ApiAccess.in_cluster(dict(os.environ))
    elif args.api_server:
        api = ApiAccess(server=args.api_server, insecure=True)
    native = args.native_sidecar == "on" or (
        args.native_sidecar == "auto" and api is not None and native_sidecars_supported(api))
    config = OperatorConfig(
        inject=InjectSettings(image=args.image, control_address=args.control, native_sidecar=native),
        webhook_addr=args.webhook_addr,
        webhook_port=args.webhook_port,
        webhook_host=args.webhook_host,
        cert_dir=None if args.insecure_webhook else args.cert_dir,
        managed=args.managed,
        api=api,
    )
    registry = build_registry(config)
    if args.api_server:
        server = args.api_server.rstrip("/")

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, insecure=True)
    else:
        add_cluster_login(registry)
    return registry, config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        registry, _ = build(args)
    except (RuntimeError, OSError) as error:
        print(f"meshkit operator: {error}", file=sys.stderr)
        return 2
    asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                              liveness_endpoint=args.liveness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
