"""The dry-run part of the REST API: which rule a request would match, from which caller, and why.

    GET /api/v1/explain/route?host=H[&path=P][&method=M][&header=NAME:VALUE ...][&from=WORKLOAD]

Callers are the proxies connected now (one per workload; ``from`` picks one by workload or app),
else every registered workload with a sidecar. See `dry_run.route_dry_run`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshkit.config import codes
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.registry import Node
from meshkit.control.dry_run import route_dry_run
from meshkit.control.push import PushServer
from meshkit.control.registry import ServiceRegistry
from meshkit.control.store import ConfigStore

API = "/api/v1/explain/route"
CODE_BAD_QUERY = codes.MK0962
PARTS = web.AppKey("explain_parts", tuple)


def _bad(field: str, text: str) -> ConfigError:
    return ConfigError([Message(CODE_BAD_QUERY, Severity.ERROR, "explain query", field, text)])


def callers(push: PushServer, registry: ServiceRegistry) -> list[Node]:
    """One node per workload: the connected proxies, else the registered sidecar workloads."""
    nodes: dict[tuple[str, str], Node] = {}
    for proxy in push.proxy_status():
        if proxy.get("connected"):
            node = registry.node_for(proxy["id"], proxy.get("kind", "sidecar"))
            nodes.setdefault((node.namespace, node.workload or node.instance), node)
    if not nodes:
        for endpoint in registry.view().endpoints:
            if endpoint.has_sidecar:
                node = registry.node_for(f"{endpoint.instance}.{endpoint.namespace}")
                nodes.setdefault((node.namespace, node.workload or node.instance), node)
    return [nodes[key] for key in sorted(nodes)]


async def explain_route(request: web.Request) -> web.Response:
    store, registry, push = request.app[PARTS]
    query = request.query
    host = query.get("host", "").strip()
    if not host:
        raise _bad("host", "host is required (the service name as the caller writes it, e.g. reviews)")
    headers: dict[str, str] = {}
    for raw in query.getall("header", []):
        name, sep, value = raw.partition(":") if ":" in raw else raw.partition("=")
        if not sep or not name.strip():
            raise _bad("header", f"header={raw!r}: expected NAME:VALUE or NAME=VALUE")
        headers[name.strip().lower()] = value.strip()
    chosen = callers(push, registry)
    wanted = query.get("from")
    if wanted:
        chosen = [n for n in chosen if wanted in (n.workload, n.instance, n.labels.get("app"))]
        if not chosen:
            raise _bad("from", f"from={wanted!r}: no caller workload (or app) of that name is connected "
                               "or registered")
    path = query.get("path", "/") or "/"
    answer: dict[str, Any] = route_dry_run(store.resources(), registry.view(), chosen, host, path=path,
                                           method=query.get("method", "GET"), headers=headers)
    return web.json_response(answer)


def add_routes(app: web.Application, store: ConfigStore, registry: ServiceRegistry, push: PushServer) -> None:
    app[PARTS] = (store, registry, push)
    app.router.add_route("GET", API, explain_route)
