"""Server names against Istio's host patterns (`meshkit.proxy.sni.name_matches`), as the TLS routes, the
HTTPS servers and a gateway's ISTIO_MUTUAL servers use it: one rule for all three."""

from __future__ import annotations

import pytest

from meshkit.proxy.sni import name_matches


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("*", "anything.example.com", True),
    ("nginx.example.com", "nginx.example.com", True),
    ("nginx.example.com", "www.example.com", False),
    ("*.example.com", "nginx.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),  # a wildcard needs a label before the suffix
    ("*.example.com", "badexample.com", False),
    ("example.com", "nginx.example.com", False),
])
def test_patterns(pattern: str, name: str, expected: bool) -> None:
    assert name_matches(pattern, name) is expected
