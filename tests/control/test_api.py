"""The REST API over a real socket: status codes, JSON errors, and that a rejected request changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.control.api import MAX_BODY_BYTES
from meshkit.control.ca import TOKENS_FILE, BootstrapTokens
from meshkit.control.server import RunningControlPlane, run_control_plane
from tests.control.resources import (
    BAD_VIRTUAL_SERVICE,
    BOOKINFO_REVIEWS,
    DESTINATION_RULE,
    REFUSED_VIRTUAL_SERVICE,
    SERVICE,
    endpoint,
)

API = "/api/v1"


YAML = {"Content-Type": "application/yaml"}


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    if "data" in kwargs:  # a YAML body, as `meshkit apply` sends it
        kwargs.setdefault("headers", YAML)
    async with session.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_apply_get_delete_round_trip(control_plane: RunningControlPlane,
                                           session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    status, result = await call(session, "POST", f"{base}/apply", data=BOOKINFO_REVIEWS)
    assert status == 200 and result["revision"] == 1 and result["changed"] is True
    assert {r["action"] for r in result["results"]} == {"created"}
    # the DestinationRule's and the route's host are not in the (empty) registry
    assert [w["code"] for w in result["warnings"]] == ["MK0131", "MK0103"]
    status, listed = await call(session, "GET", f"{base}/config")
    assert status == 200 and [i["ref"] for i in listed["items"]] == ["DestinationRule/default/reviews",
                                                                     "VirtualService/default/reviews"]
    status, text = await call(session, "GET", f"{base}/config/vs", params={"format": "yaml"})
    assert status == 200
    [document] = list(yaml.safe_load_all(text))
    assert document["kind"] == "VirtualService"
    # what `get -o yaml` returns applies back unchanged
    status, again = await call(session, "POST", f"{base}/apply", data=text)
    assert (status, again["changed"]) == (200, False)
    status, one = await call(session, "GET", f"{base}/config/destinationrules/default/reviews")
    assert status == 200 and one["items"][0]["resource"]["spec"]["host"] == "reviews"
    status, deleted = await call(session, "DELETE", f"{base}/config/dr/default/reviews")
    assert status == 200 and deleted["results"] == [{"resource": "DestinationRule/default/reviews",
                                                     "action": "deleted"}]
    status, deleted = await call(session, "POST", f"{base}/delete", data=BOOKINFO_REVIEWS.split("---\n")[1])
    assert status == 200 and deleted["revision"] == 3
    status, listed = await call(session, "GET", f"{base}/config")
    assert listed["items"] == []


async def test_invalid_input_is_400_with_messages_and_changes_nothing(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    await call(session, "POST", f"{base}/apply", data=BOOKINFO_REVIEWS)
    status, error = await call(session, "POST", f"{base}/apply", data="kind: [unclosed")
    assert status == 400 and error["messages"][0]["code"] == "MK0001"
    assert "YAML syntax error at line" in error["messages"][0]["message"]
    misspelt = DESTINATION_RULE.replace("host:", "hots:")
    status, error = await call(session, "POST", f"{base}/apply", data=misspelt)
    assert status == 400 and any(m["field"].startswith("spec.hots") for m in error["messages"])
    status, error = await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE + "---\n" +
                               REFUSED_VIRTUAL_SERVICE)
    assert status == 400
    assert error["messages"][0] == {
        "code": "MK0102", "severity": "Error", "resource": "VirtualService/default/ratings-refused",
        "field": error["messages"][0]["field"], "message": error["messages"][0]["message"],
        "istio": "IST0106"}  # the matching istioctl analyze code
    assert "sum to 0" in error["error"]
    status, error = await call(session, "POST", f"{base}/apply", data=b"")
    assert status == 400 and "empty" in error["error"]
    status, error = await call(session, "POST", f"{base}/apply", data="---\n# nothing\n---\n")
    assert status == 400 and "holds no resources" in error["error"]
    _, listed = await call(session, "GET", f"{base}/config")
    assert [i["revision"] for i in listed["items"]] == [1, 1]
    _, history = await call(session, "GET", f"{base}/history")
    assert history["revision"] == 1 and len(history["revisions"]) == 1


async def test_a_route_to_an_undefined_subset_is_applied_and_reported(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    """As on Istio: the API server accepts it (a DestinationRule may come later) and `istioctl
    analyze` reports IST0101; requests routed there get 503 NC until the subset exists."""
    base = control_plane.url + API
    status, result = await call(session, "POST", f"{base}/apply", data=BAD_VIRTUAL_SERVICE)
    assert status == 200 and result["changed"], result
    (reported,) = [m for m in result["warnings"] if m["code"] == "MK0101"]
    assert reported["severity"] == "Error" and reported["istio"] == "IST0101"
    assert reported["resource"] == "VirtualService/default/ratings-bad" and "v9" in reported["message"]
    status, stored = await call(session, "GET", f"{base}/config/vs/default/ratings-bad")
    route = stored["items"][0]["resource"]["spec"]["http"][0]["route"][0]
    assert status == 200 and route["destination"]["subset"] == "v9"


async def test_not_found_conflict_and_limits(control_plane: RunningControlPlane,
                                             session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    status, error = await call(session, "GET", f"{base}/config/vs/default/nope")
    assert status == 404 and error["messages"][0]["code"] == "MK0902"
    status, error = await call(session, "DELETE", f"{base}/config/vs/default/nope")
    assert status == 404
    status, error = await call(session, "POST", f"{base}/rollback", json={"revision": 9})
    assert status == 404 and "revision 9 does not exist" in error["error"]
    status, error = await call(session, "POST", f"{base}/rollback", json={"revision": "one"})
    assert status == 400 and error["messages"][0]["field"] == "revision"
    status, error = await call(session, "GET", f"{base}/history/5")
    assert status == 404
    status, error = await call(session, "GET", f"{base}/config/sidecars")
    assert status == 400 and "unknown resource kind 'sidecars'" in error["error"]
    status, error = await call(session, "POST", f"{base}/apply", params={"expect_revision": "3"},
                               data=DESTINATION_RULE)
    assert status == 409 and "expected revision 3" in error["error"]
    status, error = await call(session, "POST", f"{base}/apply", data=b"#" * (MAX_BODY_BYTES + 1))
    assert status == 413 and "too large" in error["error"]
    status, error = await call(session, "GET", f"{base}/no-such-thing")
    assert status == 404 and error["error"].startswith("404")
    status, error = await call(session, "POST", f"{base}/ca/sign", json={})
    assert status == 404 and "without a certificate authority" in error["error"]
    _, history = await call(session, "GET", f"{base}/history")
    assert history["revisions"] == []


async def test_analyze_current_config_and_a_proposed_change(control_plane: RunningControlPlane,
                                                            session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    await call(session, "POST", f"{base}/registry/services", json=SERVICE)
    for version, port in (("v1", 41000), ("v2", 41001)):
        await call(session, "POST", f"{base}/registry/endpoints",
                   json=endpoint(f"reviews-{version}-0", version, port))
    await call(session, "POST", f"{base}/apply", data=BOOKINFO_REVIEWS)
    status, report = await call(session, "POST", f"{base}/analyze")
    assert status == 200 and (report["errors"], report["warnings"]) == (0, 0)
    status, report = await call(session, "POST", f"{base}/analyze", data=BAD_VIRTUAL_SERVICE)
    assert status == 200 and report["errors"] >= 1
    assert report["messages"][0]["resource"] == "VirtualService/default/ratings-bad"
    status, report = await call(session, "POST", f"{base}/analyze", data="kind: [")
    assert status == 200 and report["messages"][0]["code"] == "MK0001"
    _, history = await call(session, "GET", f"{base}/history")
    assert len(history["revisions"]) == 1  # analyzing applies nothing


async def test_registry_endpoints(control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    status, error = await call(session, "POST", f"{base}/registry/endpoints", json=endpoint("reviews-v1-0"))
    assert status == 404 and error["messages"][0]["field"] == "service"
    assert (await call(session, "POST", f"{base}/registry/services", json=SERVICE))[0] == 200
    status, body = await call(session, "POST", f"{base}/registry/endpoints", json=endpoint("reviews-v1-0"))
    assert status == 200 and body["changed"] is True
    status, error = await call(session, "POST", f"{base}/registry/endpoints", json={"instance": "x"})
    assert status == 400 and {m["field"] for m in error["messages"]} >= {"service", "port"}
    status, error = await call(session, "POST", f"{base}/registry/services", data=b"{not json")
    assert status == 400 and "not valid JSON" in error["error"]
    status, error = await call(session, "PUT", f"{base}/registry/endpoints/default/reviews-v1-0/health",
                               json={"healthy": "no"})
    assert status == 400
    _, listed = await call(session, "GET", f"{base}/registry/endpoints", params={"service": "reviews"})
    assert [e["instance"] for e in listed["endpoints"]] == ["reviews-v1-0"]
    status, _ = await call(session, "DELETE", f"{base}/registry/endpoints/default/reviews-v1-0")
    assert status == 200
    status, _ = await call(session, "DELETE", f"{base}/registry/endpoints/default/reviews-v1-0")
    assert status == 404
    status, gone = await call(session, "DELETE", f"{base}/registry/services/default/reviews")
    assert status == 200 and gone["endpoints_removed"] == []
    _, registry = await call(session, "GET", f"{base}/registry")
    assert registry == {"services": [], "endpoints": []}
    status, health = await call(session, "GET", f"{base}/healthz")
    assert status == 200 and health["status"] == "ok"


def _csr(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit-test")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_certificate_authority_endpoints(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with await run_control_plane(port=0, state_dir=tmp_path, with_ca=True) as running:
        base = running.url + API
        identity = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        token = running.control_plane.tokens.issue_token(identity)
        status, root = await call(session, "GET", f"{base}/ca/root")
        assert status == 200 and root["root"].startswith("-----BEGIN CERTIFICATE-----")
        sign = f"{base}/ca/sign"
        status, signed = await call(session, "POST", sign, json={"csr": _csr(identity), "token": token})
        assert status == 200 and signed["root"] == root["root"]
        cert = x509.load_pem_x509_certificate(signed["cert_chain"].encode())
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
        status, error = await call(session, "POST", sign, json={"csr": _csr(identity), "token": "x"})
        assert status == 401 and error["error"]
        # a token issued by another process (the runtime) into the same state dir works too
        ratings = "spiffe://cluster.local/ns/default/sa/ratings"
        outside = BootstrapTokens.open(tmp_path / "ca" / TOKENS_FILE).issue_token(ratings)
        status, _ = await call(session, "POST", sign, json={"csr": _csr(ratings), "token": outside})
        assert status == 200
        other = "spiffe://cluster.local/ns/default/sa/ratings"
        status, error = await call(session, "POST", sign, json={"csr": _csr(other), "token": token})
        assert status == 403
        # the trust bundle reaches sidecars in their snapshot
        async with session.get(f"{base}/xds/stream", params={"id": "client-0.default"}) as stream:
            async for raw in stream.content:
                if raw.startswith(b"data: "):
                    assert b"BEGIN CERTIFICATE" in raw
                    break


async def test_bad_telemetry_query_and_bad_ack_have_their_own_codes(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    """MK0960 (telemetry query) and MK0920 (xDS ACK) were once one code with two meanings."""
    base = control_plane.url + API
    status, error = await call(session, "GET", f"{base}/telemetry", params={"reporter": "nobody"})
    assert status == 400 and [m["code"] for m in error["messages"]] == ["MK0960"]
    status, error = await call(session, "POST", f"{base}/xds/ack", json={"id": "x", "version": "v"})
    assert status == 400 and {m["code"] for m in error["messages"]} == {"MK0920"}


async def test_the_external_host_map(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    status, answer = await call(session, "GET", f"{base}/registry/external")
    assert status == 200 and answer == {"hosts": {}, "real_dns": False, "ca_pem": None}
    hosts = {"httpbin.org:80": "127.0.0.1:8100"}
    status, answer = await call(session, "PUT", f"{base}/registry/external", json={"hosts": hosts})
    assert status == 200 and answer == {"hosts": hosts, "real_dns": False, "ca_pem": None, "changed": True}
    for bad, field in (({"hosts": {"httpbin.org": "127.0.0.1:1"}}, "hosts"),
                       ({"hosts": ["httpbin.org:80"]}, "hosts"),
                       ({"hosts": {}, "real_dns": "yes"}, "real_dns"),
                       ({"hosts": {}, "ca_pem": "not a certificate"}, "ca_pem")):
        status, error = await call(session, "PUT", f"{base}/registry/external", json=bad)
        assert status == 400 and error["messages"][0]["field"] == field
    status, answer = await call(session, "GET", f"{base}/registry/external")
    assert answer == {"hosts": hosts, "real_dns": False, "ca_pem": None}  # a refused change changed nothing
    ca_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    status, answer = await call(session, "PUT", f"{base}/registry/external",
                                json={"hosts": hosts, "ca_pem": ca_pem})
    assert status == 200 and answer["ca_pem"] == ca_pem and answer["changed"] is True
