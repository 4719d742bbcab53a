"""`meshkit exec POD -c istio-proxy -- curl ...` to the pod's own ports (`meshkit.runtime.pod_loopback`):
"Ingress Gateway without TLS Termination"'s ``curl -sS -v -k --resolve nginx.example.com:443:127.0.0.1
https://nginx.example.com`` from nginx's pod, against a real TLS server on 127.0.0.1 with the task's
own openssl certificates. The end-to-end run is tests/e2e/test_ingress_sni_passthrough.py."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshkit.runtime.exec_command import ExecError, execute, parse_curl
from meshkit.runtime.pod_loopback import PodCurlError, pod_ports, run, target
from meshkit.runtime.state import StateDir

PAGE = b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n</html>\n"
TASK_CURL = ["-sS", "-v", "-k", "--resolve", "nginx.example.com:443:127.0.0.1", "https://nginx.example.com"]
OPENSSL = """
mkdir example_certs
openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs/example.com.key -out example_certs/example.com.crt
openssl req -out example_certs/nginx.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs/nginx.example.com.key -subj "/CN=nginx.example.com/O=some organization"
openssl x509 -req -sha256 -days 365 -CA example_certs/example.com.crt -CAkey example_certs/example.com.key -set_serial 0 -in example_certs/nginx.example.com.csr -out example_certs/nginx.example.com.crt
"""  # noqa: E501 (the task's lines)


@dataclass
class Server:
    port: int
    certs: Path
    requests: list[bytes]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A TLS server with the task's nginx certificate, answering nginx's way (one request per connection)."""
    if shutil.which("openssl") is None:
        pytest.skip("the task's openssl is not installed")
    folder = tmp_path_factory.mktemp("pod-loopback")
    subprocess.run(["bash", "-c", "set -e\n" + OPENSSL], cwd=folder, check=True, capture_output=True,
                   timeout=60)
    certs = folder / "example_certs"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "nginx.example.com.crt", certs / "nginx.example.com.key")
    context.set_alpn_protocols(["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(listener.getsockname()[1], certs, [])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    tls = context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    continue  # a client that refused the certificate
                with tls:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    server.requests.append(data)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n"
                                b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(PAGE) + PAGE)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    listener.close()
    thread.join(10)


def row_for(server: Server) -> dict[str, object]:
    """nginx's pod as `meshkit status` lists it: container port 443 served on its app port."""
    return {"name": "my-nginx-0", "namespace": "default", "service": "my-nginx", "container_port": 443,
            "app_port": server.port, "admin_port": None, "inbound_port": None, "outbound_proxy": None,
            "healthy": True}


def curl_in_pod(server: Server, words: list[str], home: Path) -> tuple[int, str, str]:
    out: list[str] = []
    err: list[str] = []
    code = run(row_for(server), parse_curl(words), home, out=out.append, err=err.append)
    return code, "".join(out), "".join(err)


def test_the_tasks_check_from_the_proxy_container_shows_nginx_s_certificate_and_page(
        nginx: Server, tmp_path: Path) -> None:
    code, out, err = curl_in_pod(nginx, TASK_CURL, tmp_path)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[:4] == ["* Added nginx.example.com:443:127.0.0.1 to DNS cache",
                         "* Hostname nginx.example.com was found in DNS cache",
                         "*   Trying 127.0.0.1:443...",
                         "* Connected to nginx.example.com (127.0.0.1) port 443 (#0)"], err
    assert "* ALPN: server accepted http/1.1" in lines and "* Server certificate:" in lines, err
    assert "*  subject: CN=nginx.example.com; O=some organization" in lines, err
    assert "*  issuer: O=example Inc.; CN=example.com" in lines, err
    # -k: curl still says what the check found (the task's root is not in the pod's trust)
    assert ("*  SSL certificate verify result: unable to get local issuer certificate (20), "
            "continuing anyway.") in lines, err
    assert any(line.startswith("* SSL connection using TLSv1.") for line in lines), err
    request = lines[lines.index("> GET / HTTP/1.1"):]
    assert request[:2] == ["> GET / HTTP/1.1", "> Host: nginx.example.com"], err
    assert "< HTTP/1.1 200 OK" in lines and "< Server: nginx/1.22.1" in lines, err
    assert out == PAGE.decode()  # the body alone on stdout, as curl -v writes it
    # the request nginx received: Host the URL's name, SNI the same (the server's certificate was chosen)
    assert nginx.requests[-1].startswith(b"GET / HTTP/1.1\r\nHost: nginx.example.com\r\n"), nginx.requests


def test_with_the_tasks_root_the_certificate_verifies_and_without_k_it_must(nginx: Server,
                                                                           tmp_path: Path) -> None:
    root = str(nginx.certs / "example.com.crt")
    words = ["-sS", "-v", "--cacert", root, "--resolve", "nginx.example.com:443:127.0.0.1",
             "https://nginx.example.com"]
    code, out, err = curl_in_pod(nginx, words, tmp_path)
    assert code == 0 and "*  SSL certificate verify ok." in err.splitlines() and "Welcome to nginx!" in out
    code, out, err = curl_in_pod(nginx, [w for w in TASK_CURL if w != "-k"], tmp_path)
    assert code == 60 and out == "", (out, err)
    assert "curl: (60) SSL certificate problem: unable to get local issuer certificate" in err, err


def test_a_port_nothing_in_the_pod_listens_on_is_refused(nginx: Server, tmp_path: Path) -> None:
    code, out, err = curl_in_pod(nginx, ["-sS", "-k", "--resolve", "nginx.example.com:8443:127.0.0.1",
                                         "https://nginx.example.com:8443"], tmp_path)
    assert (code, out) == (7, "")
    assert "curl: (7) Failed to connect to nginx.example.com port 8443" in err, err
    code, _, err = curl_in_pod(nginx, ["-s", "-k", "https://127.0.0.1:8443"], tmp_path)
    assert (code, err) == (7, "")  # -s without -S: curl prints no error


def test_only_the_pod_itself_is_reachable_from_the_proxy_container() -> None:
    with pytest.raises(PodCurlError, match="pod's own ports"):
        target(parse_curl(["-k", "https://nginx.example.com"]))  # no --resolve: DNS, not the pod
    with pytest.raises(PodCurlError, match="pod's own ports"):
        target(parse_curl(["--resolve", "nginx.example.com:443:10.0.0.1", "https://nginx.example.com"]))
    found = target(parse_curl(["--resolve", "nginx.example.com:443:127.0.0.1", "https://nginx.example.com/x?y=1"]))
    assert (found.host, found.port, found.path) == ("nginx.example.com", 443, "/x?y=1")
    assert pod_ports({"container_port": 443, "app_port": 21380, "admin_port": 21300}) == {443: 21380,
                                                                                         15000: 21300}


def test_exec_routes_the_proxy_container_s_curl_to_the_pod_and_keeps_the_admin_page(nginx: Server,
                                                                                   tmp_path: Path) -> None:
    out: list[str] = []
    err: list[str] = []
    code = execute(StateDir(tmp_path), [row_for(nginx)], "my-nginx-0", ["curl", *TASK_CURL], out=out.append,
                   err=err.append, container="istio-proxy")
    assert code == 0 and "Welcome to nginx!" in "".join(out)
    assert "*  subject: CN=nginx.example.com" in "".join(err)
    # `curl localhost:15000/stats` in the proxy container stays the sidecar's admin page (none here)
    with pytest.raises(ExecError, match="has no sidecar"):
        execute(StateDir(tmp_path), [row_for(nginx)], "my-nginx-0", ["curl", "localhost:15000/stats"],
                out=out.append, container="istio-proxy")
