"""The route step: picks the virtual host, route and weighted cluster for an outbound request.

Sets ``request.route`` (the route's snapshot dict, which the traffic filters read) and
``request.cluster``; applies the route's and the destination's request header operations
and rewrite (path, Host: ``meshkit.proxy.rewrite``) on the way down and their response header
operations on the way up. A route with a ``redirect`` is answered here (``meshkit.proxy.redirect``):
a 3xx with a ``location``, no cluster.
A host no virtual host serves is ``Snapshot.egress``'s on a sidecar (``PassthroughCluster`` or
``BlackHoleCluster``, meshkit.proxy.egress); answers 404 ``NR`` when no route (or, on a gateway,
no virtual host) matches and 503 ``NC`` when the picked
cluster is not in the snapshot (docs/snapshot.md).

This is where the outbound chain forks: ``route_step(chains)`` is the handler at the end of
the filters every request runs, and it continues with the chain ``chains`` specialised for the
matched route (built on the route's first request, kept on the compiled route, so it lives and
dies with the snapshot). The per-route filters and their "does this route need me" predicates
are listed in ``meshkit.proxy.pipeline``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from meshkit.proxy.chain import ScopedChains
from meshkit.proxy.http import Handler, Request, Response, answered
from meshkit.proxy.redirect import Redirect
from meshkit.proxy.routing import CompiledMatch, CompiledRoute, Destination, matched_prefix

if TYPE_CHECKING:  # the schema's TypedDicts are types only: never loaded by a running sidecar
    from meshkit.proxy.schema import RouteDoc

RQ_TIMEOUT_CHAIN = "x-envoy-upstream-rq-timeout-ms"


def route_step(chains: ScopedChains[RouteDoc]) -> Handler:
    """The route handler continuing with ``chains`` specialised per matched route."""

    def route(request: Request) -> Awaitable[Response]:
        config = request.config
        vhost, matched_route, matched = config.routes.route(request)
        if matched_route is None:
            egress = config.egress
            if vhost is None and egress is not None:  # a sidecar, a host the mesh does not know
                return egress.unmatched(request, chains.terminal)  # outboundTrafficPolicy (proxy/egress.py)
            where = "no virtual host" if vhost is None else f"no route in virtual host '{vhost.name}'"
            return answered(Response.local(
                404, f"{where} matches host '{request.authority}' path '{request.path}'\n", "NR"
            ))
        redirect = matched_route.redirect
        if redirect is not None:  # Envoy's redirect: a local 3xx with a Location, nothing sent upstream
            return answered(_redirected(request, matched_route, redirect, matched))
        destination = matched_route.pick()
        raw = matched_route.raw
        request.route = raw
        cluster = destination.cluster
        request.cluster = cluster
        if cluster not in config.clusters:
            return answered(Response.local(
                503, f"no cluster '{cluster}' for route '{matched_route.name}' (no such subset?)\n", "NC"
            ))
        if matched_route.request_ops is not None:
            matched_route.request_ops.apply(request.headers)
        if destination.request_ops is not None:
            destination.request_ops.apply(request.headers)
        if matched_route.rewrite is not None:
            matched_route.rewrite.apply(request, *matched_prefix(matched))
        handlers = matched_route.handlers
        if request.rq_timeout_ms is None:
            handler = handlers.get(chains)
            if handler is None:
                handler = handlers[chains] = chains.build(raw)
        else:
            # x-envoy-upstream-rq-timeout-ms: the chain with the timeout filter in its place,
            # even when the route has no timeout of its own (built once per route, like the other).
            handler = handlers.get((chains, RQ_TIMEOUT_CHAIN))
            if handler is None:
                handler = handlers[(chains, RQ_TIMEOUT_CHAIN)] = chains.build({**raw, "timeout_ms": 1})
        if destination.response_ops is None and matched_route.response_ops is None:
            return handler(request)  # nothing to do on the way up: no coroutine frame of our own
        return _response_ops(handler(request), matched_route, destination)

    return route


async def _response_ops(
    pending: Awaitable[Response], matched_route: CompiledRoute, destination: Destination
) -> Response:
    response = await pending
    if destination.response_ops is not None:
        destination.response_ops.apply(response.headers)
    if matched_route.response_ops is not None:
        matched_route.response_ops.apply(response.headers)
    return response


def _redirected(request: Request, matched_route: CompiledRoute, redirect: Redirect,
                matched: CompiledMatch | bool) -> Response:
    response = redirect.response(request, *matched_prefix(matched))
    if matched_route.response_ops is not None:  # Envoy finalizes a redirect's headers with the route's
        matched_route.response_ops.apply(response.headers)
    return response
