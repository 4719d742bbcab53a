"""The apply-to-effect timeline: stored -> compiled -> pushed -> ACK/NACK per proxy -> first request.

The bookkeeping alone, then real parts: a control plane on a socket, two sidecar processes that
scrape-report their first request, `meshkit apply --wait` run as a process, and SSE stand-ins that
NACK or never answer (the sidecar never NACKs a snapshot our compiler makes).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from meshkit.control.auth import admin_token_file
from meshkit.control.server import RunningControlPlane, run_control_plane
from meshkit.control.timeline import RolloutTimeline, describe
from tests.control.sse import Subscriber
from tests.proxy.conftest import EchoApp, spawn_proxy, stop_process
from tests.waiting import async_wait_until

YAML = {"Content-Type": "application/yaml"}
ROUTE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - timeout: {timeout}
    route:
    - destination: {{host: reviews}}
"""


# -- the bookkeeping ---------------------------------------------------------------------------------


def test_each_step_lands_on_the_revision_that_changed_the_proxy() -> None:
    timeline = RolloutTimeline()
    timeline.compiled(3, "a.default", "v-a3", changed=True, now=10.0)
    timeline.compiled(3, "b.default", "v-b2", changed=False, now=10.0)
    timeline.pass_done(3, 10.0)
    timeline.pushed("a.default", "v-a3", 10.1)
    timeline.pushed("a.default", "v-a3", 12.0)  # a reconnect re-sends it: the first push stays
    timeline.responded("a.default", "v-a3", ack=True, reason=None, now=10.2)
    timeline.responded("b.default", "v-b2", ack=True, reason=None, now=10.2)  # nothing of revision 3
    timeline.scraped("a.default", "x 1\nmeshkit_config_first_request_timestamp_seconds"
                                  '{version="v-a3"} 10.5\nother 2\n')
    entry = timeline.get(3)
    assert entry is not None
    doc = describe(entry, 3, stored=9.9, summary="s", compiled_revision=3,
                   proxies=[{"id": "a.default", "connected": True, "latest": "v-a3"},
                            {"id": "b.default", "connected": True, "latest": "v-b2"}])
    assert doc["state"] == "synced"
    assert doc["unchanged"] == ["b.default"]
    [row] = doc["proxies"]
    assert (row["compiled"], row["pushed"], row["acked"], row["first_request"]) == (10.0, 10.1, 10.2, 10.5)


def test_states_pending_nacked_superseded_and_the_bound() -> None:
    timeline = RolloutTimeline(keep=3)
    status = [{"id": "a.default", "connected": True, "latest": "v1"}]
    timeline.compiled(1, "a.default", "v1", changed=True, now=1.0)
    assert describe(timeline.get(1), 1, stored=0.5, summary="", proxies=status,
                    compiled_revision=0)["state"] == "pending"  # the full pass has not finished
    timeline.pass_done(1, 1.0)
    assert describe(timeline.get(1), 1, stored=0.5, summary="", proxies=status,
                    compiled_revision=1)["state"] == "pending"  # no answer yet
    timeline.responded("a.default", "v1", ack=False, reason="bad cluster", now=1.2)
    nacked = describe(timeline.get(1), 1, stored=0.5, summary="", proxies=status, compiled_revision=1)
    assert nacked["state"] == "nacked"
    assert nacked["proxies"][0]["reason"] == "bad cluster"
    timeline.compiled(2, "a.default", "v2", changed=True, now=2.0)
    later = [{"id": "a.default", "connected": True, "latest": "v2"}]
    timeline.compiled(4, "a.default", "v4", changed=True, now=4.0)  # 2 was replaced before any answer
    assert describe(timeline.get(2), 2, stored=1.9, summary="", proxies=later,
                    compiled_revision=4)["state"] == "pending"  # v2 is still the latest: wait for it
    replaced = [{"id": "a.default", "connected": True, "latest": "v4"}]
    assert describe(timeline.get(2), 2, stored=1.9, summary="", proxies=replaced,
                    compiled_revision=4)["state"] == "superseded"
    timeline.compiled(5, "a.default", "v5", changed=True, now=5.0)
    timeline.compiled(6, "a.default", "v6", changed=True, now=6.0)
    assert timeline.get(1) is None and timeline.get(2) is None  # only the last 3 kept
    forgotten = describe(timeline.get(1), 1, stored=0.5, summary="", proxies=replaced, compiled_revision=6)
    assert (forgotten["state"], forgotten["proxies"]) == ("unrecorded", [])
    timeline.responded("a.default", "v1", ack=True, reason=None, now=7.0)  # forgotten: ignored
    assert timeline.get(6) is not None


