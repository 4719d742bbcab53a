"""istioctl proxy-config tables from real proxy data: snapshots the compiler makes from Istio's samples,
the sidecar's own balancer view of them (``/clusters``), and real certificates (``/certs``' shape).

Istio YAML -> compile_snapshot -> ``{"snapshot": ...}`` (the admin ``/config_dump``) and
``Snapshot.from_json(...).clusters[...].admin_view()`` (the admin ``/clusters``) -> the rows.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from meshkit.config.compile import compile_snapshot
from meshkit.config.loader import load_resources
from meshkit.config.registry import Node, RegistryView, Service
from meshkit.proxy.snapshot import Snapshot
from meshkit.runtime.proxy_config import (
    ProxyConfigError,
    cluster_rows,
    endpoint_rows,
    listener_rows,
    route_rows,
    secret_rows,
)
from meshkit.runtime.standin_tls import issue_ca, issue_server, key_pem, pem
from tests.config.bookinfo import SAMPLES, bookinfo_registry, node_for

REVIEWS = "reviews.default.svc.cluster.local"


def _dump(yaml_text: str = "", node: Node | None = None,
          registry: RegistryView | None = None) -> dict[str, Any]:
    doc = compile_snapshot(load_resources(yaml_text) if yaml_text else [], registry or bookinfo_registry(),
                           node or node_for("productpage"))
    return {"version": doc["version"], "snapshot": doc}


def _clusters_page(dump: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``/clusters`` page for this snapshot, as `proxy.admin.Admin.clusters` builds it."""
    snap = Snapshot.from_json(dump["snapshot"])
    view = {name: cluster.admin_view() for name, cluster in snap.clusters.items()}
    if snap.inbound_cluster is not None:
        view[snap.inbound_cluster.name] = snap.inbound_cluster.admin_view()
    return view


def _all_rules() -> str:
    return (SAMPLES / "destination-rule-all.yaml").read_text()


def test_cluster_table_shows_the_reviews_subsets_of_destination_rule_all() -> None:
    rows = cluster_rows(_dump(_all_rules()), fqdn_filter="reviews")
    assert rows[0] == ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]
    assert [r[2] for r in rows[1:]] == ["-", "v1", "v2", "v3"]
    assert {tuple(r[:2] + r[3:]) for r in rows[1:]} == {
        (REVIEWS, "9080", "outbound", "EDS", "reviews.default")}


def test_without_a_destination_rule_there_are_no_subsets_and_no_rule_named() -> None:
    rows = cluster_rows(_dump(), fqdn_filter="reviews")
    assert rows[1:] == [[REVIEWS, "9080", "-", "outbound", "EDS", ""]]


def test_cluster_filters_port_subset_direction() -> None:
    dump = _dump(_all_rules())
    assert [r[0] for r in cluster_rows(dump, subset="v3")[1:]] == [REVIEWS]
    inbound = cluster_rows(dump, direction="inbound")[1:]
    assert inbound == [["", "9080", "-", "inbound", "ORIGINAL_DST", ""]]
    assert cluster_rows(dump, port=9999)[1:] == []
    names = [r[0] for r in cluster_rows(dump)[1:]]
    assert {"BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster"} <= set(names)


def test_endpoint_table_from_the_sidecar_s_balancers() -> None:
    dump = _dump(_all_rules())
    page = _clusters_page(dump)
    rows = endpoint_rows(page, dump, cluster=f"outbound|9080|v2|{REVIEWS}")
    assert rows[0] == ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]
    v2 = next(ep for ep in bookinfo_registry().endpoints if ep.instance == "reviews-v2-0")
    assert rows[1:] == [[f"127.0.0.1:{v2.port}", "HEALTHY", "OK", f"outbound|9080|v2|{REVIEWS}"]]
    every = endpoint_rows(page, dump, cluster=f"outbound|9080||{REVIEWS}")
    assert len(every) == 4  # reviews v1, v2, v3 behind the subset-less cluster


def test_an_ejected_unhealthy_endpoint_shows_failed_and_filters_by_status() -> None:
    dump = _dump(_all_rules())
    snap = Snapshot.from_json(dump["snapshot"])
    endpoint = snap.clusters["reviews.default|v1"].endpoints[0]
    endpoint.ejected, endpoint.healthy = True, False
    page = {name: cluster.admin_view() for name, cluster in snap.clusters.items()}
    [row] = endpoint_rows(page, dump, status="unhealthy")[1:]
    assert row[1:] == ["UNHEALTHY", "FAILED", f"outbound|9080|v1|{REVIEWS}"]
    port = int(row[0].rpartition(":")[2])
    assert [r[0] for r in endpoint_rows(page, dump, port=port)[1:]] == [row[0], row[0]]


def _cert_view(cert: x509.Certificate) -> dict[str, Any]:
    """A certificate as the sidecar's ``/certs`` lists it (hex serial, ISO 8601 validity)."""
    return {"serial": f"{cert.serial_number:x}", "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}


def test_secret_table_default_and_rootca_with_decimal_serials_and_validity() -> None:
    ca, ca_key = issue_ca("cluster.local")
    leaf, _ = issue_server(["productpage"], ca, ca_key)
    certs = {"mtls": True, "chain": [_cert_view(leaf)], "root": [_cert_view(ca)]}
    rows = secret_rows(certs, _dump())
    assert rows[0] == ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
                       "NOT BEFORE"]
    when = "%Y-%m-%dT%H:%M:%SZ"
    assert rows[1] == ["default", "Cert Chain", "ACTIVE", "true", str(leaf.serial_number),
                       leaf.not_valid_after_utc.strftime(when), leaf.not_valid_before_utc.strftime(when)]
    assert rows[2][:5] == ["ROOTCA", "CA", "ACTIVE", "true", str(ca.serial_number)]
    later = leaf.not_valid_after_utc + timedelta(seconds=1)
    assert secret_rows(certs, _dump(), now=later)[1][3] == "false"
    assert secret_rows({"mtls": False, "ready": False}, _dump()) == [rows[0]]


