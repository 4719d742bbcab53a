"""Where the apps send their calls: ``HTTP_PROXY`` for services, directly for loopback and NO_PROXY."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from yarl import URL

from meshkit.apps.outbound import ProxySettings
from meshkit.apps.propagation import forwarded_headers

SIDECAR = "http://127.0.0.1:15001"


def test_services_go_through_the_proxy_named_in_the_environment() -> None:
    settings = ProxySettings.from_env({"HTTP_PROXY": SIDECAR})
    assert settings.proxy_for(URL("http://reviews:9080/reviews/0")) == SIDECAR
    assert ProxySettings.from_env({"http_proxy": SIDECAR + "/"}).proxy_for(URL("http://a:1/")) == SIDECAR


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/", "http://127.9.9.9/", "http://localhost:80/", "http://[::1]:80/",
     "https://reviews:9080/", "http://ratings.internal:9080/", "http://db:5432/"],
)
def test_loopback_https_and_no_proxy_hosts_go_direct(url: str) -> None:
    settings = ProxySettings.from_env({"HTTP_PROXY": SIDECAR, "NO_PROXY": "db, .internal"})
    assert settings.proxy_for(URL(url)) is None


def test_no_proxy_in_the_environment_or_direct_settings_means_direct() -> None:
    assert ProxySettings.from_env({}).proxy_for(URL("http://reviews:9080/")) is None
    assert ProxySettings.direct().proxy_for(URL("http://reviews:9080/")) is None


@pytest.mark.parametrize("bad", ["127.0.0.1:15001", "https://127.0.0.1:15001", "http://127.0.0.1", "http://:80"])
def test_a_malformed_proxy_is_rejected_naming_the_variable(bad: str) -> None:
    with pytest.raises(ValueError, match="HTTP_PROXY"):
        ProxySettings.from_env({"HTTP_PROXY": bad})


def test_forwarded_headers_keep_trace_and_user_context_only() -> None:
    incoming = CIMultiDict(
        {"X-Request-Id": "r", "Traceparent": "t", "End-User": "jason", "Host": "x", "Accept": "*/*"}
    )
    assert forwarded_headers(incoming) == {"x-request-id": "r", "traceparent": "t", "end-user": "jason"}
