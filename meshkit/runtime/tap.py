"""`meshkit tap A B`: the first bytes on the wire between two sidecars, for the mTLS lesson.

How: a temporary TCP relay on 127.0.0.1 is put in front of B's inbound sidecar port by
re-registering B's endpoint with the relay's port (every caller's sidecar then connects to
B through the relay, which only copies bytes, so mTLS still runs end to end between the two
sidecars). A few requests are sent from A's sidecar to B's service until the relay has seen
a connection, the first ``max_bytes`` of each direction are kept, and B's endpoint is put
back. Bounded in time (``seconds``) and bytes. With mTLS the learner sees TLS records
(``16 03 01 ...`` ClientHello, then ``17 03 03`` application data); with mTLS disabled, the
request line itself (``GET /reviews/0 HTTP/1.1``).

It must not do: TLS or HTTP parsing of the captured bytes (they are shown as they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from meshkit.control.client import ControlClient

SYNC_WAIT = 15.0
MAX_ATTEMPTS = 20


@dataclass
class WireCapture:
    """What the relay saw on the first connection between the two sidecars."""

    client_to_server: bytearray = field(default_factory=bytearray)  # A's sidecar -> B's sidecar
    server_to_client: bytearray = field(default_factory=bytearray)
    connections: int = 0
    requests_sent: int = 0
    statuses: list[int] = field(default_factory=list)

    def complete(self) -> bool:
        return self.connections > 0 and bool(self.client_to_server) and bool(self.server_to_client)


def describe(data: bytes) -> str:
    """One line saying what the bytes look like to a learner."""
    if not data:
        return "nothing"
    if len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03:
        return "a TLS handshake record (0x16, version 3.x): encrypted from here on"
    if len(data) >= 3 and data[0] == 0x17 and data[1] == 0x03:
        return "TLS application data (0x17): encrypted"
    head = data.split(b"\r\n", 1)[0]
    if head.isascii() and (b" HTTP/1." in head or head.startswith(b"HTTP/1.")):
        return f"plaintext HTTP: {head.decode('ascii')!r}"
    return "unrecognised bytes"


def hexdump(data: bytes, width: int = 16) -> list[str]:
    """``offset  hex bytes  |ascii|`` lines, like ``hexdump -C``."""
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset : offset + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<{width * 3 - 1}}  |{text}|")
    return lines


class _Relay:
    """Copies bytes both ways between callers and ``target_port``, recording the first connection."""

    def __init__(self, target_port: int, capture: WireCapture, max_bytes: int) -> None:
        self.target_port = target_port
        self.capture = capture
        self.max_bytes = max_bytes
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.capture.connections += 1
        record = self.capture.connections == 1
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, self.capture.client_to_server if record else None),
            self._pump(up_reader, writer, self.capture.server_to_client if record else None),
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    keep: bytearray | None) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if keep is not None and len(keep) < self.max_bytes:
                    keep += data[: self.max_bytes - len(keep)]
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)


def _endpoint(client: ControlClient, instance: str, namespace: str) -> dict[str, Any]:
    found = client.request("GET", "registry/endpoints")["endpoints"]
    for endpoint in found:
        if endpoint["instance"] == instance and endpoint["namespace"] == namespace:
            return dict(endpoint)
    names = ", ".join(sorted(e["instance"] for e in found))
    raise ValueError(f"tap: {instance!r} is not a registered endpoint (known: {names})")


async def tap(control_url: str, source_proxy: str | None, target: str, *, path: str = "/health",
              namespace: str = "default", max_bytes: int = 256, seconds: float = 10.0,
              token: str | None = None) -> WireCapture:
    """Capture the first bytes from the sidecar at ``source_proxy`` to instance ``target``.

    With ``source_proxy=None`` the requests go in plaintext straight to the target's inbound
    port, as a client outside the mesh (no sidecar, like ``legacy``) sends them. ``token``: the
    control plane's admin token (None: this machine's, `meshkit.control.auth.discover_admin_token`).
    """
    if not 16 <= max_bytes <= 65536:
        raise ValueError(f"tap: max bytes must be in [16, 65536], got {max_bytes}")
    if not 0 < seconds <= 60:
        raise ValueError(f"tap: seconds must be in (0, 60], got {seconds}")
    client = ControlClient(control_url, timeout=SYNC_WAIT + 5.0, token=token)
    original = await asyncio.to_thread(_endpoint, client, target, namespace)
    service_port = await asyncio.to_thread(_service_port, client, original["service"], namespace)
    capture = WireCapture()
    relay = _Relay(int(original["port"]), capture, max_bytes)
    relay_port = await relay.start()
    deadline = time.monotonic() + seconds
    try:
        await asyncio.to_thread(client.request, "POST", "registry/endpoints",
                                json_body={**original, "port": relay_port})
        await asyncio.to_thread(client.proxy_status, SYNC_WAIT)
        url = f"http://{original['service']}.{namespace}:{service_port}{path}"
        direct = f"http://127.0.0.1:{relay_port}{path}"  # an out-of-mesh client: no sidecar, no TLS
        host = {"Host": f"{original['service']}:{service_port}"}
        timeout = aiohttp.ClientTimeout(total=max(1.0, min(5.0, deadline - time.monotonic())))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(MAX_ATTEMPTS):
                if capture.complete() or time.monotonic() >= deadline:
                    break
                capture.requests_sent += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    request = (session.get(url, proxy=source_proxy) if source_proxy is not None
                               else session.get(direct, headers=host))
                    async with request as resp:
                        await resp.read()
                        capture.statuses.append(resp.status)
                await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(client.request, "POST", "registry/endpoints", json_body=original)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(client.proxy_status, SYNC_WAIT)
        await relay.close()
    return capture


def _service_port(client: ControlClient, service: str, namespace: str) -> int:
    for svc in client.request("GET", "registry/services")["services"]:
        if svc["name"] == service and svc["namespace"] == namespace:
            return int(svc["port"])
    raise ValueError(f"tap: no service {service!r} in namespace {namespace!r}")
