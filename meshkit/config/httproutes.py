"""Gateway API HTTPRoutes -> the VirtualService routes `compile` already knows, and their ``status``.

Istio implements HTTPRoute by converting it into internal VirtualServices (one per host, the rules
of every route attached to that host merged and sorted by Gateway API's precedence); meshkit does
the same, so there is one router: `compile_routes`' ``_route`` turns both into snapshot routes.

* A route whose ``parentRefs`` name a Service (GAMMA) becomes a mesh VirtualService for that
  Service's host. Its internal VirtualService is ordered before the user's VirtualServices of the
  same namespace, so when both target a host the HTTPRoute wins.
* A route whose parents name a ServiceEntry (group networking.istio.io) becomes a mesh VirtualService
  for the ServiceEntry's hosts (Istio's egress routing with Gateway API: sidecars send the host to
  an egress gateway).
* A route whose parent is a Gateway API ``Gateway`` of class ``istio`` becomes, per host (its
  ``hostnames`` narrowed by the listeners' ``hostname``), an internal VirtualService that the local
  mesh's one ingress gateway serves (`ingress_virtual_services`), winning a host an Istio
  Gateway + VirtualService also bind; a Gateway with its own proxy (`KubeGateway.deployed`) is
  served by that proxy instead (`gateway_virtual_services`, bound by `gateway_deployments`).
* A ``backendRef`` of kind Hostname is the external host as written. Otherwise it is a Service:
  ``reviews`` or a per-version Service such as ``reviews-v1``
  (``app: reviews, version: v1`` in Istio's ``bookinfo-versions.yaml``). A Service manifest that the
  registry does not hold (it backs no workload of its own) becomes a cluster of the registered
  endpoints its selector selects (`selector_clusters`).
* ``status`` (`route_status`) follows Gateway API: per parent, ``Accepted`` and ``ResolvedRefs``
  with their reasons, computed from the config and the registry as a controller would; a Gateway's
  ``Accepted``/``Programmed``, its ``addresses`` (the ingress's ``127.0.0.1``, or the Service of
  its own proxy) and its listeners' ``attachedRoutes``.

Pure functions of resources + registry: no sockets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from meshkit.config.egress import ServiceEntry
from meshkit.config.gateway_api import (
    GROUP,
    ISTIO_CONTROLLER,
    GatewayClass,
    HTTPBackendRef,
    HTTPHeaderFilter,
    HTTPRequestRedirectFilter,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    HTTPURLRewriteFilter,
    KubeGateway,
    KubeTLSRoute,
    Listener,
    ParentReference,
    TLSRouteRule,
)
from meshkit.config.gateways import intersect_hosts
from meshkit.config.registry import Endpoint, RegistryView
from meshkit.config.registry import Service as RegistryService
from meshkit.config.resources import (
    PREFIX_MARK,
    Destination,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRouteDestination,
    ObjectMeta,
    Percent,
    PortSelector,
    RegexRewrite,
    Resource,
    StringMatch,
    VirtualService,
    VirtualServiceSpec,
)
from meshkit.config.resources import HTTPRoute as VSRoute
from meshkit.config.secrets import find_secret
from meshkit.config.selection import exported_to
from meshkit.config.workloads import Service as ServiceManifest
from meshkit.config.workloads import selects

GATEWAY_CLASS = "istio"
DEFAULT_ATTEMPTS = 2


def _fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def http_routes(resources: Sequence[Resource]) -> list[HTTPRoute]:
    return sorted((r for r in resources if isinstance(r, HTTPRoute)), key=lambda r: r.key)


# ---------------------------------------------------------------------------------------------
# HTTPRoute -> VirtualService
# ---------------------------------------------------------------------------------------------


def _match(match: HTTPRouteMatch) -> HTTPMatchRequest:
    uri = None
    path = match.path
    if path is not None:
        kind = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}[path.type]
        # Istio's conversion trims a PathPrefix's trailing slash: "/api/" matches "/api" too
        value = (path.value.rstrip("/") or "/") if path.type == "PathPrefix" else path.value
        uri = StringMatch(**{kind: value})
    else:
        uri = StringMatch(prefix="/")

    def strings(items: Sequence[Any] | None) -> dict[str, StringMatch] | None:
        if not items:
            return None
        return {item.name: StringMatch(**{"exact" if item.type == "Exact" else "regex": item.value})
                for item in items}

    return HTTPMatchRequest(
        uri=uri,
        method=StringMatch(exact=match.method) if match.method else None,
        headers=strings(match.headers),
        query_params=strings(match.query_params),
    )


def _header_ops(spec: HTTPHeaderFilter | None) -> HeaderOperations | None:
    if spec is None:
        return None
    return HeaderOperations(
        set={h.name: h.value for h in spec.set} if spec.set else None,
        add={h.name: h.value for h in spec.add} if spec.add else None,
        remove=list(spec.remove) if spec.remove else None,
    )


def _destination(ref: HTTPBackendRef | Any, namespace: str) -> Destination:
    ns = ref.namespace or namespace
    # a Hostname backend (networking.istio.io) is the external host as written: its ServiceEntry's cluster
    host = ref.name if getattr(ref, "kind", "Service") == "Hostname" else _fqdn(ref.name, ns)
    return Destination(host=host,
                       port=PortSelector(number=ref.port) if ref.port is not None else None)


def _rewrite(spec: HTTPURLRewriteFilter) -> HTTPRewrite:
    """Istio's conversion: ReplacePrefixMatch -> ``uri`` (the matched prefix replaced), ReplaceFullPath ->
    ``uriRegexRewrite`` of the whole path, ``hostname`` -> ``authority``."""
    path = spec.path
    if path is not None and path.type == "ReplaceFullPath":
        full = RegexRewrite(match="/.*", rewrite=path.replace_full_path or "/")
        return HTTPRewrite(uri_regex_rewrite=full, authority=spec.hostname)
    return HTTPRewrite(uri=path.replace_prefix_match if path is not None else None, authority=spec.hostname)


def _redirect(spec: HTTPRequestRedirectFilter) -> HTTPRedirect:
    """Istio's conversion: no port -> the scheme's default port when a scheme is given, else the
    request's port; ReplacePrefixMatch -> ``%PREFIX()%`` (the matched prefix replaced)."""
    uri = None
    if spec.path is not None:
        uri = (spec.path.replace_full_path if spec.path.type == "ReplaceFullPath"
               else f"{PREFIX_MARK}{spec.path.replace_prefix_match}")
    derive = None
    if spec.port is None:
        derive = "FROM_PROTOCOL_DEFAULT" if spec.scheme else "FROM_REQUEST_PORT"
    # built unchecked: a user's VirtualService may not write %PREFIX()% (Istio: a literal path there)
    return HTTPRedirect.model_construct(uri=uri, authority=spec.hostname, port=spec.port, derive_port=derive,
                                        scheme=spec.scheme, redirect_code=spec.status_code)


