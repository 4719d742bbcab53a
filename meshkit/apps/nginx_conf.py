"""Reading an ``nginx.conf`` as nginx does, for the subset Istio's tasks configure (the ``nginx`` stand-in).

Istio's "Ingress Gateway without TLS Termination" and "Egress TLS Origination" tasks mount an
``nginx.conf`` from a ConfigMap into the ``nginx`` image: ``events {}`` and an ``http`` block with
``log_format``/``access_log``/``error_log`` and one ``server`` listening with ``ssl``. This module
parses nginx's syntax (directives ending in ``;``, blocks in braces, ``#`` comments, single and double
quotes with backslash escapes) and keeps, per ``server``:

- ``listen PORT [ssl] [default_server]`` (also ``ADDRESS:PORT``); ``server_name`` (first is the
  primary); ``root`` and ``index``; ``ssl_certificate``, ``ssl_certificate_key``,
  ``ssl_client_certificate``, ``ssl_verify_client on|off|optional``; ``return CODE [TEXT]``.

Directives that only shape logging, buffers or timeouts (``log_format``, ``access_log``,
``error_log``, ``sendfile``, ``keepalive_timeout``, ``worker_processes``, ``ssl_protocols``...)
are accepted and reported in ``warnings`` as having no effect on the local mesh; any other
directive, or one in the wrong block, is an error in nginx's own words with the file and line
(``unknown directive "proxy_pass" in /etc/nginx/nginx.conf:12``), so a learner sees what the
stand-in does not do instead of a silently different server. Paths stay as written (the pod's
view: ``/etc/nginx-server-certs/tls.crt``); the app maps them onto its mounted volumes.

Pure data: no files are opened here (``parse`` takes the text), no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAIN, EVENTS, HTTP, SERVER, LOCATION = "main", "events", "http", "server", "location"

# directives accepted with no effect on the local mesh, and the blocks they may appear in
NO_EFFECT: dict[str, frozenset[str]] = {
    name: frozenset(blocks) for names, blocks in (
        (("user", "worker_processes", "pid", "worker_rlimit_nofile", "daemon", "pcre_jit"), (MAIN,)),
        (("worker_connections", "multi_accept", "use", "accept_mutex"), (EVENTS,)),
        (("log_format", "include", "default_type", "sendfile", "tcp_nopush", "tcp_nodelay", "gzip",
          "types_hash_max_size", "server_names_hash_bucket_size", "client_max_body_size",
          "ssl_session_cache", "ssl_session_timeout", "ssl_prefer_server_ciphers", "ssl_protocols",
          "ssl_ciphers", "ssl_verify_depth", "server_tokens", "charset"), (HTTP, SERVER, LOCATION)),
        (("access_log", "error_log"), (MAIN, HTTP, SERVER, LOCATION)),
        (("keepalive_timeout", "send_timeout", "client_body_timeout", "client_header_timeout"),
         (HTTP, SERVER, LOCATION)),
    ) for name in names
}
# directives the stand-in acts on: the block each belongs in
USED: dict[str, frozenset[str]] = {
    "events": frozenset({MAIN}), "http": frozenset({MAIN}), "server": frozenset({HTTP}),
    "location": frozenset({SERVER}), "listen": frozenset({SERVER}), "server_name": frozenset({SERVER}),
    "root": frozenset({HTTP, SERVER, LOCATION}), "index": frozenset({HTTP, SERVER, LOCATION}),
    "ssl_certificate": frozenset({HTTP, SERVER}), "ssl_certificate_key": frozenset({HTTP, SERVER}),
    "ssl_client_certificate": frozenset({HTTP, SERVER}), "ssl_verify_client": frozenset({HTTP, SERVER}),
    "return": frozenset({SERVER, LOCATION}),
}
BLOCKS = frozenset({"events", "http", "server", "location"})
DEFAULT_ROOT = "/usr/share/nginx/html"  # the image's default, when no root is given


class NginxConfError(ValueError):
    """nginx's ``[emerg]``: the message names the file and line, as ``nginx -t`` prints it."""


