"""The inbound metrics filter's reading of x-meshkit-source (unit): last value wins, every copy removed."""

from __future__ import annotations

from meshkit.proxy.filters.metrics import SOURCE_HEADER, UNKNOWN, _take_source
from meshkit.proxy.http import Headers, Request

PEER = "spiffe://cluster.local/ns/ns/sa/p"


def _request(*items: tuple[str, str], peer: str | None = PEER) -> Request:
    return Request("GET", "/", "svc", Headers(list(items)), peer_identity=peer)


def test_one_source_header_is_read_and_removed() -> None:
    request = _request(("host", "svc"), (SOURCE_HEADER, "a;ns;app;v1;p"), ("x-other", "1"))
    assert _take_source(request, {}) == ("a", "ns", "app", "v1", PEER)
    assert request.headers.items() == [("host", "svc"), ("x-other", "1")]


def test_the_last_of_several_wins_and_all_are_removed() -> None:
    spoofed, real = (SOURCE_HEADER, "spoofed;x;x;x;x"), (SOURCE_HEADER, "real;ns;app;v2;p")
    request = _request(spoofed, ("host", "svc"), real)
    assert _take_source(request, {}) == ("real", "ns", "app", "v2", PEER)
    assert request.headers.items() == [("host", "svc")]


def test_no_header_and_the_mtls_peer() -> None:
    assert _take_source(_request(("host", "svc"), peer=None), {}) == (UNKNOWN,) * 5
    peer = "spiffe://cluster.local/ns/default/sa/caller"
    request = _request((SOURCE_HEADER, "a;ns;app;v1;claimed"), peer=peer)
    assert _take_source(request, {}) == ("a", "ns", "app", "v1", peer)  # the verified identity wins


def test_a_plaintext_caller_sets_no_label_by_what_it_sends() -> None:
    forged = (SOURCE_HEADER, "productpage-v1;default;productpage;v1;cluster.local/ns/default/sa/admin")
    request = _request(("host", "svc"), forged, peer=None)
    assert _take_source(request, {}) == (UNKNOWN,) * 5
    assert request.headers.items() == [("host", "svc")]  # still stripped before the app
