"""A strict little HTTP/1.1 response reader for raw-socket tests (no client library smoothing things over)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def read_response(
    reader: asyncio.StreamReader, head_request: bool = False, wait: float = 10
) -> RawResponse:
    async with asyncio.timeout(wait):
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed before a response")
        parts = line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers: list[tuple[str, str]] = []
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = RawResponse(status, headers)
        if head_request or status in (204, 304) or 100 <= status < 200:
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = await reader.readexactly(int(length))
        elif (response.header("transfer-encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readline()).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            response.body = b"".join(chunks)
        else:
            response.body = await reader.read()
        return response


class RawConnection:
    """One client TCP connection for hand-written requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, head_request: bool = False, wait: float = 10) -> RawResponse:
        return await read_response(self.reader, head_request, wait)

    async def closed_by_peer(self, wait: float = 5) -> bool:
        """True when the peer closes (EOF) within ``wait`` seconds (extra bytes are discarded)."""
        try:
            async with asyncio.timeout(wait):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