@dataclass
class Server:
    """One ``server`` block, as the stand-in serves it."""

    port: int = 80
    ssl: bool = False
    default_server: bool = False
    names: list[str] = field(default_factory=list)
    root: str = DEFAULT_ROOT
    index: list[str] = field(default_factory=lambda: ["index.html", "index.htm"])
    certificate: str | None = None
    certificate_key: str | None = None
    client_certificate: str | None = None
    verify_client: str = "off"  # on | off | optional
    returns: tuple[int, str] | None = None  # a server-level ``return CODE [TEXT]``
    line: int = 0


@dataclass
class NginxConfig:
    servers: list[Server]
    warnings: list[str]

    def server_for(self, port: int, name: str | None) -> Server | None:
        """nginx's choice on ``port``: the server whose ``server_name`` is ``name``, else the port's
        ``default_server``, else its first."""
        on_port = [s for s in self.servers if s.port == port]
        if name:
            named = next((s for s in on_port if name.lower() in (n.lower() for n in s.names)), None)
            if named is not None:
                return named
        return next((s for s in on_port if s.default_server), on_port[0] if on_port else None)


@dataclass
class _Directive:
    name: str
    args: list[str]
    line: int
    children: list[_Directive] | None = None  # a block's directives


def _tokens(text: str, path: str) -> list[tuple[str, int, bool]]:
    """(token, line, quoted); ``{``, ``}`` and ``;`` are tokens of their own."""
    out: list[tuple[str, int, bool]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            out.append((c, line, False))
            i += 1
        elif c in "\"'":
            start, i, chars = line, i + 1, []
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] == "\n":
                    line += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise NginxConfError(f"unexpected end of file, expecting {c} in {path}:{start}")
            out.append(("".join(chars), start, True))
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "{};\"'":
                i += 1
            out.append((text[start:i], line, False))
    return out


def _tree(tokens: list[tuple[str, int, bool]], path: str) -> list[_Directive]:
    stack: list[list[_Directive]] = [[]]
    current: list[tuple[str, int, bool]] = []
    for token, line, quoted in tokens:
        if not quoted and token == ";":
            if not current:
                raise NginxConfError(f'unexpected ";" in {path}:{line}')
            stack[-1].append(_Directive(current[0][0], [t for t, _, _ in current[1:]], current[0][1]))
            current = []
        elif not quoted and token == "{":
            if not current:
                raise NginxConfError(f'unexpected "{{" in {path}:{line}')
            block = _Directive(current[0][0], [t for t, _, _ in current[1:]], current[0][1], [])
            stack[-1].append(block)
            assert block.children is not None
            stack.append(block.children)
            current = []
        elif not quoted and token == "}":
            if current:
                raise NginxConfError(f'unexpected "}}" in {path}:{line}')
            if len(stack) == 1:
                raise NginxConfError(f'unexpected "}}" in {path}:{line}')
            stack.pop()
        else:
            current.append((token, line, quoted))
    end = tokens[-1][1] if tokens else 1
    if current:
        raise NginxConfError(f'unexpected end of file, expecting ";" or "}}" in {path}:{end}')
    if len(stack) > 1:
        raise NginxConfError(f'unexpected end of file, expecting "}}" in {path}:{end}')
    return stack[0]


def parse(text: str, path: str = "/etc/nginx/nginx.conf") -> NginxConfig:
    """The servers ``text`` configures; NginxConfError (nginx's words, ``path:line``) for anything the
    stand-in cannot honour. A file with no ``http`` block configures no server."""
    config = NginxConfig([], [])
    tree = _tree(_tokens(text, path), path)
    _walk(tree, MAIN, config, None, inherited={}, path=path)
    if not any(d.name == "events" for d in tree):
        raise NginxConfError(f'no "events" section in configuration in {path}')
    return config


