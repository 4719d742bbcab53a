"""``operator/main.py`` as a real process against KMock: starts, serves its webhooks, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.k8s.operator import validate_handler_id
from tests.k8s.operator_harness import (
    admission_review,
    free_port,
    namespaces_parsed,
    prepare,
    until,
    watching_everything,
)

pytestmark = pytest.mark.timeout(90)

MAIN = Path(__file__).resolve().parents[2] / "operator" / "main.py"


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with session.get(url) as response:
            return response.status == 200
    return False


async def test_main_runs_the_operator(kmock: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    namespaces_parsed(monkeypatch)
    prepare(kmock)
    webhook_port, health_port = free_port(), free_port()
    log = (tmp_path / "operator.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(MAIN), "--managed", "meshkit-main-test",
        "--webhook-addr", "127.0.0.1", "--webhook-port", str(webhook_port), "--insecure-webhook",
        "--api-server", str(kmock.url).rstrip("/"),
        "--liveness", f"http://127.0.0.1:{health_port}/healthz",
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await until("the operator's watches", lambda: watching_everything(kmock), within_s=30)
            health = f"http://127.0.0.1:{health_port}/healthz"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not await _healthy(session, health):
                assert loop.time() < deadline, "liveness endpoint never answered 200"
                assert process.returncode is None, f"exited: {(tmp_path / 'operator.log').read_text()}"
                await asyncio.sleep(0.1)

            bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "reviews"},
                   "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                                            "retries": {"attempts": -1}}]}}
            review = admission_review(bad, ("networking.istio.io", "v1", "virtualservices"), "bookinfo")
            url = f"http://127.0.0.1:{webhook_port}/{validate_handler_id('virtualservices')}"
            async with session.post(url, json=review) as response:
                assert response.status == 200
                answer = (await response.json())["response"]
        assert answer["allowed"] is False
        assert "[MK0110]" in answer["status"]["message"]
        # SIGTERM (what the kubelet sends) stops it by itself
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
