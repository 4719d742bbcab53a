"""HTTP routes of end-user JWT support: the public JWKS and the jwksUri fetch status.

    GET  /.well-known/jwks.json                  meshkit's demo key + Istio's sample key (public, no auth:
                                                 it is what a RequestAuthentication's jwksUri points at)
    GET  /.well-known/istio-samples/jwks.json    Istio's sample JWKS alone (Apache-2.0, verbatim)
    GET  /api/v1/jwks                            every jwksUri in the config: who uses it, fetched or why not
    POST /api/v1/jwks/refresh                    {"uri": "..."}: fetch it again now

Must not: hold the private key in memory longer than a request, mint tokens over HTTP (minting is
`meshkit jwt issue`, local to MESHKIT_HOME, like the CA's bootstrap tokens).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from meshkit.control import jwt_demo
from meshkit.control.jwks import JwksResolver

API = "/api/v1"
RESOLVER = web.AppKey("jwks_resolver", JwksResolver)
CONTROL_DIR = web.AppKey("control_dir", Path)


async def jwks(request: web.Request) -> web.Response:
    document = jwt_demo.public_jwks(request.app[CONTROL_DIR])
    return web.json_response(document, headers={"cache-control": "max-age=60"})


async def istio_sample_jwks(_request: web.Request) -> web.Response:
    return web.json_response(jwt_demo.istio_sample_jwks())


async def jwks_status(request: web.Request) -> web.Response:
    return web.json_response({"jwks": request.app[RESOLVER].status()})


async def jwks_refresh(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    uri = body.get("uri") if isinstance(body, dict) else None
    if not isinstance(uri, str):
        return web.json_response({"error": 'expected {"uri": "<a jwksUri in the config>"}', "messages": []},
                                 status=400)
    state = await request.app[RESOLVER].refresh(uri)
    if state is None:
        return web.json_response({"error": f"no RequestAuthentication uses jwksUri {uri}", "messages": []},
                                 status=404)
    return web.json_response(state.to_dict())


def add_routes(app: web.Application, resolver: JwksResolver, control_dir: Path) -> None:
    app[RESOLVER] = resolver
    app[CONTROL_DIR] = control_dir
    app.router.add_get(jwt_demo.JWKS_PATH, jwks)
    app.router.add_get(jwt_demo.ISTIO_SAMPLE_JWKS_PATH, istio_sample_jwks)
    app.router.add_get(f"{API}/jwks", jwks_status)
    app.router.add_post(f"{API}/jwks/refresh", jwks_refresh)
