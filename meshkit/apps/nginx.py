"""The ``nginx`` image on the local mesh: static files over HTTP or HTTPS, configured by the pod's nginx.conf.

Istio's tasks deploy the official ``nginx`` image with a ConfigMap mounted at ``/etc/nginx`` (their
``nginx.conf``) and Secrets mounted as files (``/etc/nginx-server-certs/tls.crt``...). The local
runtime writes those volumes under one directory per pod (``--root``: the pod's ``/``), and this
process reads ``<root>/etc/nginx/nginx.conf`` with `nginx_conf` (no file: the image's default
config, port 80 serving the welcome page), then serves the ``server`` listening on the
container's port (``--listen-port``, the port the Deployment declares) on its own app port:

- with ``listen ... ssl``: TLS with ``ssl_certificate``/``ssl_certificate_key`` (read from the
  pod's files), a ``server`` chosen by SNI among those on the port; ``ssl_client_certificate`` +
  ``ssl_verify_client on`` ask for a client certificate and, as nginx, a request without one
  gets ``400 No required SSL certificate was sent``; a certificate the CA did not sign fails the
  handshake (nginx answers ``400 The SSL certificate error`` instead: Python's ``ssl`` has no
  verify callback to let the handshake finish); plain HTTP sent to the TLS port gets
  ``400 The plain HTTP request was sent to HTTPS port``;
- ``root``/``index``: files under the pod's root; the image's own ``/usr/share/nginx/html``
  (``index.html``: "Welcome to nginx!", ``50x.html``) is built in; others are ``404 Not Found``,
  methods other than GET/HEAD ``405 Not Allowed``, nginx's error pages and ``Server`` header;
- one access-log line per request on stdout (nginx's ``combined`` format: ``kubectl logs``).

A config nginx would refuse, or that uses what the stand-in does not do, stops the process with
nginx's ``[emerg]`` message naming the file and line (the pod's CrashLoopBackOff). Directives
without effect here are printed as ``[warn]`` lines at start.

It must not import anything else from meshkit but `nginx_conf`, nor aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from email.utils import formatdate
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from meshkit.apps.nginx_conf import DEFAULT_ROOT, NginxConfError, Server, check_tls, parse

VERSION = "1.27.3"
SERVER_HEADER = f"nginx/{VERSION}"
CONF_PATH = "/etc/nginx/nginx.conf"
MAX_HEADER = 8192
MAX_BODY = 1 << 20
IDLE_TIMEOUT_S = 75.0  # nginx's keepalive_timeout default
HANDSHAKE_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 256

WELCOME = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""
FIFTY_X = """<!DOCTYPE html>
<html>
<head>
<title>Error</title>
</head>
<body>
<h1>An error occurred.</h1>
<p>Sorry, the page you are looking for is currently unavailable.<br/>
Please try again later.</p>
<p><em>Faithfully yours, nginx.</em></p>
</body>
</html>
"""
BUILT_IN = {"index.html": WELCOME, "50x.html": FIFTY_X}  # the image's /usr/share/nginx/html
REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Moved Temporarily",
           400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed",
           413: "Request Entity Too Large", 500: "Internal Server Error",
           503: "Service Temporarily Unavailable"}
DEFAULT_CONF = 'events {}\nhttp {\n  server {\n    listen 80;\n    server_name localhost;\n  }\n}\n'


def error_page(status: int, detail: str | None = None) -> bytes:
    """nginx's built-in error page: ``400 No required SSL certificate was sent`` keeps ``400 Bad
    Request`` as its heading and the detail below it."""
    reason = REASONS.get(status, "")
    title = f"{status} {detail or reason}"
    extra = f"<center>{detail}</center>\r\n" if detail else ""
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n{extra}"
            f"<hr><center>{SERVER_HEADER}</center>\r\n</body>\r\n</html>\r\n").encode()


class Pod:
    """The pod's file system: absolute paths of nginx.conf resolved under ``root``."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def path(self, absolute: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        found = self.path(absolute)
        return found.read_text() if found is not None and found.is_file() else None


def _context(server: Server, pod: Pod) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    cert, key = pod.path(server.certificate or ""), pod.path(server.certificate_key or "")
    for wanted, found in ((server.certificate, cert), (server.certificate_key, key)):
        if found is None or not found.is_file():
            raise NginxConfError(f'cannot load certificate "{wanted}": BIO_new_file() failed (SSL: '
                                 "error:80000002:system library::No such file or directory)")
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise NginxConfError(f'cannot load certificate key "{server.certificate_key}": {exc}') from None
    if server.client_certificate and server.verify_client != "off":
        ca = pod.path(server.client_certificate)
        if ca is None or not ca.is_file():
            raise NginxConfError(f'SSL_CTX_load_verify_locations("{server.client_certificate}") failed')
        context.load_verify_locations(str(ca))
        context.verify_mode = ssl.CERT_OPTIONAL  # nginx asks; "on" answers 400 to a request without one
    return context


