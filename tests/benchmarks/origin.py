"""A keep-alive HTTP/1.1 origin on 127.0.0.1 for the load generators' tests (fixture: conftest.py)."""

from __future__ import annotations

import asyncio

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Origin:
    """Counts the requests it answered; can stall one answer (``stall_at``) for ``stall_s``."""

    def __init__(self) -> None:
        self.requests = 0
        self.stall_at: int | None = None
        self.stall_s = 0.0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                if self.requests == self.stall_at:
                    await asyncio.sleep(self.stall_s)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
