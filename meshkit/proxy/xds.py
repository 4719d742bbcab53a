"""Where snapshots come from, and how they are swapped in: a file (static) or the control plane (SSE).

``ConfigState`` holds the Snapshot in effect; ``apply(doc)`` validates a new document and
swaps it in with one assignment (requests in flight keep the Snapshot they started with),
or records a NACK and keeps the old one. ``StaticConfig`` reads ``--config FILE`` and
re-reads it on SIGHUP. ``XdsClient`` follows the push protocol of docs/snapshot.md over
raw asyncio streams (no aiohttp in the sidecar): ``GET /api/v1/xds/stream?id=ID`` as a
``text/event-stream``, ACK/NACK per snapshot with ``POST /api/v1/xds/ack``, reconnect with
jittered exponential back-off (100 ms doubling to 5 s) while serving the last snapshot.
Both calls carry ``Authorization: Bearer`` with the sidecar's credential (its CA bootstrap
token, or the token file it was given), asked again at every connection; the stream names
the admin port, whose ``/stats/prometheus`` the control plane then scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict
from urllib.parse import quote, urlsplit

import httptools

from meshkit.proxy.snapshot import Snapshot, SnapshotError

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("meshkit.proxy.xds")

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
STREAM_IDLE_TIMEOUT = 45.0  # the control plane pings every 15 s; three missed pings = reconnect
UNKNOWN_VERSION = "(unknown)"


class Nack(TypedDict):
    """The last snapshot the proxy refused (``/config_dump``'s ``last_nack``)."""

    version: object  # the document's "version" as received (None: none, or not JSON at all)
    reason: str  # starts with the offending key path
    time: float


class Ack(TypedDict):
    """What ``POST /api/v1/xds/ack`` carries (docs/snapshot.md, "Push protocol")."""

    id: str
    version: str
    status: Literal["ACK", "NACK"]
    reason: NotRequired[str]


class ConfigState:
    """The snapshot in effect, the last NACK and the counts of both (for /config_dump)."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        self.last_nack: Nack | None = None
        self.applied = 0
        self.rejected = 0
        self.source = ""
        self.source_error: str | None = None  # why the control plane stream is down, while it is
        self.app_address: str | None = None  # a captured pod's IP: inbound is delivered there
        self.listeners: list[Callable[[Snapshot], None]] = []

    def apply(self, doc: object) -> str | None:
        """Validate and swap in ``doc``; returns None (ACK) or the NACK reason."""
        version = doc.get("version") if isinstance(doc, dict) else None
        try:
            snapshot = Snapshot.from_json(doc, self.current, app_address=self.app_address)
        except SnapshotError as exc:
            return self.reject(version, str(exc))
        snapshot.applied_at = time.time()
        self.current = snapshot
        self.applied += 1
        for callback in self.listeners:
            callback(snapshot)
        log.info("snapshot %s applied", snapshot.version)
        return None

    def reject(self, version: object, reason: str) -> str:
        """The one NACK path (invalid snapshot, unreadable file, bad JSON): count, record, log.

        Returns ``reason``; the snapshot in effect stays.
        """
        self.rejected += 1
        self.last_nack = {"version": version, "reason": reason, "time": time.time()}
        log.warning("snapshot %s rejected: %s", version, reason)
        return reason


class StaticConfig:
    """``--config FILE``: load at start, reload on SIGHUP (a bad file is NACKed, the old one kept)."""

    def __init__(self, path: str, state: ConfigState) -> None:
        self.path = Path(path)
        self.state = state
        state.source = f"file:{self.path}"

    def load(self) -> str | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return self.state.reject(None, f"{self.path}: cannot read snapshot JSON: {exc}")
        return self.state.apply(doc)

    def install_reload(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGHUP, self.load)

    def remove_reload(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)


class StreamError(Exception):
    """The push stream broke (bad status, framing, unexpected close)."""


class SseDecoder:
    """Incremental ``text/event-stream`` decoder: feed text, get (event, data) pairs."""

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._buffer += text
        events: list[tuple[str, str]] = []
        while True:
            index = self._buffer.find("\n")
            if index < 0:
                return events
            line = self._buffer[:index].rstrip("\r")
            self._buffer = self._buffer[index + 1:]
            if not line:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event = ""
                self._data = []
            elif line.startswith(":"):
                continue  # comment / ping
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)


class _StreamParser:
    """httptools callbacks for the SSE response (chunked or close-delimited)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers_done = False
        self.body: list[bytes] = []
        self.done = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


class XdsClient:
    """Subscribes to the control plane and keeps ``state`` up to date (see the module docstring)."""

    def __init__(self, url: str, node_id: str, state: ConfigState, kind: str = "sidecar", *,
                 token: Callable[[], str | None] | None = None, admin_port: int | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--control: expected http://HOST:PORT or https://HOST:PORT, got {url!r}")
        if parts.scheme == "https" and tls is None:
            raise ValueError(f"--control {url}: an https:// control plane needs a TLS context")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        self.node_id = node_id
        self.kind = kind  # "sidecar" | "gateway": the control plane compiles differently for each
        self.state = state
        self.token = token
        self.admin_port = admin_port
        state.source = f"control:{url} id={node_id}"
        self.connected = False
        self.connects = 0
        self.snapshots_received = 0
        self._ack_tasks: set[asyncio.Task[None]] = set()

    def _note_broken(self, exc: BaseException) -> None:
        """Record why the stream broke (``/config_dump``'s ``source_error``). A control plane whose
        TLS certificate does not verify is a misconfiguration, not a blip: a warning, once per cause."""
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if getattr(exc, "verify_message", None) is not None and error != self.state.source_error:
            log.warning("control plane at %s:%s not trusted: %s", self.host, self.port, exc)
        else:
            log.info("control plane stream to %s:%s broken: %s", self.host, self.port, exc)
        self.state.source_error = error

    def _connect(self) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A connection to the control plane: TLS (certificate and hostname verified) for https://."""
        if self.tls is None:
            return asyncio.open_connection(self.host, self.port)
        return asyncio.open_connection(self.host, self.port, ssl=self.tls, server_hostname=self.host)

    def _auth_header(self) -> str:
        token = self.token() if self.token is not None else None
        return f"authorization: Bearer {token}\r\n" if token else ""

    async def run(self) -> None:
        """Stream forever, reconnecting with jittered back-off; cancel to stop."""
        backoff = BACKOFF_START
        while True:
            before = self.snapshots_received
            try:
                await self._stream_once()
            except (OSError, StreamError, TimeoutError, httptools.HttpParserError, UnicodeDecodeError) as exc:
                self._note_broken(exc)
            finally:
                self.connected = False
            if self.snapshots_received > before:
                backoff = BACKOFF_START  # the stream worked: start over from the shortest delay
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream_once(self) -> None:
        """One stream connection; returns only by raising (closed, broken, idle too long)."""
        reader, writer = await asyncio.wait_for(self._connect(), 5.0)
        try:
            path = f"{self.base_path}/api/v1/xds/stream?id={quote(self.node_id)}&kind={self.kind}"
            if self.admin_port:
                path += f"&admin_port={self.admin_port}"
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{self._auth_header()}"
                f"accept: text/event-stream\r\ncache-control: no-cache\r\n\r\n".encode()
            )
            await writer.drain()
            callbacks = _StreamParser()
            parser = httptools.HttpResponseParser(callbacks)
            decoder = SseDecoder()
            while True:
                data = await asyncio.wait_for(reader.read(65536), STREAM_IDLE_TIMEOUT)
                if not data:
                    raise StreamError("control plane closed the stream")
                parser.feed_data(data)
                if callbacks.headers_done and not self.connected:
                    status = parser.get_status_code()
                    if status != 200:
                        raise StreamError(f"control plane answered {status} to the stream request")
                    self.connected = True
                    self.connects += 1
                    self.state.source_error = None
                if callbacks.body:
                    text = b"".join(callbacks.body).decode("utf-8")
                    callbacks.body.clear()
                    for event, payload in decoder.feed(text):
                        if event == "snapshot":
                            self.snapshots_received += 1
                            self._on_snapshot(payload)
                if callbacks.done:
                    raise StreamError("control plane ended the stream")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _on_snapshot(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
        except ValueError as exc:
            version = None
            reason: str | None = self.state.reject(None, f"snapshot: not valid JSON: {exc}")
        else:
            version = doc.get("version") if isinstance(doc, dict) else None
            reason = self.state.apply(doc)
        if not isinstance(version, str) or not version:
            version = UNKNOWN_VERSION  # the ACK endpoint needs a non-empty version string
        ack: Ack = {"id": self.node_id, "version": version, "status": "ACK"}
        if reason is not None:
            ack["status"] = "NACK"
            ack["reason"] = reason
        task = asyncio.ensure_future(self._send_ack(ack))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def post(self, path: str, body: bytes) -> int:
        """POST a JSON ``body`` to ``path`` of the control plane; its status (raises OSError/TimeoutError).

        The one way the sidecar sends to the control plane (ACKs, spans): connection, host and the
        bootstrap token are set here for all of them.
        """
        reader, writer = await asyncio.wait_for(self._connect(), 5.0)
        try:
            writer.write(
                f"POST {self.base_path}{path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"{self._auth_header()}"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5.0)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        fields = status_line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1])
        log.warning("control plane answered %r to POST %s", status_line, path)
        return 0

    async def _send_ack(self, ack: Ack) -> None:
        body = json.dumps(ack).encode()
        try:
            status = await self.post("/api/v1/xds/ack", body)
            if not 200 <= status < 300:
                log.warning("control plane refused %s for %s: %s", ack["status"], ack["version"], status)
        except (OSError, TimeoutError) as exc:
            log.warning("could not send %s for %s: %s", ack["status"], ack["version"], exc)

    async def close(self) -> None:
        for task in list(self._ack_tasks):
            task.cancel()