class Nginx:
    """The servers on one port and the requests they answer."""

    def __init__(self, servers: list[Server], pod: Pod) -> None:
        self.servers = servers
        self.pod = pod
        self.contexts = {id(s): _context(s, pod) for s in servers if s.ssl}
        self.tls = bool(self.contexts)
        self.connections: set[asyncio.Task[None]] = set()
        self.context: ssl.SSLContext | None = None
        if self.tls:
            first = next(s for s in servers if s.ssl)
            self.context = self.contexts[id(first)]
            self.context.sni_callback = self._choose

    def _server(self, name: str | None) -> Server:
        if name:
            for server in self.servers:
                if name.lower() in (n.lower() for n in server.names):
                    return server
        return next((s for s in self.servers if s.default_server), self.servers[0])

    def _choose(self, ssl_object: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        ssl_object.context = self.contexts.get(id(self._server(name)), self.context)  # type: ignore[assignment]

    async def accept(self, sock: socket.socket) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= MAX_CONNECTIONS or task is None:
            sock.close()
            return
        self.connections.add(task)
        try:
            await self._connection(sock)
        except (ConnectionError, OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections.discard(task)

    async def _connection(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        peer = sock.getpeername()[0]
        plain_on_tls = False
        if self.tls:
            first = await _peek(sock)
            if not first:  # closed before a byte (a readiness check's connect): nothing to log
                sock.close()
                return
            plain_on_tls = first[0] != 0x16
        reader = asyncio.StreamReader(limit=MAX_HEADER * 2)
        protocol = asyncio.StreamReaderProtocol(reader)
        use_tls = self.context if self.tls and not plain_on_tls else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=use_tls,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if use_tls else None)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            _log(f"[info] SSL_do_handshake() failed ({exc}) while SSL handshaking, client: {peer}")
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            while await self._one_request(reader, writer, peer, plain_on_tls):
                pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                           plain_on_tls: bool) -> bool:
        """Answer one request; whether the connection stays open for another."""
        say = functools.partial(self._send, writer, peer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await say("-", "-", status=400, body=error_page(400), close=True, head=False)
            return False
        except (asyncio.IncompleteReadError, TimeoutError):
            return False
        lines = head.decode("latin-1").split("\r\n")
        request_line = lines[0]
        parts = request_line.split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        agent = headers.get("user-agent", "-")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await say(request_line, agent, status=400, body=error_page(400), close=True, head=False)
            return False
        method, target, version = parts
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await say(request_line, agent, status=413, body=error_page(413), close=True, head=False)
            return False
        if int(length):
            await reader.readexactly(int(length))
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if plain_on_tls:
            body = error_page(400, "The plain HTTP request was sent to HTTPS port")
            await say(request_line, agent, status=400, body=body, close=True, head=method == "HEAD")
            return False
        ssl_object = writer.get_extra_info("ssl_object")
        host = headers.get("host", "").rsplit(":", 1)[0] if "]" not in headers.get("host", "") else None
        sni = ssl_object.server_hostname if ssl_object is not None else None
        server = self._server(sni or host)
        if server.ssl and server.verify_client == "on" and ssl_object is not None \
                and ssl_object.getpeercert(binary_form=True) is None:
            body = error_page(400, "No required SSL certificate was sent")
            await say(request_line, agent, status=400, body=body, close=True, head=method == "HEAD")
            return False
        status, body, content_type = self._answer(server, method, target)
        await say(request_line, agent, status=status, body=body, close=not keep,
                         head=method == "HEAD", content_type=content_type)
        return keep

    def _answer(self, server: Server, method: str, target: str) -> tuple[int, bytes, str]:
        if server.returns is not None:
            code, text = server.returns
            return code, (text.encode() if text else error_page(code)), "text/plain" if text else "text/html"
        if method not in ("GET", "HEAD"):
            return 405, error_page(405), "text/html"
        path = unquote(target.split("?", 1)[0])
        if not path.startswith("/") or ".." in PurePosixPath(path).parts:
            return 400, error_page(400), "text/html"
        names = [path + index for index in server.index] if path.endswith("/") else [path]
        for candidate in names:
            found = self.pod.read(f"{server.root.rstrip('/')}{candidate}")
            if found is None and server.root.rstrip("/") == DEFAULT_ROOT:
                found = BUILT_IN.get(candidate.lstrip("/"))
            if found is not None:
                kind = "text/html" if candidate.endswith((".html", ".htm")) else "application/octet-stream"
                return 200, found.encode(), kind
        status = 403 if path.endswith("/") else 404  # a directory without an index file: 403, as nginx
        return status, error_page(status), "text/html"

    async def _send(self, writer: asyncio.StreamWriter, peer: str, request_line: str, agent: str, *,
                    status: int, body: bytes, close: bool, head: bool,
                    content_type: str = "text/html") -> None:
        reason = REASONS.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {SERVER_HEADER}",
                 f"Date: {formatdate(usegmt=True)}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", f"Connection: {'close' if close else 'keep-alive'}"]
        if status == 200:
            lines.append("Accept-Ranges: bytes")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body))
        await writer.drain()
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        _log(f'{peer} - - [{stamp}] "{request_line}" {status} {0 if head else len(body)} "-" "{agent}"')