def _vs_route(route: HTTPRoute, index: int, rule: HTTPRouteRule) -> VSRoute:
    namespace = route.metadata.namespace
    # Istio's name of a converted rule: <namespace>.<route>.<index> (Envoy's %ROUTE_NAME%)
    fields: dict[str, Any] = {"name": rule.name or f"{namespace}.{route.metadata.name}.{index}"}
    if rule.matches:
        fields["match"] = [_match(m) for m in rule.matches]
    backends = [b for b in rule.backend_refs or [] if b.weight > 0] or list(rule.backend_refs or [])
    redirect = next((f.request_redirect for f in rule.filters or [] if f.request_redirect is not None), None)
    if redirect is None:  # with one, the proxy answers: the backends are never called
        fields["route"] = [HTTPRouteDestination(destination=_destination(b, namespace), weight=b.weight)
                           for b in backends]
    request = response = None
    for item in rule.filters or []:
        if item.type == "RequestHeaderModifier":
            request = _header_ops(item.request_header_modifier)
        elif item.type == "ResponseHeaderModifier":
            response = _header_ops(item.response_header_modifier)
        elif item.type == "RequestMirror" and item.request_mirror is not None:
            mirror = item.request_mirror
            fields["mirror"] = _destination(mirror.backend_ref, namespace)
            if mirror.percent is not None:
                fields["mirror_percentage"] = Percent(value=float(mirror.percent))
        elif item.type == "URLRewrite" and item.url_rewrite is not None:
            fields["rewrite"] = _rewrite(item.url_rewrite)
    if request is not None or response is not None:
        fields["headers"] = Headers(request=request, response=response)
    timeouts = rule.timeouts
    if timeouts is not None:
        # Istio's conversion: request -> the route timeout; backendRequest -> the per-try timeout
        # (and the route timeout when request is unset)
        if timeouts.request is not None:
            fields["timeout"] = timeouts.request
        if timeouts.backend_request is not None:
            fields["retries"] = HTTPRetry(attempts=DEFAULT_ATTEMPTS, per_try_timeout=timeouts.backend_request)
            fields.setdefault("timeout", timeouts.backend_request)
    converted = VSRoute(**fields)
    if redirect is not None:  # added unchecked: %PREFIX()% is refused in a user's VirtualService
        converted = converted.model_copy(update={"redirect": _redirect(redirect)})
    return converted