def _walk(directives: list[_Directive], context: str, config: NginxConfig, server: Server | None, *,
          inherited: dict[str, list[str]], path: str) -> None:
    scope = dict(inherited)  # http-level root/index/ssl_* apply to the servers inside
    for d in directives:
        where = f"{path}:{d.line}"
        if d.name in NO_EFFECT:
            if context not in NO_EFFECT[d.name]:
                raise NginxConfError(f'"{d.name}" directive is not allowed here in {where}')
            config.warnings.append(f'"{d.name}" in {where} has no effect on the local mesh')
            continue
        if d.name not in USED:
            raise NginxConfError(f'unknown directive "{d.name}" in {where} (the local mesh\'s nginx '
                                 f"serves static files over HTTP/HTTPS: {', '.join(sorted(USED))})")
        if context not in USED[d.name]:
            raise NginxConfError(f'"{d.name}" directive is not allowed here in {where}')
        if (d.name in BLOCKS) != (d.children is not None):
            if d.name in BLOCKS:
                raise NginxConfError(f'directive "{d.name}" has no opening "{{" in {where}')
            raise NginxConfError(f'directive "{d.name}" is not terminated by ";" in {where}')
        if d.name == "server":
            new = Server(line=d.line)
            _apply_scope(new, scope, path)
            assert d.children is not None
            _walk(d.children, SERVER, config, new, inherited={}, path=path)
            config.servers.append(new)
        elif d.name in ("events", "http", "location"):
            if d.name == "location":
                config.warnings.append(f'"location" in {where}: its directives apply to the whole server '
                                       "on the local mesh")
            assert d.children is not None
            _walk(d.children, d.name, config, server, inherited=scope, path=path)
        elif server is not None:
            _set(server, d, path)
        else:
            scope[d.name] = [*d.args, f"@{d.line}"]


def _apply_scope(server: Server, scope: dict[str, list[str]], path: str) -> None:
    for name, values in scope.items():
        *args, line = values
        _set(server, _Directive(name, args, int(line[1:])), path)


def _one(d: _Directive, path: str) -> str:
    if len(d.args) != 1:
        raise NginxConfError(f'invalid number of arguments in "{d.name}" directive in {path}:{d.line}')
    return d.args[0]


def _set(server: Server, d: _Directive, path: str) -> None:
    where = f"{path}:{d.line}"
    if d.name == "listen":
        if not d.args:
            raise NginxConfError(f'invalid number of arguments in "listen" directive in {where}')
        address = d.args[0].rsplit(":", 1)[-1] if not d.args[0].startswith("unix:") else ""
        if not address.isdigit() or not 0 < int(address) < 65536:
            raise NginxConfError(f'invalid port in "{d.args[0]}" of the "listen" directive in {where}')
        server.port = int(address)
        for flag in d.args[1:]:
            if flag == "ssl":
                server.ssl = True
            elif flag == "default_server":
                server.default_server = True
            elif flag in ("http2", "reuseport", "deferred"):
                pass  # accepted; the stand-in speaks HTTP/1.1
            else:
                raise NginxConfError(f'invalid parameter "{flag}" in {where}')
    elif d.name == "server_name":
        server.names = [n for n in d.args if n != '""']
    elif d.name == "root":
        server.root = _one(d, path)
    elif d.name == "index":
        server.index = list(d.args)
    elif d.name == "ssl_certificate":
        server.certificate = _one(d, path)
    elif d.name == "ssl_certificate_key":
        server.certificate_key = _one(d, path)
    elif d.name == "ssl_client_certificate":
        server.client_certificate = _one(d, path)
    elif d.name == "ssl_verify_client":
        value = _one(d, path)
        if value not in ("on", "off", "optional"):
            raise NginxConfError(f'invalid value "{value}" in "ssl_verify_client" directive, it must be '
                                 f'"on", "off", "optional" or "optional_no_ca" in {where}')
        server.verify_client = value
    elif d.name == "return":
        code = d.args[0] if d.args else ""
        if not code.isdigit() or len(d.args) > 2:
            raise NginxConfError(f'invalid return code "{code}" in {where}')
        server.returns = (int(code), d.args[1] if len(d.args) > 1 else "")


def check_tls(server: Server, path: str) -> None:
    """nginx's start-up checks for an ``ssl`` server: a certificate and its key; ``ssl_verify_client``
    needs ``ssl_client_certificate``."""
    where = f"{path}:{server.line}"
    if server.ssl and not server.certificate:
        raise NginxConfError(f'no "ssl_certificate" is defined for the "listen ... ssl" directive in {where}')
    if server.ssl and not server.certificate_key:
        raise NginxConfError(f'no "ssl_certificate_key" is defined for certificate "{server.certificate}" '
                             f"in {where}")
    if server.verify_client == "on" and not server.client_certificate:
        raise NginxConfError(f'no ssl_client_certificate for ssl_verify_client in {where}')