def test_a_malformed_gauge_line_is_ignored() -> None:
    timeline = RolloutTimeline()
    timeline.compiled(1, "a.default", "v1", changed=True, now=1.0)
    timeline.scraped("a.default", 'meshkit_config_first_request_timestamp_seconds{version="v1"} soon\n'
                                  "meshkit_config_first_request_timestamp_seconds{} 3\n")
    entry = timeline.get(1)
    assert entry is not None and entry.proxies["a.default"].first_request is None


def test_the_sidecars_gauges_are_valid_prometheus_and_the_timeline_reads_them() -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    from meshkit.proxy.admin import _config_gauges  # noqa: PLC0415

    current = SimpleNamespace(version="0f3a", applied_at=100.25, first_request_at=None)
    assert "first_request" not in _config_gauges(current)  # no request served under it yet
    current.first_request_at = 101.5
    text = _config_gauges(current)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["meshkit_config_first_request_timestamp_seconds"].samples[0].value == 101.5
    assert families["meshkit_config_applied_timestamp_seconds"].samples[0].labels == {"version": "0f3a"}
    timeline = RolloutTimeline()
    timeline.compiled(1, "a.default", "0f3a", changed=True, now=100.0)
    timeline.scraped("a.default", text)
    entry = timeline.get(1)
    assert entry is not None and entry.proxies["a.default"].first_request == 101.5


# -- real processes ----------------------------------------------------------------------------------


