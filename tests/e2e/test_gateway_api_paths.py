"""Gateway API path semantics and redirects on the real local mesh, through real sidecars and the ingress.

* ``PathPrefix`` matches whole path segments (Gateway API): ``/anything/api`` takes ``/anything/api``,
  ``/anything/api/`` and ``/anything/api/x`` but not ``/anything/apix``; a VirtualService's ``prefix``
  keeps Istio's string semantics and takes ``/anything/apix`` too.
* ``RequestRedirect`` (and a VirtualService's ``redirect``) is answered by the sidecar or the ingress
  gateway itself with the status code and a ``Location``, as Envoy does; nothing reaches the app.
* ``URLRewrite`` (``ReplaceFullPath``, ``ReplacePrefixMatch``, ``hostname``) changes what the app receives.

Evidence is what the callers get back (status, ``Location``, the pod that answered) and the app's
inbound request count on its sidecar.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.mesh import RunningMesh, start_mesh
from tests.e2e.traffic import Reply, eventually, get_many, istio_requests, pods

PER_VERSION_SERVICES = """
apiVersion: v1
kind: Service
metadata:
  name: httpbin-v1
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: httpbin
    version: v1
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin-v2
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: httpbin
    version: v2
"""
SEGMENT_ROUTE = PER_VERSION_SERVICES + """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: httpbin
    port: 8000
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /anything/api/
    backendRefs:
    - name: httpbin-v2
      port: 80
  - backendRefs:
    - name: httpbin-v1
      port: 80
"""
STRING_PREFIX_VS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin]
  http:
  - match:
    - uri: {prefix: /anything/api}
    route:
    - destination: {host: httpbin, subset: v2}
  - route:
    - destination: {host: httpbin, subset: v1}
"""
MESH_REDIRECTS = PER_VERSION_SERVICES + """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: httpbin
    port: 8000
  rules:
  - matches:
    - path: {type: PathPrefix, value: /old}
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /anything/new}
        statusCode: 301
  - matches:
    - path: {type: Exact, value: /login}
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: login.example.com
  - backendRefs:
    - name: httpbin-v1
      port: 80
"""
URL_REWRITE = PER_VERSION_SERVICES + """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: httpbin
    port: 8000
  rules:
  - matches:
    - path: {type: PathPrefix, value: /full}
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example
        path: {type: ReplaceFullPath, replaceFullPath: /anything/replaced}
    backendRefs:
    - name: httpbin-v1
      port: 80
  - matches:
    - path: {type: PathPrefix, value: /prefix/}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /anything/}
    backendRefs:
    - name: httpbin-v1
      port: 80
"""
VS_REDIRECT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin]
  http:
  - match:
    - uri: {prefix: /v1/api}
    redirect:
      uri: /anything/v2/api
      authority: newhttpbin:8000
      redirectCode: 308
  - route:
    - destination: {host: httpbin}
