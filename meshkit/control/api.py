"""The control plane's REST API under ``/api/v1/`` (aiohttp handlers; no listening here, see `server`).

Every call needs a bearer token (`meshkit.control.auth`: the admin token, or a sidecar's own
credential for its stream, ACKs and certificate); bodies must be ``application/json`` or
``application/yaml`` (415 otherwise) and cross-site state changes are refused (403).

Every error is JSON: ``{"error": "...", "messages": [Message.to_dict(), ...]}`` with 400 for
invalid input, 404 for an unknown resource/revision/proxy, 409 for a revision conflict and 413 for
a body over the size limit. A rejected apply changes nothing.

Routes::

    GET    /api/v1/healthz
    POST   /api/v1/apply[?expect_revision=N]          YAML or JSON body (multi-document)
    GET    /api/v1/config[/{kind}[/{namespace}/{name}]][?namespace=NS&format=yaml|json]
    DELETE /api/v1/config/{kind}/{namespace}/{name}
    POST   /api/v1/delete                             YAML or JSON body: delete what it names
    POST   /api/v1/analyze                            body optional: current config (+ body) analyzed
    GET    /api/v1/history,  GET /api/v1/history/{n}  (with the diff)
    POST   /api/v1/rollback                           {"revision": N}
    GET    /api/v1/registry
    GET|POST /api/v1/registry/services,  DELETE /api/v1/registry/services/{namespace}/{name}
    GET|POST /api/v1/registry/endpoints, DELETE /api/v1/registry/endpoints/{namespace}/{instance}
    PUT    /api/v1/registry/endpoints/{namespace}/{instance}/health   {"healthy": bool}
    GET|PUT /api/v1/registry/external   {"hosts": {"httpbin.org:80": "127.0.0.1:8100"}, "real_dns": bool,
                                         "ca_pem": the stand-ins' CA (PEM) or null}
           (where hosts outside the mesh are: the local mesh's stand-ins; snapshot ``egress``)
    GET    /api/v1/proxy-status[?wait=SECONDS]            (wait: until every connected proxy is SYNCED)
    GET    /api/v1/xds/stream?id=<instance>.<namespace>[&kind=sidecar|gateway][&admin_port=P]   (SSE;
           admin_port: the proxy's metrics, scraped on the address it connected from)
    POST   /api/v1/xds/ack
    POST   /api/v1/ca/sign, GET /api/v1/ca/root      (when the control plane runs a CA)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from aiohttp import web

from meshkit.config import codes
from meshkit.config.httproutes import with_status
from meshkit.config.messages import ConfigError, Message, Severity
from meshkit.config.resources import Resource
from meshkit.control import jsontext
from meshkit.control.auth import Authenticator, caller_of, make_guard, may_act_as
from meshkit.control.kinds import resolve_kind
from meshkit.control.preparation import Preparation, parse_resources
from meshkit.control.push import PushServer
from meshkit.control.registry import ServiceRegistry, parse_endpoint, parse_service, service_to_dict
from meshkit.control.store import ANSWER_ENCODER, ChangeResult, ConfigStore, ConflictError, NotFoundError
from meshkit.control.telemetry_api import SCRAPER

MAX_BODY_BYTES = 1024 * 1024  # `meshkit control --max-body` changes it
API = "/api/v1"


class SignedCertificate(Protocol):
    def to_dict(self) -> dict[str, str]: ...


class Signer(Protocol):
    """What `meshkit.control.ca.SigningService` offers the API; its errors carry an HTTP ``status``."""

    async def sign(self, body: object) -> SignedCertificate: ...

    @property
    def root_pem(self) -> str: ...


@dataclass(frozen=True)
class Components:
    """What the handlers work on."""

    store: ConfigStore
    registry: ServiceRegistry
    push: PushServer
    signer: Signer | None = None
    preparation: Preparation = field(default_factory=Preparation)  # where large applies are prepared


COMPONENTS = web.AppKey("components", Components)
WRITES = web.AppKey("config_writes", asyncio.Lock)  # one config change prepared at a time
BODY_LIMIT = web.AppKey("body_limit", int)


def _components(request: web.Request) -> Components:
    return request.app[COMPONENTS]


# -- errors -----------------------------------------------------------------------------------------


def _bad_request(text: str, field: str = "", resource: str = "request") -> ConfigError:
    return ConfigError([Message(codes.MK0940, Severity.ERROR, resource, field, text)])


MAX_MESSAGES = 200  # an answer lists at most this many messages (and says how many it left out)


def error_response(status: int, error: str, messages: list[Message] | None = None) -> web.Response:
    listed = [m.to_dict() for m in (messages or [])[:MAX_MESSAGES]]
    if messages and len(messages) > MAX_MESSAGES:
        listed.append(Message(codes.MK0940, Severity.ERROR, "request", "",
                              f"... and {len(messages) - MAX_MESSAGES} more messages").to_dict())
    body = {"error": error, "messages": listed}
    return web.json_response(body, status=status)


def _summary(error: ConfigError) -> str:
    errors = [m for m in error.messages if m.severity == Severity.ERROR]
    if len(errors) == 1:
        return str(errors[0])
    return f"{len(errors)} errors" if errors else "rejected"


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFoundError as error:
        return error_response(404, _summary(error), error.messages)
    except ConflictError as error:
        return error_response(409, _summary(error), error.messages)
    except ConfigError as error:
        return error_response(400, _summary(error), error.messages)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        text = error.text if error.text and not error.text.startswith("<") else error.reason
        if error.status == 413:
            text = (f"request body too large (limit {request.app[BODY_LIMIT]} bytes; "
                    "`meshkit control --max-body BYTES` sets it)")
        return error_response(error.status, f"{error.status}: {text} ({request.method} {request.path})")


# -- bodies -----------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError) as error:
        raise _bad_request(f"body is not valid JSON: {error}") from None


async def _resources_body(request: web.Request, *, required: bool = True,
                          warnings: list[Message] | None = None) -> list[Resource]:
    raw = await request.read()
    # parsing (and its alias/size bounds) runs in a worker thread: the loop keeps serving pushes and CSRs
    as_json = request.content_type == "application/json"
    ignored: list[Message] = []  # Kubernetes kinds the mesh does not model (ConfigMap, HPA...)
    resources = await asyncio.to_thread(parse_resources, raw, as_json, ignored, required=required)
    if warnings is not None:
        warnings.extend(ignored)
    return resources


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _bad_request(f"{name}: expected an integer, got {value!r}", field=name) from None


# -- config -----------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    c = _components(request)
    if caller_of(request) is None:  # liveness for anyone; the mesh's state only for callers
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "ok", "revision": c.store.revision,
                              "proxies": len(c.push.proxy_status())})


async def _change(request: web.Request, prepare: Callable[..., Any], *args: Any,
                  notes: Sequence[Message] = (), **kwargs: Any) -> web.Response:
    """Prepare a config change in a worker thread (analyzer, diff), then commit it on the loop;
    ``notes`` (the loader's warnings) come first in the answer's warnings."""
    c = _components(request)
    async with request.app[WRITES]:
        prepared = await asyncio.to_thread(prepare, *args, **kwargs)
        result = c.store.commit(prepared)
    result.warnings[:0] = notes
    return await _change_answer(result)


ANSWER_OFF_LOOP_ABOVE = 100  # warnings: a larger answer is built on a thread, in short calls
ANSWER_SPLIT_DEPTH = 2  # the answer, its warnings list: the warnings are encoded in runs (`jsontext`)


async def _change_answer(result: ChangeResult) -> web.Response:
    """The answer to a change. An apply that makes thousands of warnings (one per route of a large
    VirtualService whose host is not in the registry) answers megabytes: built on a thread in short
    `jsontext` calls, not on the loop in one ``json.dumps`` that holds the GIL. The warnings of a
    body the worker process prepared come as JSON text it encoded (`ChangeResult.encoded_warnings`):
    the answer is that text with a few members around it."""
    if result.encoded_warnings is not None:
        return web.Response(text=result.answer(), content_type="application/json")
    if len(result.warnings) <= ANSWER_OFF_LOOP_ABOVE:
        return web.json_response(result.to_dict())
    text = await asyncio.to_thread(
        lambda: jsontext.dumps(result.to_dict(), ANSWER_ENCODER, ANSWER_SPLIT_DEPTH))
    return web.Response(text=text, content_type="application/json")


async def apply(request: web.Request) -> web.Response:
    """Parse, analyze and diff on a worker thread, or in the worker process for a large body
    (`meshkit.control.preparation`); commit on the loop."""
    c = _components(request)
    expected = _int_query(request, "expect_revision")
    raw = await request.read()
    as_json = request.content_type == "application/json"
    async with request.app[WRITES]:
        # a large body's worker process also compiles the snapshots of the proxies connected now
        # for the config it makes, so the push follows the commit at once (`PushServer.expect`)
        notes, prepared = await c.preparation.apply(
            c.store, raw, as_json, c.registry.view(), expected,
            snapshots=c.push.snapshot_job() if len(raw) >= c.preparation.threshold else None,
            precompiling=c.push.expect)
        result = c.store.commit(prepared)
    result.warnings[:0] = notes
    return await _change_answer(result)


async def get_config(request: web.Request) -> web.Response:
    c = _components(request)
    kind_name = request.match_info.get("kind")
    kind = resolve_kind(kind_name) if kind_name else None
    namespace = request.match_info.get("namespace") or request.query.get("namespace") or None
    name = request.match_info.get("name")
    if kind is None and name is not None:
        raise _bad_request("a resource name needs a kind (not 'all')", field="kind")
    found = c.store.get(kind, namespace, name)
    output = request.query.get("format", "json")
    if output == "yaml":
        everything = [s.resource for s in c.store.get(None, None, None)]
        view = c.registry.view()
        text = yaml.safe_dump_all([with_status(s.resource, everything, view) for s in found], sort_keys=False)
        return web.Response(text=text, content_type="application/yaml")
    if output != "json":
        raise _bad_request(f"format: expected yaml or json, got {output!r}", field="format")
    return web.json_response({"revision": c.store.revision, "items": [s.to_dict() for s in found]})


async def delete_named(request: web.Request) -> web.Response:
    c = _components(request)
    kind = resolve_kind(request.match_info["kind"])
    if kind is None:
        raise _bad_request("delete needs a kind (not 'all')", field="kind")
    key = (kind, request.match_info["namespace"], request.match_info["name"])
    expected = _int_query(request, "expect_revision")
    return await _change(request, c.store.prepare_delete, [key], c.registry.view(),
                         expected_revision=expected)


async def delete_body(request: web.Request) -> web.Response:
    c = _components(request)
    expected = _int_query(request, "expect_revision")
    resources = await _resources_body(request)
    return await _change(request, c.store.prepare_delete, [r.key for r in resources], c.registry.view(),
                         expected_revision=expected)


async def analyze(request: web.Request) -> web.Response:
    c = _components(request)
    try:
        incoming = await _resources_body(request, required=False)
        messages = await asyncio.to_thread(c.store.analyze, incoming, c.registry.view())
    except (NotFoundError, ConflictError):
        raise
    except ConfigError as error:
        messages = error.messages
    errors = sum(1 for m in messages if m.severity == Severity.ERROR)
    warnings = sum(1 for m in messages if m.severity == Severity.WARNING)
    return web.json_response({"revision": c.store.revision, "errors": errors, "warnings": warnings,
                              "messages": [m.to_dict() for m in messages]})


async def history(request: web.Request) -> web.Response:
    c = _components(request)
    return web.json_response({"revision": c.store.revision,
                              "revisions": [r.to_dict(with_diff=False) for r in c.store.history()]})


async def history_entry(request: web.Request) -> web.Response:
    c = _components(request)
    raw = request.match_info["number"]
    if not raw.isdigit():
        raise _bad_request(f"revision: expected a number, got {raw!r}", field="revision")
    return web.json_response(c.store.revision_info(int(raw)).to_dict())


async def rollback(request: web.Request) -> web.Response:
    c = _components(request)
    body = await _json_body(request)
    number = body.get("revision") if isinstance(body, dict) else None
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        text = f'revision: expected {{"revision": N}} with N >= 0, got {body!r}'
        raise _bad_request(text, field="revision")
    target = c.store.config_at(number)
    return await _change(request, c.store.prepare_rollback, number, target, c.registry.view())


# -- registry ---------------------------------------------------------------------------------------


def _registry_doc(registry: ServiceRegistry) -> dict[str, Any]:
    return {"services": [service_to_dict(s) for s in registry.services()],
            "endpoints": [e.to_dict() for e in registry.endpoints()]}


async def get_registry(request: web.Request) -> web.Response:
    return web.json_response(_registry_doc(_components(request).registry))


async def get_services(request: web.Request) -> web.Response:
    registry = _components(request).registry
    return web.json_response({"services": [service_to_dict(s) for s in registry.services()]})


async def post_service(request: web.Request) -> web.Response:
    registry = _components(request).registry
    service = parse_service(await _json_body(request))
    changed = registry.register_service(service)
    return web.json_response({"service": service_to_dict(service), "changed": changed})


async def delete_service(request: web.Request) -> web.Response:
    registry = _components(request).registry
    gone = registry.deregister_service(request.match_info["namespace"], request.match_info["name"])
    return web.json_response({"deleted": True, "endpoints_removed": gone})


async def get_endpoints(request: web.Request) -> web.Response:
    registry = _components(request).registry
    found = registry.endpoints(request.query.get("service"), request.query.get("namespace"))
    return web.json_response({"endpoints": [e.to_dict() for e in found]})


async def post_endpoint(request: web.Request) -> web.Response:
    registry = _components(request).registry
    registered = parse_endpoint(await _json_body(request))
    changed = registry.register_endpoint(registered)
    return web.json_response({"endpoint": registered.to_dict(), "changed": changed})


async def delete_endpoint(request: web.Request) -> web.Response:
    registry = _components(request).registry
    registry.deregister_endpoint(request.match_info["namespace"], request.match_info["instance"])
    return web.json_response({"deleted": True})


_HOSTPORT = re.compile(r"^[A-Za-z0-9*.\-]+:\d{1,5}$")


async def get_external(request: web.Request) -> web.Response:
    return web.json_response(_components(request).registry.external())


async def put_external(request: web.Request) -> web.Response:
    body = await _json_body(request)
    hosts, real_dns = body.get("hosts"), body.get("real_dns", False)
    if not isinstance(hosts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _HOSTPORT.match(k) and _HOSTPORT.match(v)
            for k, v in hosts.items()):
        raise _bad_request('hosts: expected {"host:port": "address:port", ...}', field="hosts")
    if not isinstance(real_dns, bool):
        raise _bad_request(f"real_dns: expected true or false, got {real_dns!r}", field="real_dns")
    ca_pem = body.get("ca_pem")
    if ca_pem is not None and (not isinstance(ca_pem, str) or "-----BEGIN CERTIFICATE-----" not in ca_pem):
        raise _bad_request("ca_pem: expected a PEM certificate or null", field="ca_pem")
    changed = _components(request).registry.set_external(hosts, real_dns, ca_pem)
    return web.json_response({**_components(request).registry.external(), "changed": changed})


async def put_health(request: web.Request) -> web.Response:
    registry = _components(request).registry
    body = await _json_body(request)
    healthy = body.get("healthy") if isinstance(body, dict) else None
    if not isinstance(healthy, bool):
        raise _bad_request(f'healthy: expected {{"healthy": true|false}}, got {body!r}', field="healthy")
    changed = registry.set_health(request.match_info["namespace"], request.match_info["instance"], healthy)
    return web.json_response({"healthy": healthy, "changed": changed})


# -- proxies ----------------------------------------------------------------------------------------


MAX_WAIT_SECONDS = 60.0


async def proxy_status(request: web.Request) -> web.Response:
    """Every proxy's status; ``?wait=S`` first waits up to S seconds for all connected to be SYNCED."""
    c = _components(request)
    doc: dict[str, Any] = {"revision": c.store.revision}
    raw = request.query.get("wait")
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT_SECONDS:
            raise _bad_request(f"wait: expected seconds between 0 and {MAX_WAIT_SECONDS:g}, got {raw!r}",
                               field="wait")
        doc["synced"] = await c.push.wait_synced(within=seconds)
        doc["revision"] = c.store.revision
    doc["proxies"] = c.push.proxy_status()
    return web.json_response(doc)


async def xds_stream(request: web.Request) -> web.StreamResponse:
    push = _components(request).push
    proxy_id, kind = push.validate_subscription(request.query.get("id"), request.query.get("kind"))
    _authorize_proxy(request, proxy_id, kind)
    _scrape_admin_port(request, proxy_id)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    events = push.events(proxy_id, kind)
    try:
        async for chunk in events:
            await response.write(chunk)
    except ConnectionError:
        pass  # the proxy went away; events()'s cleanup marks it disconnected
    finally:
        await events.aclose()
    return response


def _scrape_admin_port(request: web.Request, proxy_id: str) -> None:
    """Scrape targets come from connected proxies only: the admin port the stream names, on the
    address the proxy connected from (never a URL a client chose)."""
    raw = request.query.get("admin_port")
    scraper = request.app.get(SCRAPER)
    if raw is None or scraper is None:
        return
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise _bad_request(f"admin_port: expected a port number, got {raw!r}", field="admin_port")
    host = request.remote or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    scraper.set_target(proxy_id, f"http://{host}:{int(raw)}/stats/prometheus")


def _authorize_proxy(request: web.Request, proxy_id: str, kind: str) -> None:
    """A sidecar's credential covers its own proxy id only (403 otherwise)."""
    caller = caller_of(request)
    registry = _components(request).registry
    if caller is None or not may_act_as(caller, proxy_id, registry.service_account_of(proxy_id, kind)):
        who = caller.identity if caller is not None else "an anonymous caller"
        raise web.HTTPForbidden(text=f"{who} may not act as proxy {proxy_id!r} ({kind}): a sidecar's "
                                "credential covers only its own identity's proxies")


async def xds_ack(request: web.Request) -> web.Response:
    push = _components(request).push
    body = await _json_body(request)
    proxy_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(proxy_id, str):
        known = push.proxy(proxy_id)
        _authorize_proxy(request, proxy_id, known.kind if known is not None else "sidecar")
    proxy = await push.respond(body)
    return web.json_response({"id": proxy.id, "status": proxy.status, "latest": proxy.latest_version})


# -- certificate authority --------------------------------------------------------------------------


def _signer(request: web.Request) -> Signer:
    signer = _components(request).signer
    if signer is None:
        raise NotFoundError([Message(codes.MK0940, Severity.ERROR, "ca", "",
                                     "this control plane runs without a certificate authority")])
    return signer


async def ca_sign(request: web.Request) -> web.Response:
    signer = _signer(request)
    body = await _json_body(request)
    try:
        result = await signer.sign(body)
    except Exception as error:
        status = getattr(error, "status", None)
        if not isinstance(status, int) or not 400 <= status < 500:
            raise
        return error_response(status, str(error))
    return web.json_response(result.to_dict())


async def ca_root(request: web.Request) -> web.Response:
    return web.json_response({"root": _signer(request).root_pem})


# -- the application --------------------------------------------------------------------------------


async def _stop_worker(app: web.Application) -> None:
    app[COMPONENTS].preparation.close()


def create_app(components: Components, authenticator: Authenticator, *,
               max_body: int = MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application serving the API over ``components``; ``authenticator`` checks every call."""
    app = web.Application(middlewares=[make_guard(authenticator), json_errors], client_max_size=max_body)
    app[COMPONENTS] = components
    app[WRITES] = asyncio.Lock()
    app[BODY_LIMIT] = max_body
    app.on_cleanup.append(_stop_worker)
    app.router.add_get(f"{API}/healthz", healthz)
    app.router.add_post(f"{API}/apply", apply)
    app.router.add_get(f"{API}/config", get_config)
    app.router.add_get(f"{API}/config/{{kind}}", get_config)
    app.router.add_get(f"{API}/config/{{kind}}/{{namespace}}/{{name}}", get_config)
    app.router.add_delete(f"{API}/config/{{kind}}/{{namespace}}/{{name}}", delete_named)
    app.router.add_post(f"{API}/delete", delete_body)
    app.router.add_post(f"{API}/analyze", analyze)
    app.router.add_get(f"{API}/history", history)
    app.router.add_get(f"{API}/history/{{number}}", history_entry)
    app.router.add_post(f"{API}/rollback", rollback)
    app.router.add_get(f"{API}/registry", get_registry)
    app.router.add_get(f"{API}/registry/services", get_services)
    app.router.add_post(f"{API}/registry/services", post_service)
    app.router.add_delete(f"{API}/registry/services/{{namespace}}/{{name}}", delete_service)
    app.router.add_get(f"{API}/registry/endpoints", get_endpoints)
    app.router.add_post(f"{API}/registry/endpoints", post_endpoint)
    app.router.add_delete(f"{API}/registry/endpoints/{{namespace}}/{{instance}}", delete_endpoint)
    app.router.add_put(f"{API}/registry/endpoints/{{namespace}}/{{instance}}/health", put_health)
    app.router.add_get(f"{API}/registry/external", get_external)
    app.router.add_put(f"{API}/registry/external", put_external)
    app.router.add_get(f"{API}/proxy-status", proxy_status)
    app.router.add_get(f"{API}/xds/stream", xds_stream)
    app.router.add_post(f"{API}/xds/ack", xds_ack)
    app.router.add_post(f"{API}/ca/sign", ca_sign)
    app.router.add_get(f"{API}/ca/root", ca_root)
    return app