async def _peek(sock: socket.socket) -> bytes:
    """The first bytes of a new connection, left in the socket (empty: the client closed)."""
    loop = asyncio.get_running_loop()
    for _ in range(200):
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            await asyncio.wait_for(ready, IDLE_TIMEOUT_S)
        finally:
            loop.remove_reader(sock.fileno())
        try:
            return sock.recv(8, socket.MSG_PEEK)
        except BlockingIOError:
            continue
    return b""


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _log(text: str) -> None:
    print(text, flush=True)


def load(root: Path | None, port: int) -> tuple[list[Server], list[str]]:
    """The servers of the pod's nginx.conf on ``port`` (the container's port), and the config's
    warnings; NginxConfError as nginx's ``[emerg]``."""
    pod = Pod(root)
    text = pod.read(CONF_PATH)
    config = parse(text if text is not None else DEFAULT_CONF, CONF_PATH)
    servers = [s for s in config.servers if s.port == port]
    if not servers:
        listening = sorted({s.port for s in config.servers})
        raise NginxConfError(f"no server in {CONF_PATH} listens on {port}, the container's port "
                             f"(it listens on {', '.join(map(str, listening)) or 'nothing'})")
    for server in servers:
        check_tls(server, CONF_PATH)
    ignored = [f"server on port {s.port} in {CONF_PATH}:{s.line} is not served: the local mesh serves "
               f"the container's port {port}" for s in config.servers if s.port != port]
    return servers, config.warnings + ignored


async def serve(host: str, port: int, nginx: Nginx, *, instance: str, version: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listener = socket.create_server((host, port), reuse_port=False)
    listener.setblocking(False)
    bound = listener.getsockname()
    print(json.dumps({"ready": True, "app": "nginx", "instance": instance, "version": version,
                      "host": bound[0], "port": bound[1], "tls": nginx.tls}), flush=True)

    running: set[asyncio.Task[None]] = set()

    async def accepting() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            task = asyncio.ensure_future(nginx.accept(conn))
            running.add(task)
            task.add_done_callback(running.discard)

    acceptor = asyncio.ensure_future(accepting())
    await stop.wait()
    acceptor.cancel()
    listener.close()
    for task in list(running):
        task.cancel()
    await asyncio.gather(acceptor, *running, return_exceptions=True)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m meshkit.apps nginx",
                                  description="the nginx image: static files by the pod's nginx.conf")
    top.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    top.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    top.add_argument("--version", default="latest", help="version label")
    top.add_argument("--instance", help="pod name (default nginx-0)")
    top.add_argument("--root", type=Path, help="the pod's file system root (its mounted volumes)")
    top.add_argument("--listen-port", type=int, default=80,
                     help="the container's port: the nginx.conf server on it is served (default 80)")
    top.add_argument("--service-port", type=int, default=80, help="accepted as by every app; unused")
    top.add_argument("--seed", type=int, help="accepted as by every app; unused")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshkit.apps nginx --port N --root DIR --listen-port 443``."""
    args = parser().parse_args(argv)
    instance = args.instance or "nginx-0"
    try:
        servers, warnings = load(args.root, args.listen_port)
        nginx = Nginx(servers, Pod(args.root))
    except NginxConfError as exc:
        print(f"nginx: [emerg] {exc}", file=sys.stderr, flush=True)
        return 1
    for warning in warnings:
        print(f"nginx: [warn] {warning}", file=sys.stderr, flush=True)
    try:
        asyncio.run(serve(args.host, args.port, nginx, instance=instance, version=args.version))
    except OSError as exc:
        print(f"nginx: [emerg] bind() to {args.host}:{args.port} failed ({exc.strerror or exc})",
              file=sys.stderr)
        return 1
    return 0
