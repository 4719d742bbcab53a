"""Istio's includeIPRanges / excludeIPRanges (and the pod annotations) on the local mesh's address plan."""

from __future__ import annotations

import ipaddress

import pytest

from meshkit.cli.kube_tables import WIDE
from meshkit.config.analyze import analyze
from meshkit.config.ip_ranges import (
    EXCLUDE_ANNOTATION,
    INCLUDE_ANNOTATION,
    INCLUDE_SETTING,
    Interception,
    IPRangeError,
    cluster_ip,
    external_ip,
    interception_settings,
    parse_ranges,
)
from meshkit.config.loader import load_resources

SERVICES = ipaddress.ip_network("10.96.0.0/16")


def test_a_star_means_every_address_and_empty_means_none() -> None:
    everything = parse_ranges("*", "f")
    assert everything.everything and everything.contains(ipaddress.ip_address("8.8.8.8"))
    nothing = parse_ranges("", "f")
    assert not nothing.everything and not nothing.contains(ipaddress.ip_address("10.96.0.1"))


def test_host_bits_and_shell_quotes_are_taken_as_istio_does() -> None:
    ranges = parse_ranges('"10.0.0.1/24, 172.16.0.0/12"', "f")
    assert [str(n) for n in ranges.networks] == ["10.0.0.0/24", "172.16.0.0/12"]
    assert ranges.contains(ipaddress.ip_address("10.0.0.200"))
    assert not ranges.contains(ipaddress.ip_address("10.0.1.1"))
    assert ranges.text() == "10.0.0.0/24,172.16.0.0/12"


@pytest.mark.parametrize(("text", "entry"), [
    ("10.0.0.300/24", "10.0.0.300/24"), ("10.96.0.0/33", "10.96.0.0/33"), ("kind", "kind"),
    ("10.96.0.0/16,,10.0.0.0/8", "10.96.0.0/16,,10.0.0.0/8"), ("*,10.0.0.0/8", "*,10.0.0.0/8"),
])
def test_a_bad_cidr_is_named_with_its_setting(text: str, entry: str) -> None:
    with pytest.raises(IPRangeError) as caught:
        parse_ranges(text, INCLUDE_SETTING)
    assert caught.value.field == INCLUDE_SETTING and caught.value.entry == entry
    assert INCLUDE_SETTING in str(caught.value) and repr(entry) in str(caught.value)


def test_the_address_plan_puts_services_inside_kinds_range_and_external_hosts_outside() -> None:
    assert str(cluster_ip("kubernetes", "default")) == "10.96.0.1"
    addresses = {cluster_ip(s, "default") for s in ("productpage", "reviews", "ratings", "details", "sleep")}
    assert len(addresses) == 5 and all(a in SERVICES and str(a) != "10.96.0.1" for a in addresses)
    assert cluster_ip("sleep", "default") == cluster_ip("sleep", "default") != cluster_ip("sleep", "foo")
    private = ipaddress.ip_network("10.0.0.0/8")
    for host in ("httpbin.org", "edition.cnn.com", "www.google.com"):
        assert external_ip(host) not in SERVICES and external_ip(host) not in private


def test_the_section_s_setting_intercepts_the_cluster_and_lets_external_hosts_go_direct() -> None:
    intercepted, rest = interception_settings(
        ["meshConfig.accessLogFile=/dev/stdout", f"{INCLUDE_SETTING}=10.96.0.0/16"])
    assert rest == ["meshConfig.accessLogFile=/dev/stdout"] and not intercepted.default
    assert intercepted.intercepts(cluster_ip("httpbin", "default"))
    assert not intercepted.intercepts(external_ip("httpbin.org"))
    default, _ = interception_settings([])
    assert default.default and default.intercepts(external_ip("httpbin.org"))
    assert Interception.from_json(intercepted.to_json()) == intercepted


def test_exclude_wins_over_include_and_pod_annotations_replace_the_global_values() -> None:
    mesh, _ = interception_settings(["values.global.proxy.excludeIPRanges=10.96.0.0/16"])
    assert not mesh.intercepts(cluster_ip("httpbin", "default"))
    assert mesh.intercepts(external_ip("httpbin.org"))
    pod = mesh.for_pod({INCLUDE_ANNOTATION: "203.0.113.0/24", EXCLUDE_ANNOTATION: ""})
    assert pod.intercepts(external_ip("httpbin.org")) and not pod.intercepts(cluster_ip("httpbin", "default"))
    with pytest.raises(IPRangeError) as caught:
        mesh.for_pod({EXCLUDE_ANNOTATION: "10.96/16"})
    assert caught.value.field == EXCLUDE_ANNOTATION


def test_get_services_shows_the_notional_cluster_ip_unless_the_service_gives_one() -> None:
    columns, row = WIDE["Service"]
    plain = {"resource": {"metadata": {"name": "httpbin", "namespace": "default"},
                          "spec": {"ports": [{"port": 8000}]}}}
    assert row(plain, {})[columns.index("CLUSTER-IP")] == str(cluster_ip("httpbin", "default"))
    headless = {"resource": {"metadata": {"name": "db"}, "spec": {"clusterIP": "None"}}}
    assert row(headless, {})[columns.index("CLUSTER-IP")] == "None"


def sleep_deployment(annotations: str) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleep}}
spec:
  selector: {{matchLabels: {{app: sleep}}}}
  template:
    metadata:
      labels: {{app: sleep}}
      annotations: {{{annotations}}}
    spec:
      containers: [{{name: sleep, image: docker.io/curlimages/curl:8.16.0}}]
"""


def test_a_bad_range_annotation_is_refused_at_apply_naming_it() -> None:
    [message] = [m for m in analyze(load_resources(sleep_deployment(
        f'"{EXCLUDE_ANNOTATION}": "10.96.0.0/16,10.300.0.0/16"'))) if m.code == "MK0309"]
    assert message.field == f"spec.template.metadata.annotations[{EXCLUDE_ANNOTATION}]", message
    assert "'10.300.0.0/16' is not a CIDR" in message.text and message.resource == "Deployment/default/sleep"
    good = analyze(load_resources(sleep_deployment(f'"{INCLUDE_ANNOTATION}": "10.96.0.0/16"')))
    assert [m for m in good if m.code == "MK0309"] == []
