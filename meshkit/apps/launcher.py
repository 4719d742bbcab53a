"""The command line of the demo apps: ``python -m meshkit.apps <app> --port N [options]``.

Common options: ``--port`` (0 = pick a free one; the JSON ready line on stdout says
which), ``--host`` (127.0.0.1), ``--instance`` (pod name, default ``<app>-<version>-0``),
``--version`` (v1), ``--service-port`` (the port in the URLs of called services: 9080 for
Bookinfo), ``--seed`` (makes ``/admin/fail`` and weighted ``/status`` reproducible).
``reviews`` also takes ``--star-color black|red|none`` for versions other than v1-v3.
``external`` also takes ``--tls-port N --tls-cert FILE --tls-key FILE``: HTTPS on a second port
(the stand-ins' own CA, ``meshkit.runtime.standin_tls``).
``tcp-echo`` (Istio's TCP echo server, no HTTP: `meshkit.apps.tcp_echo`) also takes ``--prefix``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from meshkit.apps import clients, external, helloworld, httpbin, tcp_echo
from meshkit.apps.bookinfo import details, productpage, ratings, reviews
from meshkit.apps.identity import Workload
from meshkit.apps.outbound import ProxySettings
from meshkit.apps.serve import run

Builder = Callable[[Workload, argparse.Namespace, ProxySettings], web.Application]

BUILDERS: dict[str, Builder] = {
    "productpage": lambda w, a, p: productpage.build(w, proxies=p, seed=a.seed),
    "details": lambda w, a, p: details.build(w, seed=a.seed),
    "reviews": lambda w, a, p: reviews.build(w, proxies=p, star_colour=a.star_color, seed=a.seed),
    "ratings": lambda w, a, p: ratings.build(w, seed=a.seed),
    "httpbin": lambda w, a, p: httpbin.build(w, seed=a.seed),
    "helloworld": lambda w, a, p: helloworld.build(w, seed=a.seed),
    "sleep": lambda w, a, p: clients.build_sleep(w, proxies=p, seed=a.seed),
    "legacy": lambda w, a, p: clients.build_legacy(w, seed=a.seed),
    "external": lambda w, a, p: external.build(w, seed=a.seed),
}

SUMMARIES = {
    "productpage": "Bookinfo front end: /productpage HTML, /api/v1/products JSON, login",
    "details": "Bookinfo details: /details/{id}",
    "reviews": "Bookinfo reviews: /reviews/{id} (v1 no stars, v2 black, v3 red)",
    "ratings": "Bookinfo ratings: /ratings/{id}",
    "httpbin": "echo service: /status/{code}, /delay/{s}, /headers, /anything, ...",
    "helloworld": "Istio's helloworld sample: /hello answers its version and instance",
    "sleep": "in-mesh client: /fetch?url=... through its sidecar (HTTP_PROXY)",
    "legacy": "out-of-mesh client: /fetch?url=... always direct (no sidecar)",
    "external": "stand-ins outside the mesh for httpbin.org, edition.cnn.com, www.google.com (by Host)",
    "tcp-echo": "Istio's tcp-echo server, plain TCP: each line comes back as '<prefix> <line>'",
}


def _port(raw: str) -> int:
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {raw!r}")
    return int(raw)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m meshkit.apps", description="meshkit demo workloads")
    apps = top.add_subparsers(dest="app", required=True, metavar="APP")
    for name, summary in SUMMARIES.items():
        sub = apps.add_parser(name, help=summary, description=summary)
        sub.add_argument("--port", type=_port, required=True, help="port to listen on (0: any free port)")
        sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        sub.add_argument("--version", default="v1", help="version label (default v1)")
        sub.add_argument("--instance", help="pod name (default <app>-<version>-0)")
        sub.add_argument(
            "--service-port", type=_port, default=9080,
            help="port used in the URLs of services this app calls (default 9080)",
        )
        sub.add_argument("--seed", type=int, help="random seed for /admin/fail and weighted /status")
        if name == "reviews":
            sub.add_argument(
                "--star-color", choices=("black", "red", "none"),
                help="star colour (default from --version: v1 none, v2 black, v3 red)",
            )
        if name == "tcp-echo":
            tcp_echo.add_arguments(sub)
        if name == "external":
            sub.add_argument("--tls-port", type=_port,
                             help="also serve HTTPS on this port (0: any free port)")
            sub.add_argument("--tls-cert", help="server certificate chain (PEM) for --tls-port")
            sub.add_argument("--tls-key", help="its private key (PEM)")
    return top


def _tls(args: argparse.Namespace) -> tuple[int, object] | None:
    """(port, server SSLContext) for ``--tls-port``; ValueError names the missing option."""
    if getattr(args, "tls_port", None) is None:
        return None
    if not args.tls_cert or not args.tls_key:
        raise ValueError("--tls-port needs --tls-cert and --tls-key")
    import ssl  # noqa: PLC0415 - only this app's process has ssl (see __main__)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert/--tls-key: {exc}") from exc
    return args.tls_port, context


def build_app(args: argparse.Namespace, env: dict[str, str]) -> web.Application:
    """The application ``args`` describe; ValueError names the bad option or variable."""
    workload = Workload(
        app=args.app,
        instance=args.instance or f"{args.app}-{args.version}-0",
        version=args.version,
        service_port=args.service_port,
    )
    proxies = ProxySettings.from_env(env)
    return BUILDERS[args.app](workload, args, proxies)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.app == "tcp-echo":  # no aiohttp application: a plain asyncio TCP server
        return tcp_echo.run(args)
    try:
        app = build_app(args, dict(os.environ))
        tls = _tls(args)
    except ValueError as exc:
        print(f"error: {args.app}: {exc}", file=sys.stderr)
        return 2
    return run(app, args.host, args.port, tls)