def _precedence(entry: tuple[HTTPRoute, int, HTTPRouteRule, HTTPRouteMatch | None]) -> tuple[Any, ...]:
    """Gateway API's order between rules of the routes of one host: Exact path, the longest prefix,
    a method, the most headers, the most query params; then the oldest route (by name here)."""
    route, index, _, match = entry
    path = match.path if match and match.path else None
    path_type = path.type if path else "PathPrefix"
    value = path.value if path else "/"
    return ({"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}[path_type], -len(value),
            0 if match and match.method else 1, -len(match.headers or []) if match else 0,
            -len(match.query_params or []) if match else 0, route.key, index)


def service_entry_of(parent: ParentReference, namespace: str,
                     resources: Sequence[Resource]) -> ServiceEntry | None:
    """The ServiceEntry a parentRef of kind ServiceEntry names, if it exists."""
    if not parent.is_service_entry:
        return None
    ns = parent.namespace or namespace
    return next((e for e in resources if isinstance(e, ServiceEntry)
                 and (e.metadata.namespace, e.metadata.name) == (ns, parent.name)), None)


def mesh_virtual_services(resources: Sequence[Resource], registry: RegistryView) -> list[VirtualService]:
    """The internal VirtualServices of the HTTPRoutes attached to Services (one per Service) and to
    ServiceEntries (one per ServiceEntry, for its hosts: Istio's egress routing with Gateway API)."""
    by_host: dict[tuple[str, str, str], list[tuple[HTTPRoute, int, HTTPRouteRule, HTTPRouteMatch | None]]]
    by_host = defaultdict(list)
    entries: dict[tuple[str, str], ServiceEntry] = {}
    for route in http_routes(resources):
        for parent in route.spec.parent_refs:
            ns = parent.namespace or route.metadata.namespace
            entry = service_entry_of(parent, route.metadata.namespace, resources)
            if entry is not None:
                entries[(ns, parent.name)] = entry
                key = ("ServiceEntry", ns, parent.name)
            elif parent.is_service and service_exists(parent.name, ns, resources, registry):
                key = ("Service", ns, parent.name)
            else:
                continue  # not Accepted (status says so); analyze names it
            for index, rule in enumerate(route.spec.rules or []):
                matches: list[HTTPRouteMatch | None] = list(rule.matches or []) or [None]
                for match in matches:
                    by_host[key].append((route, index, rule, match))
    return [_internal(found, [h.strip().lower() for h in entries[(ns, name)].spec.hosts]
                      if kind == "ServiceEntry" else [_fqdn(name, ns)], ns)
            for (kind, ns, name), found in sorted(by_host.items(), key=lambda item: item[0][1:])]


def gateway_of(parent: ParentReference, namespace: str, resources: Sequence[Resource]) -> KubeGateway | None:
    """The Gateway API Gateway a parentRef names (kind Gateway, the default), if it exists."""
    if parent.kind not in (None, "Gateway") or (parent.group or GROUP) != GROUP:
        return None
    ns = parent.namespace or namespace
    return next((g for g in resources if isinstance(g, KubeGateway)
                 and (g.metadata.namespace, g.metadata.name) == (ns, parent.name)), None)


def listener_hosts(gateway: KubeGateway, route: HTTPRoute | KubeTLSRoute, section: str | None) -> list[str]:
    """The hosts a route serves on ``gateway``: its hostnames narrowed by the listeners' hostname."""
    hosts: list[str] = []
    for listener in gateway.spec.listeners:
        if section is not None and listener.name != section:
            continue
        for wanted in route.spec.hostnames or ["*"]:
            host = intersect_hosts(listener.hostname or "*", wanted.lower())
            if host is not None and host not in hosts:
                hosts.append(host)
    return hosts


def https_listeners(resources: Sequence[Resource]) -> list[tuple[KubeGateway, int, Listener]]:
    """(gateway, index, listener) of every HTTPS listener with a Secret of a Gateway of class ``istio``
    (an ISTIO_MUTUAL listener has none: `gateway_deployments.internal_gateway`)."""
    return [(gateway, index, listener)
            for gateway in sorted((r for r in resources if isinstance(r, KubeGateway)), key=lambda g: g.key)
            if gateway.spec.gateway_class_name == GATEWAY_CLASS
            for index, listener in enumerate(gateway.spec.listeners) if listener.protocol == "HTTPS"
            and not (listener.tls is not None and listener.tls.istio_mutual)]


def listener_secret(gateway: KubeGateway, listener: Listener) -> tuple[str, str]:
    """(namespace, name) of the TLS Secret an HTTPS listener's first certificateRef names."""
    assert listener.tls is not None and listener.tls.certificate_refs  # the model requires it for HTTPS
    ref = listener.tls.certificate_refs[0]
    return ref.namespace or gateway.metadata.namespace, ref.name


def listener_tls_servers(resources: Sequence[Resource],
                         find_secret: Callable[[str, Sequence[str]], tuple[str, str] | None],
                         ) -> list[dict[str, object]]:
    """The HTTPS listeners the ingress serves, as snapshot ``gateway_tls.servers`` entries (the same
    shape as an Istio Gateway's HTTPS servers: `meshkit.config.gateways.tls_servers`); a listener whose
    Secret is missing is left out (status ``ResolvedRefs`` False, the analyzer reports it)."""
    servers: list[dict[str, object]] = []
    for gateway, index, listener in https_listeners(resources):
        namespace, name = listener_secret(gateway, listener)
        pair = find_secret(name, [namespace])
        if pair is None:
            continue
        servers.append({"gateway": f"{gateway.metadata.namespace}/{gateway.metadata.name}", "server": index,
                        "port": listener.port, "hosts": [(listener.hostname or "*").lower()],
                        "credential": name, "cert_pem": pair[0], "key_pem": pair[1]})
    return servers


def ingress_virtual_services(resources: Sequence[Resource]) -> list[tuple[str, VirtualService]]:
    """(host, internal VirtualService) for every host that HTTPRoutes attached to a Gateway API Gateway of
    class ``istio`` without a proxy of its own serve; the local mesh's one ingress gateway serves them (as
    Istio's Gateway)."""
    return gateway_virtual_services(resources, None)


def gateway_virtual_services(resources: Sequence[Resource],
                             deployed: KubeGateway | None) -> list[tuple[str, VirtualService]]:
    """(host, internal VirtualService) of the HTTPRoutes attached to the Gateway ``deployed`` (one with its
    own proxy), or with None to the Gateways the ingress serves."""
    by_host: dict[str, list[tuple[HTTPRoute, int, HTTPRouteRule, HTTPRouteMatch | None]]] = defaultdict(list)
    for route in http_routes(resources):
        for parent in route.spec.parent_refs:
            gateway = gateway_of(parent, route.metadata.namespace, resources)
            if gateway is None or gateway.spec.gateway_class_name != GATEWAY_CLASS:
                continue
            if (gateway.key != deployed.key) if deployed is not None else gateway.deployed:
                continue
            for host in listener_hosts(gateway, route, parent.section_name):
                for index, rule in enumerate(route.spec.rules or []):
                    matches: list[HTTPRouteMatch | None] = list(rule.matches or []) or [None]
                    by_host[host].extend((route, index, rule, match) for match in matches)
    return [(host, _internal(entries, [host], entries[0][0].metadata.namespace))
            for host, entries in sorted(by_host.items())]


def from_http_route(vs: VirtualService) -> bool:
    """Whether ``vs`` is an HTTPRoute's internal VirtualService (Istio's "gateway semantics": whole-segment
    PathPrefix, ``%PREFIX()%`` redirects)."""
    return vs.api_version.startswith(f"{GROUP}/")


def _internal(entries: list[tuple[HTTPRoute, int, HTTPRouteRule, HTTPRouteMatch | None]], hosts: list[str],
              namespace: str) -> VirtualService:
    routes = []
    for route, index, rule, match in sorted(entries, key=_precedence):
        single = rule.model_copy(update={"matches": [match] if match is not None else None})
        routes.append(_vs_route(route, index, single))
    owner = min((e[0] for e in entries), key=lambda r: r.key)
    # kind HTTPRoute: the snapshot's route sources name the HTTPRoute, and the internal
    # VirtualService sorts before the user's VirtualServices of the namespace (HTTPRoute wins)
    return VirtualService.model_construct(
        api_version="gateway.networking.k8s.io/v1", kind="HTTPRoute",
        metadata=ObjectMeta(name=owner.metadata.name, namespace=namespace),
        spec=VirtualServiceSpec(hosts=hosts, http=routes))


# ---------------------------------------------------------------------------------------------
# per-version Services
# ---------------------------------------------------------------------------------------------


def _service_manifests(resources: Sequence[Resource]) -> dict[tuple[str, str], ServiceManifest]:
    return {(r.metadata.namespace, r.metadata.name): r for r in resources if isinstance(r, ServiceManifest)}


def selector_services(
    resources: Sequence[Resource], registry: RegistryView
) -> Iterator[tuple[RegistryService, list[Endpoint]]]:
    """Service manifests the registry does not hold, with the registered endpoints they select
    (``reviews-v1`` -> the reviews endpoints labelled version v1), sorted by (namespace, name)."""
    for (ns, name), manifest in sorted(_service_manifests(resources).items()):
        if registry.service(name, ns) is not None:
            continue
        selected = [e for e in registry.endpoints
                    if e.namespace == ns and selects(manifest.spec.selector, e.labels)]
        yield RegistryService(name=name, namespace=ns, port=manifest.spec.ports[0].port), selected


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

INGRESS_ADDRESS = "127.0.0.1"  # the ingress Service's load balancer address (runtime.launch.ingress_service)



def _condition(kind: str, ok: bool, reason: str, message: str, generation: int = 1) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def service_exists(name: str, namespace: str, resources: Sequence[Resource], registry: RegistryView) -> bool:
    """A registered Service, a Service manifest, or the Service ``<name>-istio`` of a Gateway with its own
    proxy (Istio's gateway controller creates it with the Gateway)."""
    return (registry.service(name, namespace) is not None
            or (namespace, name) in _service_manifests(resources)
            or any(isinstance(g, KubeGateway) and g.deployed and g.metadata.namespace == namespace
                   and g.deployment_name == name for g in resources))


def hostname_declared(host: str, namespace: str, resources: Sequence[Resource]) -> bool:
    """Whether a ServiceEntry visible from ``namespace`` declares ``host`` (a Hostname backend's target)."""
    return any(isinstance(e, ServiceEntry) and exported_to(e.metadata.namespace, e.spec.export_to, namespace)
               and host.lower() in {h.strip().lower() for h in e.spec.hosts} for e in resources)


def _parent_found(parent: ParentReference, namespace: str, resources: Sequence[Resource],
                  registry: RegistryView,
                  route: HTTPRoute | KubeTLSRoute | None = None) -> tuple[bool, str, str]:
    ns = parent.namespace or namespace
    if parent.is_service:
        if service_exists(parent.name, ns, resources, registry):
            return True, "Accepted", "Route was valid"
        return False, "NoMatchingParent", f"parent Service {ns}/{parent.name} does not exist"
    if parent.is_service_entry:
        if service_entry_of(parent, namespace, resources) is not None:
            return True, "Accepted", "Route was valid"
        return False, "NoMatchingParent", f"parent ServiceEntry {ns}/{parent.name} does not exist"
    gateway = gateway_of(parent, namespace, resources)
    if gateway is None:
        kind = parent.kind or "Gateway"
        return False, "NoMatchingParent", f"parent {kind} {ns}/{parent.name} does not exist"
    if gateway.spec.gateway_class_name != GATEWAY_CLASS:
        return False, "NoMatchingParent", (f"Gateway {ns}/{parent.name} has class "
                                           f"{gateway.spec.gateway_class_name}, not {GATEWAY_CLASS}")
    if parent.section_name is not None and parent.section_name not in {
            listener.name for listener in gateway.spec.listeners}:
        return False, "NoMatchingParent", f"Gateway {ns}/{parent.name} has no listener {parent.section_name}"
    if route is not None and not listener_hosts(gateway, route, parent.section_name):
        wanted = ", ".join(route.spec.hostnames or ["*"])
        return False, "NoMatchingListenerHostname", (f"no listener of Gateway {ns}/{parent.name} accepts the "
                                                     f"route's hostnames ({wanted})")
    return True, "Accepted", "Route was valid"


def missing_backends(route: HTTPRoute | KubeTLSRoute, resources: Sequence[Resource],
                     registry: RegistryView) -> list[tuple[str, str]]:
    """(field path, namespace/name) of every backendRef and mirror backend naming no Service (a Hostname
    backend: ``Hostname/<host>`` when no ServiceEntry declares the host)."""
    ns = route.metadata.namespace
    out = []
    rules: Sequence[HTTPRouteRule | TLSRouteRule] = route.spec.rules or []
    for i, rule in enumerate(rules):
        for j, ref in enumerate(rule.backend_refs or []):
            if ref.is_hostname:
                if not hostname_declared(ref.name, ns, resources):
                    out.append((f"spec.rules[{i}].backendRefs[{j}].name", f"Hostname/{ref.name}"))
            elif not service_exists(ref.name, ref.namespace or ns, resources, registry):
                out.append((f"spec.rules[{i}].backendRefs[{j}].name", f"{ref.namespace or ns}/{ref.name}"))
        for j, item in enumerate(getattr(rule, "filters", None) or []):
            if item.request_mirror is None:
                continue
            target = item.request_mirror.backend_ref
            if not service_exists(target.name, target.namespace or ns, resources, registry):
                out.append((f"spec.rules[{i}].filters[{j}].requestMirror.backendRef.name",
                            f"{target.namespace or ns}/{target.name}"))
    return out


def route_status(route: HTTPRoute | KubeTLSRoute, resources: Sequence[Resource],
                 registry: RegistryView) -> dict[str, Any]:
    """The route's ``status`` as Istio's controller writes it: one entry per parentRef."""
    missing = missing_backends(route, resources, registry)
    resolved = (True, "ResolvedRefs", "All references resolved") if not missing else (
        False, "BackendNotFound", "; ".join(f"backend({name}) not found" for _, name in missing))
    parents = []
    for parent in route.spec.parent_refs:
        namespace = route.metadata.namespace
        accepted, reason, message = _parent_found(parent, namespace, resources, registry, route)
        parents.append({
            "parentRef": parent.model_dump(by_alias=True, exclude_none=True),
            "controllerName": ISTIO_CONTROLLER,
            "conditions": [_condition("Accepted", accepted, reason, message),
                           _condition("ResolvedRefs", *resolved)],
        })
    return {"parents": parents}


def gateway_class_status(gateway_class: GatewayClass) -> dict[str, Any]:
    controller = gateway_class.spec.controller_name
    if controller == ISTIO_CONTROLLER:
        condition = _condition("Accepted", True, "Accepted", "Handled by Istio controller")
    else:
        condition = _condition("Accepted", False, "Unsupported", f"controllerName {controller} is not "
                               f"{ISTIO_CONTROLLER}: no controller of this mesh handles it")
    return {"conditions": [condition]}


def gateway_status(gateway: KubeGateway, resources: Sequence[Resource]) -> dict[str, Any]:
    """Accepted and Programmed (served by the local mesh's ingress gateway, or by the Gateway's own proxy),
    and each listener's attached routes."""
    ours = gateway.spec.gateway_class_name == GATEWAY_CLASS
    reason = "Accepted" if ours else "InvalidParameters"
    attached: dict[str, int] = {listener.name: 0 for listener in gateway.spec.listeners}
    kinds = {listener.name: "TLSRoute" if listener.protocol == "TLS" else "HTTPRoute"
             for listener in gateway.spec.listeners}
    routes: list[HTTPRoute | KubeTLSRoute] = [*http_routes(resources),
                                              *(r for r in resources if isinstance(r, KubeTLSRoute))]
    for route in routes:
        for parent in route.spec.parent_refs:
            if gateway_of(parent, route.metadata.namespace, resources) is gateway:
                for name in attached:  # attached: the listener accepts one of the route's hostnames
                    if (parent.section_name in (None, name) and kinds[name] == route.kind
                            and listener_hosts(gateway, route, name)):
                        attached[name] += 1
    served_by = (f"served by its own gateway proxy ({gateway.deployment_name})" if gateway.deployed
                 else "served by the local mesh's ingress gateway (istio-ingressgateway)")
    status: dict[str, Any] = {}
    if ours:  # where clients reach it: the ingress's load balancer address, or the proxy's Service name
        status["addresses"] = ([{"type": "Hostname", "value": f"{gateway.deployment_name}."
                                 f"{gateway.metadata.namespace}.svc.cluster.local"}] if gateway.deployed
                               else [{"type": "IPAddress", "value": INGRESS_ADDRESS}])
    return status | {
        "conditions": [
            _condition("Accepted", ours, reason, "Resource accepted" if ours else
                       f"gatewayClassName {gateway.spec.gateway_class_name} is not {GATEWAY_CLASS}"),
            _condition("Programmed", ours, "Programmed" if ours else "Invalid",
                       served_by if ours else "no gateway proxy serves it"),
        ],
        "listeners": [{"name": listener.name, "attachedRoutes": attached[listener.name],
                       "supportedKinds": [{"group": GROUP, "kind": kinds[listener.name]}],
                       "conditions": _listener_conditions(
                           ours, _missing_secret(gateway, listener, resources))}
                      for listener in gateway.spec.listeners],
    }


def _missing_secret(gateway: KubeGateway, listener: Listener, resources: Sequence[Resource]) -> str | None:
    """``namespace/name`` of the TLS Secret an HTTPS listener names when it does not exist, else None."""
    if listener.protocol != "HTTPS":
        return None
    namespace, name = listener_secret(gateway, listener)
    return None if find_secret(resources, name, [namespace]) is not None else f"{namespace}/{name}"


def _listener_conditions(ours: bool, missing_secret: str | None = None) -> list[dict[str, Any]]:
    """A listener's conditions as Gateway API defines them (no conflicts between listeners of one
    Gateway: the ingress serves each protocol on one listener); an HTTPS listener whose Secret does
    not exist is not programmed (ResolvedRefs False, InvalidCertificateRef)."""
    if not ours:
        return [_condition("Accepted", False, "Pending", "the Gateway's class is not served"),
                _condition("Programmed", False, "Pending", "no gateway proxy serves it")]
    if missing_secret is not None:
        text = f"Secret {missing_secret} does not exist"
        return [_condition("Accepted", True, "Accepted", "No errors found"),
                _condition("Programmed", False, "Invalid", text),
                _condition("ResolvedRefs", False, "InvalidCertificateRef", text),
                _condition("Conflicted", False, "NoConflicts", "No conflicts found")]
    return [_condition("Accepted", True, "Accepted", "No errors found"),
            _condition("Programmed", True, "Programmed", "No errors found"),
            _condition("ResolvedRefs", True, "ResolvedRefs", "No errors found"),
            _condition("Conflicted", False, "NoConflicts", "No conflicts found")]


def with_status(resource: Resource, resources: Sequence[Resource], registry: RegistryView) -> dict[str, Any]:
    """``resource.to_dict()`` plus its computed ``status`` for the Gateway API kinds."""
    doc = resource.to_dict()
    if isinstance(resource, HTTPRoute | KubeTLSRoute):
        doc["status"] = route_status(resource, resources, registry)
    elif isinstance(resource, GatewayClass):
        doc["status"] = gateway_class_status(resource)
    elif isinstance(resource, KubeGateway):
        doc["status"] = gateway_status(resource, resources)
    return doc

