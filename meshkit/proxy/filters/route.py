"""The route filter: picks the virtual host, route and weighted cluster for an outbound request.

Sets ``request.route`` (the route's snapshot dict, which the traffic filters read) and
``request.cluster``; applies the route's and the destination's request header operations
and URI rewrite on the way down and their response header operations on the way up.
Answers 404 ``NR`` when no virtual host or route matches and 503 ``NC`` when the picked
cluster is not in the snapshot (docs/snapshot.md).
"""

from __future__ import annotations

from meshkit.proxy.http import Handler, Request, Response


async def route(request: Request, call_next: Handler) -> Response:
    config = request.config
    vhost, matched_route, matched = config.routes.route(request)
    if matched_route is None:
        where = "no virtual host" if vhost is None else f"no route in virtual host '{vhost.name}'"
        return Response.local(
            404, f"{where} matches host '{request.authority}' path '{request.path}'\n", "NR"
        )
    destination = matched_route.pick()
    request.route = matched_route.raw
    cluster = destination.cluster
    request.cluster = cluster
    if cluster not in config.clusters:
        return Response.local(
            503, f"no cluster '{cluster}' for route '{matched_route.name}' (no such subset?)\n", "NC"
        )
    if matched_route.request_ops is not None:
        matched_route.request_ops.apply(request.headers)
    if destination.request_ops is not None:
        destination.request_ops.apply(request.headers)
    if matched_route.rewrite_uri is not None:
        path, sep, query = request.path.partition("?")
        request.path = matched_route.rewritten_path(matched, path, query if sep else None)
    response = await call_next(request)
    if destination.response_ops is not None:
        destination.response_ops.apply(response.headers)
    if matched_route.response_ops is not None:
        matched_route.response_ops.apply(response.headers)
    return response
