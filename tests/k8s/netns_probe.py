"""Helper process for the capture tests, run inside a network namespace with ``ip netns exec``.

``listen NAME PORT...`` binds every port on 0.0.0.0, prints ``ready``, and answers each connection
with ``<NAME> <port it was accepted on> <original destination>`` (SO_ORIGINAL_DST, i.e. where the
client meant to go before iptables redirected it). It exits by itself after 60 s.
``connect HOST PORT`` prints the first line it gets back and exits 0 (1 on any failure).
``tls-listen NAME PORT CERT KEY`` serves TLS on PORT and answers ``<NAME> tls <SNI>`` after the
handshake; ``tls-connect HOST PORT CAFILE SERVERNAME`` verifies the server against CAFILE and
SERVERNAME and prints that line. ``http HOST PORT HOSTHEADER`` sends one GET and prints the status line.
Standard library only: it may run as uid 1337 through ``setpriv``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys

SO_ORIGINAL_DST = 80
LIFETIME_S = 60.0


def original_destination(sock: socket.socket) -> str:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return "none"
    port, packed = struct.unpack_from("!2xH4s", raw)
    return f"{socket.inet_ntoa(packed)}:{port}"


async def listen(name: str, ports: list[int]) -> None:
    async def serve(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        writer.write(f"{name} {port} {original_destination(sock)}\n".encode())
        await writer.drain()
        writer.close()

    servers = []
    for port in ports:
        servers.append(await asyncio.start_server(
            lambda r, w, p=port: serve(p, r, w), "0.0.0.0", port, reuse_address=True
        ))
    print("ready", flush=True)
    await asyncio.sleep(LIFETIME_S)
    for server in servers:
        server.close()


def connect(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.settimeout(5)
            data = b""
            while not data.endswith(b"\n") and len(data) < 200:
                chunk = sock.recv(200)
                if not chunk:
                    break
                data += chunk
    except OSError as error:
        print(f"error {error}", flush=True)
        return 1
    print(data.decode().strip(), flush=True)
    return 0


async def tls_listen(name: str, port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: dict[int, str] = {}

    def remember(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        names[id(sock)] = server_name or "none"

    context.sni_callback = remember  # type: ignore[assignment]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write(f"{name} tls {names.get(id(ssl_object), 'none')}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "0.0.0.0", port, ssl=context, reuse_address=True)
    print("ready", flush=True)
    await asyncio.sleep(LIFETIME_S)
    server.close()


def tls_connect(host: str, port: int, cafile: str, server_name: str) -> int:
    context = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as sock:
            sock.settimeout(5)
            print(sock.recv(200).decode().strip(), flush=True)
    except (OSError, ssl.SSLError) as error:
        print(f"error {error}", flush=True)
        return 1
    return 0


def http(host: str, port: int, host_header: str) -> int:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
            print(sock.recv(200).decode(errors="replace").split("\r\n")[0], flush=True)
    except OSError as error:
        print(f"error {error}", flush=True)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["listen"] and len(argv) > 2:
        asyncio.run(listen(argv[1], [int(p) for p in argv[2:]]))
        return 0
    if argv[:1] == ["connect"] and len(argv) == 3:
        return connect(argv[1], int(argv[2]))
    if argv[:1] == ["tls-listen"] and len(argv) == 5:
        asyncio.run(tls_listen(argv[1], int(argv[2]), argv[3], argv[4]))
        return 0
    if argv[:1] == ["tls-connect"] and len(argv) == 5:
        return tls_connect(argv[1], int(argv[2]), argv[3], argv[4])
    if argv[:1] == ["http"] and len(argv) == 4:
        return http(argv[1], int(argv[2]), argv[3])
    print("usage: netns_probe.py listen NAME PORT... | connect HOST PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
