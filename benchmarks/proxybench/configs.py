"""Configuration files for the reference proxies (nginx, haproxy), tuned as their docs advise.

Each function returns the text of one self-contained config: everything (pid, logs, temp paths)
lives under the given work directory, nothing under /etc or /var is read or written, and every
listener binds 127.0.0.1 only.
"""

from __future__ import annotations

from pathlib import Path

# 100 bytes: what the upstream answers to every request (the proxies' responses must match it).
BODY = ("meshkit-bench " * 8)[:99] + "\n"
assert len(BODY) == 100


def nginx_main(workdir: Path, server_blocks: str) -> str:
    """nginx's main config around ``server_blocks`` (one worker, everything under ``workdir``)."""
    temp = workdir / "temp"
    return f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{server_blocks}
}}
"""


def nginx_upstream_conf(workdir: Path, port: int) -> str:
    """The origin: one worker answering every request with 200 and the fixed 100-byte BODY."""
    server = f"""    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{BODY.rstrip()}\\n";
        }}
    }}"""
    return nginx_main(workdir, server)


def nginx_proxy_conf(workdir: Path, port: int, upstream_port: int) -> str:
    """A reverse proxy with a keep-alive pool to the upstream (one worker, HTTP/1.1 upstream)."""
    server = f"""    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}"""
    return nginx_main(workdir, server)


def nginx_argv(binary: str, workdir: Path) -> list[str]:
    """Run nginx in the foreground with its prefix, config and early error log in ``workdir``."""
    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    return [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log")]


def haproxy_conf(port: int, upstream_port: int) -> str:
    """HTTP mode, one thread, keep-alive on both sides with connection reuse to the upstream."""
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream

backend upstream
    server nginx 127.0.0.1:{upstream_port}
"""


def haproxy_argv(binary: str, config: Path) -> list[str]:
    """Run haproxy in the foreground (``-db``), single process."""
    return [binary, "-db", "-f", str(config)]