async def _meshkit(*args: str, token: str) -> tuple[int, str]:
    """Run the CLI as a process without blocking the loop the control plane serves on."""
    env = {**os.environ, "MESHKIT_CONTROL_TOKEN": token, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "meshkit.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return int(proc.returncode or 0), out.decode()


async def _register(session: aiohttp.ClientSession, url: str, echo: EchoApp) -> None:
    async with session.post(f"{url}/api/v1/registry/services",
                            json={"name": "reviews", "namespace": "default", "port": 9080}) as r:
        assert r.status == 200, await r.text()
    endpoint = {"instance": "reviews-v1-0", "workload": "reviews-v1", "service": "reviews",
                "namespace": "default", "address": "127.0.0.1", "port": echo.port,
                "labels": {"app": "reviews", "version": "v1"}, "service_account": "bookinfo-reviews",
                "has_sidecar": False}
    async with session.post(f"{url}/api/v1/registry/endpoints", json=endpoint) as r:
        assert r.status == 200, await r.text()


async def test_apply_wait_shows_every_proxy_acking_and_the_first_request_routed(tmp_path: Path) -> None:
    echo_app = EchoApp("echo-v1")
    await echo_app.start()
    running = await run_control_plane(port=0, state_dir=tmp_path / "control", with_ca=False)
    token = admin_token_file(running.control_plane.directory).read_text().strip()
    token_file = admin_token_file(running.control_plane.directory)
    url = running.url
    callers = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                         headers=running.admin_headers) as session:
            await _register(session, url, echo_app)
            for name in ("productpage-v1-0.default", "details-v1-0.default"):
                callers.append(spawn_proxy(["--control", url, "--id", name,
                                            "--control-token-file", str(token_file)], tmp_path))

            async def both_synced() -> bool:
                async with session.get(f"{url}/api/v1/proxy-status") as r:
                    rows = (await r.json())["proxies"]
                return len(rows) == 2 and all(p["status"] == "SYNCED" for p in rows)

            await async_wait_until(both_synced, 20, "both sidecars SYNCED")
            rules = tmp_path / "vs.yaml"
            rules.write_text(ROUTE.format(timeout="7s"))
            code, out = await _meshkit("apply", "-f", str(rules), "--wait", "--timeout", "30",
                                       "--control", url, token=token)
            assert code == 0, out
            revision = int(out.split("revision ", 1)[1].split()[0])
            assert "productpage-v1-0.default" in out and "details-v1-0.default" in out, out
            assert "every affected proxy ACKed" in out, out

            async def timeline() -> dict[str, Any]:
                async with session.get(f"{url}/api/v1/history/{revision}/timeline") as r:
                    assert r.status == 200, await r.text()
                    return dict(await r.json())

            doc = await timeline()
            assert doc["state"] == "synced"
            rows = {row["id"]: row for row in doc["proxies"]}
            assert set(rows) == {"productpage-v1-0.default", "details-v1-0.default"}
            for row in rows.values():
                assert doc["stored"] <= row["compiled"] <= row["pushed"] <= row["acked"], row
                assert row["first_request"] is None  # no traffic yet

            # traffic through productpage's sidecar only: its first request under the new snapshot
            productpage = callers[0]
            async with session.get(f"http://127.0.0.1:{productpage.outbound}/x",
                                   headers={"Host": "reviews:9080"}) as r:
                assert r.status == 200, await r.text()

            async def first_seen() -> dict[str, Any] | None:
                current = await timeline()
                row = {r["id"]: r for r in current["proxies"]}["productpage-v1-0.default"]
                return row if row["first_request"] is not None else None

            row = await async_wait_until(first_seen, 20, "the scraper to see productpage's first request")
            assert row["first_request"] >= row["acked"]
            assert (await timeline())["proxies"][0]["first_request"] is None  # details served nothing

            code, shown = await _meshkit("history", str(revision), "--control", url, token=token)
            assert code == 0, shown
            assert "+ " in shown and "timeout: 7s" in shown  # the diff, then the timeline
            assert "no request yet" in shown  # details
            assert shown.count("+") >= 4  # offsets after the store: pushed, ACK, first request
    finally:
        for caller in callers:
            assert stop_process(caller) == 0
        await running.close()
        await echo_app.stop()


async def test_apply_wait_fails_on_a_nack_and_on_a_timeout(
        control_plane: RunningControlPlane, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = control_plane.url
    token = admin_token_file(control_plane.control_plane.directory).read_text().strip()
    refusing = await Subscriber(session, url, "reviews-v1-0.default", "nack").start()
    try:
        rules = tmp_path / "vs.yaml"
        rules.write_text(ROUTE.format(timeout="3s"))
        code, out = await _meshkit("apply", "-f", str(rules), "--wait", "--control", url, token=token)
        assert code == 1, out
        assert "NACK" in out and "test: refused" in out and "reviews-v1-0.default" in out, out
    finally:
        await refusing.close()
    silent = await Subscriber(session, url, "ratings-v1-0.default", "silent").start()
    try:
        await async_wait_until(lambda: not silent.snapshots.empty(), 10, "the silent proxy's first snapshot")
        rules.write_text(ROUTE.format(timeout="4s"))
        code, out = await _meshkit("apply", "-f", str(rules), "--wait", "--timeout", "1", "--control", url,
                                   token=token)
        assert code == 1, out
        assert "waiting" in out and "within 1 s" in out, out
    finally:
        await silent.close()
    async with session.get(f"{url}/api/v1/history/999/timeline") as r:
        assert r.status == 404
    async with session.get(f"{url}/api/v1/history/1/timeline?wait=600") as r:
        assert r.status == 400
        assert "wait" in (await r.json())["messages"][0]["field"]
