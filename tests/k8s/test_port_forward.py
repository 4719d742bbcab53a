"""`meshkit.k8s.port_forward`: the managed ``kubectl port-forward`` subprocess.

KMock cannot serve ``pods/portforward`` (kubectl speaks SPDY/WebSocket streams to it), so a real
port-forward cannot be run here. What is tested instead, each with a real process:

* the real ``kubectl`` accepts the command line (it fails on the unreachable cluster, not on a
  flag), and its failure comes back as the error, with kubectl's words;
* a stand-in for kubectl (a small Python script, below) that does what kubectl does on success:
  binds a free local port, prints kubectl's ``Forwarding from 127.0.0.1:PORT -> 15010`` line and
  relays TCP to the control plane. Through it a `ClusterClient` reads proxy-status from a real
  control plane following KMock, while its writes still go to KMock; closing stops the process;
* the bounded wait when nothing is printed, and the stop.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.control.client import ControlUnreachable
from meshkit.k8s.control_plane import RunningKubernetesControlPlane
from meshkit.k8s.port_forward import PortForward, PortForwardError, port_forward_argv
from meshkit.k8s.targets import cluster_client
from tests.k8s import kube_objects as k
from tests.k8s.cluster_harness import objects, write_kubeconfig

pytestmark = pytest.mark.timeout(60)

STAND_IN = '''
import os, socket, sys, threading, time
with open(os.environ["FAKE_KUBECTL_ARGV"], "w") as out:
    out.write("\\n".join(sys.argv[1:]))
mode = os.environ.get("FAKE_KUBECTL_MODE", "forward")
if mode == "silent":
    time.sleep(60)
    sys.exit(0)
target_host, target_port = os.environ["FAKE_KUBECTL_TARGET"].rsplit(":", 1)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print(f"Forwarding from 127.0.0.1:{server.getsockname()[1]} -> 15010", flush=True)
print(f"Forwarding from [::1]:{server.getsockname()[1]} -> 15010", flush=True)

def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    client, _ = server.accept()
    print("Handling connection for 15010", flush=True)
    upstream = socket.create_connection((target_host, int(target_port)))
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
'''


@pytest.fixture()
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "kubectl"
    path.write_text(f"#!{sys.executable}\n{STAND_IN}")
    path.chmod(0o755)
    return path


def test_the_real_kubectl_takes_the_command_line_and_its_failure_is_the_error(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    # the discard port: nothing listens there
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:9", user={"token": "t"})
    argv = port_forward_argv("kind-meshkit")
    assert argv == ["kubectl", "--context", "kind-meshkit", "-n", "meshkit-system", "port-forward",
                    "svc/meshkit-control", ":15010", "--address", "127.0.0.1"]
    argv[1:1] = ["--kubeconfig", str(config)]
    forward = PortForward(argv)
    with pytest.raises(PortForwardError) as failed:
        forward.start(timeout_s=30)
    text = str(failed.value)
    assert "127.0.0.1:9" in text and "refused" in text, text  # kubectl's own words
    assert "unknown flag" not in text and "unknown command" not in text
    assert not forward.running()


async def test_reads_through_the_forwarded_port_and_close_stops_it(
        kmock: Any, session: aiohttp.ClientSession, plane: RunningKubernetesControlPlane,
        stand_in: Path, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", str(kmock.url).rstrip("/"), user={"token": "t"})
    argv_file = tmp_path / "argv"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAKE_KUBECTL_ARGV", str(argv_file))
        env.setenv("FAKE_KUBECTL_TARGET", plane.url.removeprefix("http://"))
        env.setenv("MESHKIT_KUBE_READS", "port-forward")
        client = await asyncio.to_thread(cluster_client, "kind", kubeconfig=str(config),
                                         kubectl=str(stand_in))
    try:
        assert argv_file.read_text().split("\n") == [
            "--kubeconfig", str(config), "--context", "kind-meshkit", "-n", "meshkit-system", "port-forward",
            "svc/meshkit-control", ":15010", "--address", "127.0.0.1"]
        assert client.url.startswith("http://127.0.0.1:") and str(kmock.url) not in client.url
        applied = await asyncio.to_thread(client.apply, k.istio_documents())
        assert applied["revision"] == plane.control_plane.store.revision >= 1  # mirror seen via the forward
        assert len(await objects(session, kmock, "/apis/networking.istio.io/v1/virtualservices")) == 1
        status = await asyncio.to_thread(client.proxy_status)
        assert status == {"revision": plane.control_plane.store.revision, "proxies": []}
    finally:
        await asyncio.to_thread(client.close)
    assert not any(r.url.path.startswith("/api/v1/namespaces/meshkit-system/services") for r in list(kmock))
    with pytest.raises(ControlUnreachable):  # the forwarder is gone: nothing listens there any more
        await asyncio.to_thread(client.proxy_status)


def test_nothing_printed_is_a_bounded_wait_then_stopped(stand_in: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KUBECTL_ARGV", str(tmp_path / "argv"))
    monkeypatch.setenv("FAKE_KUBECTL_MODE", "silent")
    forward = PortForward([str(stand_in), "port-forward"])
    with pytest.raises(PortForwardError) as silent:
        forward.start(timeout_s=1.0)
    assert "printed no 'Forwarding from' line within 1 s" in str(silent.value)
    assert not forward.running() and forward.process is None


def test_a_missing_kubectl_says_how_to_get_it() -> None:
    with pytest.raises(PortForwardError) as missing:
        PortForward(["kubectl-that-is-not-installed", "port-forward"]).start(timeout_s=1.0)
    assert "is not installed" in str(missing.value) and "service proxy" in str(missing.value)