"""
INGRESS = PER_VERSION_SERVICES + """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    hostname: "httpbin.example.com"
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin-ingress
spec:
  parentRefs:
  - name: httpbin-gateway
  hostnames: ["httpbin.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /secure}
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
  - matches:
    - path: {type: PathPrefix, value: /anything}
    backendRefs:
    - name: httpbin-v1
      port: 80
"""


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


async def fetch(url: str, *, proxy: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """One GET that does not follow redirects (a browser would; the test looks at the redirect)."""
    timeout = aiohttp.ClientTimeout(total=30)
    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, proxy=proxy, headers=headers, allow_redirects=False) as resp:
        body = await resp.text()
        return Reply(resp.status, body, dict(resp.headers), time.monotonic() - began)


@pytest.fixture(scope="module")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with start_mesh(tmp_path_factory.mktemp("httpbin-gwapi-paths"), ["httpbin", "clients"]) as mesh:
        yield mesh


async def served_by(mesh: RunningMesh, path: str, count: int = 4) -> set[str | None]:
    sleep = mesh.workload("sleep-v1-0")
    replies = await get_many(f"http://httpbin:8000{path}", count, proxy=sleep["outbound_proxy"])
    assert {r.status for r in replies} == {200}, [(r.status, r.body[:200]) for r in replies]
    return set(pods(replies))


async def test_path_prefix_matches_segments_and_a_virtual_service_prefix_strings(
        httpbin: RunningMesh) -> None:
    with httpbin.rules(*docs(SEGMENT_ROUTE)):
        segments = {path: await served_by(httpbin, path)
                    for path in ("/anything/api", "/anything/api/", "/anything/api/x", "/anything/apix",
                                 "/anything/api?x=1", "/anything")}
    with httpbin.rules(*docs(STRING_PREFIX_VS)):
        strings = {path: await served_by(httpbin, path) for path in ("/anything/api/x", "/anything/apix")}
    v1, v2 = {"httpbin-v1-0"}, {"httpbin-v2-0"}
    assert segments == {"/anything/api": v2, "/anything/api/": v2, "/anything/api/x": v2,
                        "/anything/apix": v1, "/anything/api?x=1": v2, "/anything": v1}
    assert strings == {"/anything/api/x": v2, "/anything/apix": v2}


async def test_request_redirect_and_a_virtual_service_redirect_are_answered_by_the_sidecar(
        httpbin: RunningMesh) -> None:
    sleep = httpbin.workload("sleep-v1-0")
    proxy = sleep["outbound_proxy"]
    v1 = httpbin.workload("httpbin-v1-0")
    inbound = {"reporter": "destination", "destination_service_name": "httpbin"}
    with httpbin.rules(*docs(MESH_REDIRECTS)):
        before = istio_requests(v1["admin_port"], **inbound)
        prefix = await fetch("http://httpbin:8000/old/page?a=1", proxy=proxy)
        whole = await fetch("http://httpbin:8000/old", proxy=proxy)
        not_segment = await fetch("http://httpbin:8000/oldish", proxy=proxy)  # /old is a segment prefix
        login = await fetch("http://httpbin:8000/login", proxy=proxy)
        # following the redirect lands on the app (what a browser would do next)
        followed = await get_many("http://httpbin:8000/old/page", 1, proxy=proxy)
        reached = await eventually(lambda: istio_requests(v1["admin_port"], **inbound) - before,
                                   lambda n: n >= 2)
    with httpbin.rules(*docs(VS_REDIRECT)):
        vs = await fetch("http://httpbin:8000/v1/api/items", proxy=proxy)
        vs_other = await fetch("http://httpbin:8000/v1/apix", proxy=proxy)  # a VS prefix: a string
    assert prefix.status == 301
    assert prefix.headers.get("Location") == "http://httpbin:8000/anything/new/page?a=1"
    assert prefix.body == "" and prefix.headers.get("Content-Length") == "0"
    assert (whole.status, whole.headers.get("Location")) == (301, "http://httpbin:8000/anything/new")
    assert not_segment.status == 404 and not_segment.headers.get("Location") is None  # httpbin-v1's 404
    # Gateway API's default code is 302; a scheme without a port: the scheme's default, not written
    assert (login.status, login.headers.get("Location")) == (302, "https://login.example.com/login")
    # only /oldish and the followed /anything/new/page reached httpbin: redirects are the sidecar's
    assert reached == 2
    assert [r.status for r in followed] == [200] and pods(followed) == {"httpbin-v1-0": 1}
    assert followed[0].json()["path"] == "/anything/new/page"
    assert (vs.status, vs.headers.get("Location")) == (308, "http://newhttpbin:8000/anything/v2/api")
    assert vs_other.status == 308
    assert vs_other.headers.get("Location") == "http://newhttpbin:8000/anything/v2/api"


async def test_request_redirect_through_the_ingress_gateway(httpbin: RunningMesh) -> None:
    host = {"Host": "httpbin.example.com"}
    with httpbin.rules(*docs(INGRESS)):
        secure = await fetch(f"{httpbin.ingress}/secure/area?q=1", headers=host)
        served = await fetch(f"{httpbin.ingress}/anything/x", headers=host)
        other_host = await fetch(f"{httpbin.ingress}/secure/area", headers={"Host": "other.example.com"})
    assert (secure.status, secure.headers.get("Location")) == (302, "https://httpbin.example.com/secure/area?q=1")
    assert served.status == 200 and served.json()["podname"] == "httpbin-v1-0"
    assert other_host.status == 404


async def test_url_rewrite_full_path_prefix_and_hostname_reach_the_app(httpbin: RunningMesh) -> None:
    proxy = httpbin.workload("sleep-v1-0")["outbound_proxy"]
    with httpbin.rules(*docs(URL_REWRITE)):
        full = await get_many("http://httpbin:8000/full/a/b?q=1", 1, proxy=proxy)
        prefix = await get_many("http://httpbin:8000/prefix/x/y", 1, proxy=proxy)
        bare = await get_many("http://httpbin:8000/prefix", 1, proxy=proxy)
    echoed = [reply.json() for reply in (*full, *prefix, *bare)]
    assert [(e["podname"], e["path"]) for e in echoed] == [
        ("httpbin-v1-0", "/anything/replaced"), ("httpbin-v1-0", "/anything/x/y"),
        ("httpbin-v1-0", "/anything/")]
    assert echoed[0]["args"] == {"q": "1"}
    assert echoed[0]["headers"]["Host"] == "rewritten.example"
    assert echoed[1]["headers"]["Host"] == "httpbin:8000"