MUTUAL_ORIGINATION = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-mtls-for-nginx
  namespace: istio-system
spec:
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: MUTUAL
        credentialName: client-credential
        sni: my-nginx.mesh-external.svc.cluster.local
"""
EGRESS = Node("istio-egressgateway-0", namespace="istio-system",
              labels={"istio": "egressgateway", "app": "istio-egressgateway"}, kind="gateway")


def _client_credential(client: x509.Certificate, key: Any, ca: x509.Certificate) -> str:
    """``kubectl create secret -n istio-system generic client-credential --from-file=tls.key=...
    --from-file=tls.crt=... --from-file=ca.crt=...`` (the task's Secret)."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: client-credential, namespace: istio-system}}\n"
            f"type: Opaque\ndata:\n  tls.crt: {b64(pem(client))}\n  tls.key: {b64(key_pem(key))}\n"
            f"  ca.crt: {b64(pem(ca))}\n")


def test_the_egress_gateway_lists_its_client_credential_as_istioctl_does() -> None:
    ca, ca_key = issue_ca("example.com")
    client, key = issue_server(["client.example.com"], ca, ca_key)
    registry = RegistryView(services=(Service("my-nginx", "mesh-external", 443),))
    secret = _client_credential(client, key, ca)
    with_secret = _dump(secret + "---\n" + MUTUAL_ORIGINATION, EGRESS, registry)
    rows = secret_rows({"mtls": True, "chain": [], "root": []}, with_secret)
    assert [r[:5] for r in rows[1:]] == [
        ["kubernetes://client-credential", "Cert Chain", "ACTIVE", "true", str(client.serial_number)],
        ["kubernetes://client-credential-cacert", "CA", "ACTIVE", "true", str(ca.serial_number)]]
    assert [r for r in rows if "client-credential" in r[0]] == rows[1:]  # the task's grep
    without = _dump(MUTUAL_ORIGINATION, EGRESS, registry)  # the Secret not created yet: nothing to list
    assert secret_rows({"mtls": True, "chain": [], "root": []}, without)[1:] == []
    gateway_clusters = cluster_rows(with_secret, fqdn_filter="my-nginx")[1:]
    assert gateway_clusters == [["my-nginx.mesh-external.svc.cluster.local", "443", "-", "outbound", "EDS",
                                 "my-nginx.mesh-external"]]
    assert "InboundPassthroughCluster" not in [r[0] for r in cluster_rows(with_secret)]


def test_route_table_names_the_virtual_service() -> None:
    yaml_text = _all_rules() + "---\n" + (SAMPLES / "virtual-service-reviews-test-v2.yaml").read_text()
    rows = route_rows(_dump(yaml_text), name="9080")
    assert rows[0] == ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    reviews = [r for r in rows[1:] if r[1] == f"{REVIEWS}:9080"]
    assert reviews and {r[4] for r in reviews} == {"reviews.default"}
    assert all(r[2].startswith("reviews") for r in reviews)
    ratings = [r for r in rows[1:] if r[1].startswith("ratings.")]
    assert ratings == [["9080", "ratings.default.svc.cluster.local:9080", "ratings + 3 more...", "/*", ""]]
    assert route_rows(_dump(yaml_text), name="80")[1:] == []


def test_listener_table_and_a_proxy_with_no_snapshot() -> None:
    rows = listener_rows(_dump())
    assert rows[0] == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert ["0.0.0.0", "9080", "ALL", "Route: 9080"] in rows
    assert [r[1] for r in listener_rows(_dump(), port=15006)[1:]] == ["15006"]
    with pytest.raises(ProxyConfigError, match="no configuration yet"):
        cluster_rows({"version": None, "snapshot": None})


def test_dates_are_istioctl_s_utc_form() -> None:
    moment = datetime(2026, 12, 8, 22, 0, 30, tzinfo=UTC)
    certs = {"chain": [{"serial": "ff", "not_before": (moment - timedelta(days=1)).isoformat(),
                        "not_after": moment.isoformat()}], "root": []}
    assert secret_rows(certs, _dump(), now=moment)[1] == [
        "default", "Cert Chain", "ACTIVE", "true", "255", "2026-12-08T22:00:30Z", "2026-12-07T22:00:30Z"]


def test_istioctl_s_leading_namespace_moves_after_the_command() -> None:
    from meshkit.cli import leading_namespace  # noqa: PLC0415

    task = ["-n", "istio-system", "proxy-config", "secret", "deploy/istio-egressgateway"]
    assert leading_namespace(task) == ["proxy-config", "secret", "deploy/istio-egressgateway", "-n",
                                       "istio-system"]
    assert leading_namespace(["-n", "foo", "exec", "deploy/curl", "--", "curl", "-n", "x"]) == [
        "exec", "deploy/curl", "-n", "foo", "--", "curl", "-n", "x"]
    assert leading_namespace(["pc", "secret", "x", "-n", "foo"]) == ["pc", "secret", "x", "-n", "foo"]
