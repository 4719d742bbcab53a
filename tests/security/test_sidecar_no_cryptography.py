"""The running sidecar never loads ``cryptography`` (about 10 MiB of RSS in every process that does).

Keys and CSRs are made by the short-lived helper process (``python -m meshkit.proxy.tls.csr_helper``)
and the CA's answer is checked with ``ssl`` alone (``meshkit.proxy.tls.verify``). import-linter
checks the imports (``.importlinter``: ``sidecar-no-cryptography``, ``x509-only-in-the-helper``);
these tests check real processes:

* every module the sidecar can load (entry point, the three mTLS entry points, renewal, the CA
  client) imported into a fresh interpreter leaves ``cryptography`` out of ``sys.modules``;
* a real sidecar process (``python -m meshkit.proxy --control ... --ca-token-file ...``) against a
  real control plane with a CA gets its certificate and rotates it (so the helper ran several
  times) without ``cryptography`` mapped into its memory (``/proc/PID/maps``);
* the same for a sidecar with certificate files (``--tls-dir``);
* the one exception: a sidecar whose snapshot carries a RequestAuthentication verifies tokens with
  the JOSE library (``proxy.filters.jwt`` imports ``joserfc`` lazily, only then), so it does map
  ``cryptography``, and answers 200 / 401 as Istio does.

The e2e twin over a whole mesh: ``test_e2e_rotation.py::test_sidecars_never_load_cryptography``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.ca import CertificateAuthority
from meshkit.control.server import run_control_plane
from tests.proxy.conftest import ROOT, spawn_proxy, stop_process
from tests.security.test_e2e_static_tls import snapshot, write_tls_dir

IDENTITY = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
SIDECAR_MODULES = (
    "meshkit.proxy.main", "meshkit.proxy.tls", "meshkit.proxy.tls.sidecar", "meshkit.proxy.tls.static",
    "meshkit.proxy.tls.inbound", "meshkit.proxy.tls.renewal", "meshkit.proxy.tls.ca_client",
    "meshkit.proxy.tls.csr_client", "meshkit.proxy.filters.jwt", "meshkit.proxy.snapshot",
)


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def cryptography_mappings(pid: int) -> list[str]:
    return [line for line in maps(pid).splitlines() if "/cryptography/" in line]


def test_the_detector_sees_cryptography_where_it_is_loaded() -> None:
    """The maps check is not vacuous: this test process imported cryptography and it finds it."""
    assert CertificateAuthority is not None  # meshkit.control.ca imports cryptography.x509
    assert cryptography_mappings(os.getpid())


def test_no_sidecar_module_imports_cryptography() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {SIDECAR_MODULES!r}: importlib.import_module(name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('cryptography', 'joserfc')]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    result = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []
    helper = subprocess.run(  # and the helper, which must load it, does
        [sys.executable, "-c",
         "import sys, meshkit.proxy.tls.csr_helper; print('cryptography' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert helper.stdout.strip() == "True"


async def _admin_json(session: aiohttp.ClientSession, port: int, page: str) -> Any:
    async with session.get(f"http://127.0.0.1:{port}{page}") as response:
        return await response.json(content_type=None)


async def test_a_sidecar_with_a_ca_rotates_without_loading_cryptography(tmp_path: Path) -> None:
    running = await run_control_plane(port=0, state_dir=tmp_path / "control", record_address=False,
                                      ca_ttl=timedelta(seconds=2))
    proxy = None
    try:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout, headers=running.admin_headers) as session:
            endpoint = {"instance": "productpage-v1-0", "workload": "productpage-v1",
                        "service": "productpage",
                        "namespace": "default", "address": "127.0.0.1", "port": 1,
                        "labels": {"app": "productpage", "version": "v1"},
                        "service_account": "bookinfo-productpage", "has_sidecar": True}
            async with session.post(f"{running.url}/api/v1/registry/services",
                                    json={"name": "productpage", "namespace": "default", "port": 9080}) as r:
                assert r.status == 200, await r.text()
            async with session.post(f"{running.url}/api/v1/registry/endpoints", json=endpoint) as r:
                assert r.status == 200, await r.text()
            token_file = tmp_path / "token"
            token_file.write_text(running.control_plane.tokens.issue_token(IDENTITY))
            proxy = spawn_proxy(["--control", running.url, "--id", "productpage-v1-0.default",
                                 "--ca-token-file", str(token_file)], tmp_path)
            deadline = time.monotonic() + 30  # 2 s certificates rotate every ~1 s
            certs: dict[str, Any] = {}
            while time.monotonic() < deadline:
                certs = await _admin_json(session, proxy.admin, "/certs")
                if certs.get("certificates_issued", 0) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert certs.get("certificates_issued", 0) >= 3, f"no rotations: {certs}"
            assert certs["identity"] == IDENTITY and certs["last_error"] is None
            assert "_ssl" in maps(proxy.proc.pid), "the sidecar does not look like an mTLS sidecar"
            assert cryptography_mappings(proxy.proc.pid) == []
    finally:
        if proxy is not None:
            assert stop_process(proxy) == 0
        await running.close()


async def test_a_sidecar_with_certificate_files_does_not_load_cryptography(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    tls_dir = write_tls_dir(ca, IDENTITY, tmp_path / "tls")
    config = tmp_path / "snapshot.json"
    config.write_text(json.dumps(snapshot("productpage", IDENTITY, app_port=1)))
    proxy = spawn_proxy(["--config", str(config), "--tls-dir", str(tls_dir)], tmp_path)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            certs = await _admin_json(session, proxy.admin, "/certs")
        assert certs["identity"] == IDENTITY and certs["ready"]
        assert "_ssl" in maps(proxy.proc.pid)
        assert cryptography_mappings(proxy.proc.pid) == []
    finally:
        assert stop_process(proxy) == 0


async def test_a_sidecar_with_a_request_authentication_loads_the_jose_library_and_verifies(
    tmp_path: Path,
) -> None:
    from meshkit.config.compile import compile_snapshot  # noqa: PLC0415
    from meshkit.config.loader import load_resources  # noqa: PLC0415
    from meshkit.config.registry import Node, RegistryView, Service  # noqa: PLC0415
    from tests.proxy.conftest import EchoApp  # noqa: PLC0415
    from tests.security.test_jwt import DEMO, REQUEST_AUTHENTICATION  # noqa: PLC0415

    app = EchoApp("httpbin")
    await app.start()
    node = Node("httpbin-v1-0", "foo", "httpbin-v1", "httpbin", {"app": "httpbin"}, app_port=app.port)
    doc = compile_snapshot(load_resources(REQUEST_AUTHENTICATION),
                           RegistryView(services=(Service("httpbin", "foo", 8000),)), node)
    config = tmp_path / "snapshot.json"
    config.write_text(json.dumps(doc))
    proxy = spawn_proxy(["--config", str(config)], tmp_path)
    try:
        url = f"http://127.0.0.1:{proxy.inbound}/headers"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async with session.get(url, headers={"Authorization": f"Bearer {DEMO}"}) as response:
                assert response.status == 200, await response.text()
                echoed = dict((await response.json())["headers"])
            assert "authorization" not in echoed  # forwardOriginalToken: false
            async with session.get(url, headers={"Authorization": "Bearer a.b.c"}) as response:
                assert response.status == 401
                assert await response.text() == "Jwt header is an invalid JSON"
            async with session.get(url) as response:
                assert response.status == 200
        assert cryptography_mappings(proxy.proc.pid), "the JWT sidecar should have loaded the JOSE library"
    finally:
        assert stop_process(proxy) == 0
        await app.stop()
