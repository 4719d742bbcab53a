"""The request and response values that cross the filter chain.

They are deliberately small: ``__slots__`` classes, header names lower-cased ``str``
and values ``str`` (latin-1, as on the wire), bodies either ``bytes`` (fully received,
replayable: retries and mirroring need this) or an async iterator of chunks (streamed,
never buffered; not retried).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: these modules import this one
    from meshkit.proxy.balancer import Endpoint
    from meshkit.proxy.schema import RouteDoc
    from meshkit.proxy.snapshot import Snapshot

Body = bytes | AsyncIterator[bytes]

# The value of a Request field that the listener or an earlier step of the chain sets before any
# filter reads it (the order of pipeline.py): the field is typed as set, so the filters on the
# request path need no None checks. Only code outside that order (upstream, timeouts) tests for None.
_NOT_YET: Any = None


class Headers:
    """An ordered multi-map of header fields; names are stored lower-cased."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = items if items is not None else []

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self._items if key == name]

    def __contains__(self, name: object) -> bool:
        # Plain loops, not any(genexpr): these run several times per request (half the cost).
        return isinstance(name, str) and self.get(name) is not None

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one field (appended if absent)."""
        self.remove(name)
        self._items.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        for key, _ in self._items:
            if key == name:
                self._items = [(k, v) for k, v in self._items if k != name]
                return

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def copy(self) -> Headers:
        return Headers(list(self._items))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Request:
    """One downstream request, plus the per-request state filters hand each other."""

    __slots__ = (
        "attempt",
        "auth",
        "authority",
        "body",
        "cluster",
        "config",
        "direct_addr",  # set only on PROXY protocol connections (listener.ProxyProtocolConnection)
        "direction",
        "downstream_addr",
        "endpoint",
        "flags",
        "headers",
        "method",
        "path",
        "peer_identity",
        "route",
        "rq_timeout_ms",
        "start",
        "version",
    )

    direct_addr: str  # unset (no per-request cost) unless the connection started with a PROXY header

    def __init__(
        self,
        method: str,
        path: str,
        authority: str,
        headers: Headers,
        body: Body = b"",
        *,
        direction: str = "outbound",
        downstream_addr: str = "",
        peer_identity: str | None = None,
        config: Snapshot = _NOT_YET,
        start: float = 0.0,
        version: str = "1.1",
    ) -> None:
        self.method = method  # "GET"
        self.path = path  # origin-form: "/reviews/0?x=1"
        self.authority = authority  # "reviews:9080", lower-cased
        self.headers = headers
        self.body = body
        self.direction = direction  # "outbound" | "inbound"
        self.downstream_addr = downstream_addr  # "127.0.0.1" (x-forwarded-for source)
        self.peer_identity = peer_identity  # SPIFFE id of the mTLS peer, inbound only
        self.config = config  # the compiled snapshot in effect when the request started
        self.start = start  # loop.time() at the first byte
        self.version = version  # HTTP version of the downstream request
        # Set by filters as the request goes down the chain:
        self.route: RouteDoc = _NOT_YET  # the matched route (outbound) from the snapshot
        self.cluster: str = _NOT_YET  # "reviews|v2"
        self.endpoint: Endpoint = _NOT_YET  # the endpoint chosen by the balancer
        self.flags: str = ""  # response flags raised on the way down ("DI")
        self.attempt = 1  # x-envoy-attempt-count
        self.rq_timeout_ms: int | None = None  # x-envoy-upstream-rq-timeout-ms from the app (0 = none)
        self.auth: Any = None  # filters/jwt.AuthInfo of a verified end-user JWT (inbound only)


class Response:
    """A response on its way back up the chain (from upstream or made locally)."""

    __slots__ = ("body", "flags", "headers", "reason", "status", "upstream_host")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: Body = b"",
        *,
        reason: str = "",
        flags: str = "",
        upstream_host: str = "",
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.reason = reason
        self.flags = flags  # Envoy response flags, comma-joined ("UT", "DI,FI")
        self.upstream_host = upstream_host  # "127.0.0.1:41017"

    @classmethod
    def local(cls, status: int, text: str, flags: str = "") -> Response:
        """A reply the proxy makes itself (Envoy's local reply): text/plain body."""
        body = text.encode()
        headers = Headers([("content-type", "text/plain"), ("content-length", str(len(body)))])
        return cls(status, headers, body, flags=flags)

    def add_flag(self, flag: str) -> None:
        self.flags = f"{self.flags},{flag}" if self.flags else flag


Handler = Callable[[Request], Awaitable[Response]]
Filter = Callable[[Request, Handler], Awaitable[Response]]
# A filter is anything with the Filter signature. One that only works on the way down may be a
# plain function returning ``call_next(request)`` (one coroutine frame less per request), and
# answer locally with ``return answered(Response.local(...))``.


async def answered(response: Response) -> Response:
    """An awaitable that is already ``response``: the local reply of a plain-function filter."""
    return response


class UpstreamError(Exception):
    """Raised by the terminal handler when no response could be had from upstream.

    ``flag`` is the Envoy response flag the failure maps to; ``retry_kind`` the
    ``retryOn`` condition that covers it.
    """

    flag = "UF"
    retry_kind = "connect-failure"
    status = 503


class ConnectFailure(UpstreamError):
    """The upstream refused or the connect timed out (Envoy ``UF``)."""


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before a full response (Envoy ``UC``)."""

    flag = "UC"
    retry_kind = "reset"
