"""Bounded config: alias bombs and oversized bodies get a 4xx naming the limit, the CA keeps signing
while a large apply is worked out, the diff of a huge change stays linear, history is pruned."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.config.loader import load_resources
from meshkit.control.ca import TOKENS_FILE, BootstrapTokens, spiffe_identity
from meshkit.control.server import ControlPlane, RunningControlPlane, run_control_plane
from meshkit.control.store import DIFF_MAX_LINES, config_diff
from tests.control.resources import DESTINATION_RULE, virtual_service

API = "/api/v1"
YAML = {"Content-Type": "application/yaml"}
# the 647-byte document of the review: nine levels of nine aliases (9**9 strings once expanded)
ALIAS_BOMB = "\n".join(
    [f'a0: &a0 ["{"lol" * 3}"' + ', "lol"' * 8 + "]"]
    + [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 9)]
) + "\n"


def big_virtual_service(routes: int, subset: str = "v1") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "big"},
            "spec": {"hosts": ["reviews"], "http": [
                {"match": [{"uri": {"prefix": f"/route-{n:07d}/"}}],
                 "route": [{"destination": {"host": "reviews", "subset": subset}}]} for n in range(routes)]}}


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json()


async def test_an_alias_bomb_is_refused_with_the_limit_named(control_plane: RunningControlPlane,
                                                             session: aiohttp.ClientSession) -> None:
    base = control_plane.url + API
    assert len(ALIAS_BOMB) < 700
    for path, refused in (("apply", 400), ("analyze", 200), ("delete", 400)):  # analyze reports, 200
        status, error = await call(session, "POST", f"{base}/{path}", data=ALIAS_BOMB, headers=YAML)
        text = json.dumps(error)
        assert status == refused and "MK0008" in text, (path, text)
        assert "nodes once its aliases are expanded" in text
    many = "".join(f"k{n}: *a\n" for n in range(150))
    status, error = await call(session, "POST", f"{base}/apply", data="a: &a x\n" + many, headers=YAML)
    assert status == 400 and "more than 100 alias references" in json.dumps(error)
    status, error = await call(session, "POST", f"{base}/apply", data="[" * 20000, headers=YAML)
    assert status == 400  # nesting beyond the parser's depth: a syntax error, not a crash
    status, error = await call(session, "POST", f"{base}/apply", data="[" * 200000,
                               headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in error["error"]
    status, health = await call(session, "GET", f"{base}/healthz")
    assert status == 200 and health["revision"] == 0  # nothing was applied


async def test_a_body_over_the_limit_is_413_naming_it(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with await run_control_plane(port=0, state_dir=tmp_path, with_ca=False, max_body=4096) as plane:
        status, error = await call(session, "POST", f"{plane.url}{API}/apply", data=b"#" * 5000, headers=YAML)
        assert status == 413 and "limit 4096 bytes" in error["error"] and "--max-body" in error["error"]
        status, _ = await call(session, "POST", f"{plane.url}{API}/apply", data=DESTINATION_RULE,
                               headers=YAML)
        assert status == 200


def _csr(identity: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def csrs_signed_while(session: aiohttp.ClientSession, base: str, ca_dir: Path,
                            applying: asyncio.Future[tuple[int, Any]], limit: int) -> int:
    """Sign CSRs back to back (each must succeed) until ``applying`` is done; how many were signed
    while it was still running. Bounded by ``limit``: the apply may end first on a fast machine."""
    identity = spiffe_identity("default", "bookinfo-reviews")
    token = BootstrapTokens.open(ca_dir / TOKENS_FILE).issue_token(identity)
    signed = 0
    for _ in range(limit):
        status, answer = await call(session, "POST", f"{base}/ca/sign",
                                    json={"csr": _csr(identity), "token": token})
        assert status == 200 and "BEGIN CERTIFICATE" in answer["cert_chain"]
        if applying.done():
            break
        signed += 1
    return signed


@pytest.fixture
async def plane_with_ca(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path)
    try:
        yield running
    finally:
        await running.close()


async def test_the_ca_signs_while_a_large_apply_is_worked_out(plane_with_ca: RunningControlPlane,
                                                              session: aiohttp.ClientSession,
                                                              tmp_path: Path) -> None:
    """The review: a big apply held the event loop, so no certificate was signed meanwhile."""
    base = plane_with_ca.url + API
    status, _ = await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    assert status == 200
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": [big_virtual_service(7000)]})
    assert 500_000 < len(body) < 1024 * 1024
    applying = asyncio.ensure_future(call(session, "POST", f"{base}/apply", data=body,
                                          headers={"Content-Type": "application/json"}))
    signed_during_apply = await csrs_signed_while(session, base, tmp_path / "ca", applying, 200)
    status, result = await applying
    assert status == 200 and result["changed"] is True
    assert signed_during_apply >= 3  # the old code signed nothing while the apply held the loop


def test_the_diff_of_a_huge_change_is_linear_and_complete() -> None:
    lines = DIFF_MAX_LINES * 3
    before = load_resources(big_virtual_service(lines // 4, "v1"))
    after = load_resources(big_virtual_service(lines // 4, "v2"))
    diff = config_diff({r.key: r for r in before}, {r.key: r for r in after})
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert diff.startswith("--- a/VirtualService/default/big\n+++ b/VirtualService/default/big\n@@ ")
    assert sum("subset: v1" in line for line in removed) == lines // 4
    assert sum("subset: v2" in line for line in added) == lines // 4
    small = config_diff({}, {r.key: r for r in load_resources(virtual_service("v1"))})
    assert small.startswith("--- /dev/null\n+++ b/VirtualService/default/reviews\n")


def test_history_is_pruned_and_rollback_names_what_was_pruned(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, with_ca=False, keep_revisions=3)
    try:
        for number in range(6):
            text = DESTINATION_RULE + "---\n" + virtual_service("v1", timeout=f"{number + 1}s")
            plane.store.apply(load_resources(text))
        assert [r.number for r in plane.store.history()] == [4, 5, 6]
        result = plane.store.rollback(4)
        assert result.changed and result.revision == 7
        assert [r.number for r in plane.store.history()] == [5, 6, 7]
        with pytest.raises(Exception, match="revision 2 was pruned: the control plane keeps the last 3"):
            plane.store.rollback(2)
    finally:
        plane.close()
    reopened = ControlPlane(tmp_path, with_ca=False, keep_revisions=3)
    try:
        assert reopened.store.revision == 7
        [stored] = reopened.store.get("VirtualService")
        assert stored.resource.to_dict()["spec"]["http"][0]["timeout"] == "4s"
    finally:
        reopened.close()
