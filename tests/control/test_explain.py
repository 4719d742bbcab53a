"""explain(spans): per hop the rule, subset, fault, attempts, timeout, flags in words, and the verdict.

The spans are what two sidecars record for one call (meshkit/proxy/spans.py tags); the end-to-end
test (tests/e2e/test_tracing.py) checks the same on spans real sidecars recorded.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.cli.trace_verbs import explain_lines
from meshkit.control.explain import FLAGS, explain
from tests.control.test_traces import span

T0 = 1_700_000_000_000_000


def call(status: str, flags: str = "-", *, route: str = "VirtualService/default/reviews#http[0]",
         cluster: str = "reviews.default|v2", reached: bool = True, attempts: str = "1", timeout: str = "",
         fault: str = "", mtls: bool = True) -> list[dict[str, Any]]:
    """productpage's client span to reviews, and reviews' server span when the request got there."""
    client = span(1, 1, None, service="productpage", kind="CLIENT", start=T0, duration=30_000, status=status,
                  flags=flags)
    client["name"] = "reviews:9080/*"
    client["remoteEndpoint"] = {"ipv4": "127.0.0.1", "port": 41017}
    client["tags"] |= {"meshkit.route": route, "meshkit.route_name": "reviews.0", "upstream_cluster": cluster,
                       "retry.attempts": attempts, "connection_security_policy": "none"}
    if timeout:
        client["tags"]["meshkit.timeout_ms"] = timeout
    if fault:
        client["tags"]["meshkit.fault"] = fault
    spans = [client]
    if reached:
        server = span(1, 2, 1, service="reviews", start=T0 + 2_000, duration=20_000, status=status)
        server["tags"]["connection_security_policy"] = "mutual_tls" if mtls else "none"
        spans.append(server)
    return spans


def test_a_plain_hop_names_rule_subset_endpoint_and_time() -> None:
    answer = explain(call("200"))
    (hop,) = answer["hops"]
    assert (hop["from"], hop["to"], hop["status"]) == ("productpage", "reviews", 200)
    assert hop["route"] == "VirtualService/default/reviews#http[0]" and hop["subset"] == "v2"
    assert hop["endpoint"] == "127.0.0.1:41017" and hop["attempts"] == 1 and hop["mtls"] is True
    assert hop["app_ms"] == pytest.approx(20.0)
    assert hop["caller_proxy_and_network_ms"] == pytest.approx(10.0)
    assert answer["request_id"] == "req-1"
    assert answer["verdict"] == "no error; the app that took longest was reviews (20.0 ms of its own)"


@pytest.mark.parametrize(("kwargs", "flag", "verdict_part"), [
    ({"status": "200", "flags": "DI", "fault": "delay 7000 ms for 100%"}, "DI", "delay injected"),
    ({"status": "500", "flags": "FI", "fault": "abort 500 for 100%", "reached": False}, "FI",
     "fault injected"),
    ({"status": "503", "flags": "URX", "attempts": "3"}, "URX", "retry limit exceeded"),
    ({"status": "504", "flags": "UT", "timeout": "500", "reached": False}, "UT", "request timeout"),
    ({"status": "503", "flags": "UO", "reached": False}, "UO", "circuit breaker"),
    ({"status": "404", "flags": "NR", "route": "none", "cluster": "-", "reached": False}, "NR", "no route"),
    ({"status": "503", "flags": "UC", "reached": False, "mtls": False}, "UC", "closed the connection"),
])
def test_each_failure_is_named_on_its_hop(kwargs: dict[str, Any], flag: str, verdict_part: str) -> None:
    answer = explain(call(**kwargs))
    (hop,) = answer["hops"]
    assert [w["flag"] for w in hop["flags_explained"]] == [flag]
    assert hop["flags_explained"][0]["meaning"] == FLAGS[flag][0]
    assert hop["fault_fired"] == (flag in ("DI", "FI"))
    assert hop["reached_server"] == kwargs.get("reached", True)
    assert verdict_part in answer["verdict"] and answer["verdict"].startswith("productpage → reviews")
    text = "\n".join(explain_lines(answer))
    assert f"   {flag:<9} {FLAGS[flag][0]}" in text and "likely: " in text
    if flag == "UC":  # the likely cause names the STRICT-plaintext case
        assert "STRICT mTLS against a plaintext client" in text
    if flag == "UT":
        assert "attempts  1, timeout 500 ms" in text
    if flag == "DI":
        assert "fault     delay 7000 ms for 100%  FIRED" in text


def test_a_trace_of_several_hops_is_in_call_order_and_blames_the_deepest_failure() -> None:
    page = call("503", "URX", attempts="3")
    ratings = span(1, 3, 2, service="reviews", kind="CLIENT", start=T0 + 3_000, duration=5_000, status="503",
                   flags="UH")
    ratings["name"] = "ratings:9080/*"
    ratings["tags"]["upstream_cluster"] = "ratings.default|v1"
    answer = explain([*page, ratings])
    assert [(h["from"], h["to"]) for h in answer["hops"]] == [
        ("productpage", "reviews"), ("reviews", "ratings")]
    assert answer["verdict"].startswith("reviews → ratings answered 503: UH: no healthy upstream")
    assert answer["hops"][0]["app_ms"] == pytest.approx(15.0)  # reviews' 20 ms minus its 5 ms call


def test_no_spans_says_why() -> None:
    assert explain([])["verdict"] == "no spans: the request was not sampled, or its trace was dropped"
