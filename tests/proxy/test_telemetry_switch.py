"""The sidecar's ``--telemetry`` switch (benchmarks: ``istio_method.py --telemetry-cost``).

``off`` runs no tracing, access-log or metrics filter: the request reaches the app without trace
headers, nothing is counted or logged. ``no-tracing`` drops only the tracing filter. The default is
``on`` (as shipped), or ``$MESHKIT_PROXY_TELEMETRY``; a bad value there is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.proxy.main import TELEMETRY_ENV, parse_args
from meshkit.proxy.pipeline import inbound_filters, outbound_filters
from meshkit.proxy.stats import IstioMetrics
from tests.proxy.conftest import EchoApp, StartProxy, make_snapshot

TRACE_HEADERS = {"x-request-id", "traceparent", "x-b3-traceid"}


def _names(filters: list[Any]) -> list[str]:
    return [f.__module__.rsplit(".", 1)[1] for f in filters]


def test_the_switches_leave_out_exactly_their_filters() -> None:
    shipped = _names(outbound_filters(IstioMetrics(), None))
    assert shipped[:2] == ["tracing", "metrics"]
    assert _names(outbound_filters(None, None, tracing=False)) == shipped[2:]
    assert _names(outbound_filters(IstioMetrics(), None, tracing=False)) == shipped[1:]
    assert _names(inbound_filters(IstioMetrics(), None)) == ["tracing", "metrics", "local_reply"]
    assert _names(inbound_filters(None, None, tracing=False)) == ["local_reply"]


def test_the_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", "snapshot.json"]
    monkeypatch.delenv(TELEMETRY_ENV, raising=False)
    assert parse_args(config).telemetry == "on"
    monkeypatch.setenv(TELEMETRY_ENV, "no-tracing")
    assert parse_args(config).telemetry == "no-tracing"
    assert parse_args([*config, "--telemetry", "off"]).telemetry == "off"
    monkeypatch.setenv(TELEMETRY_ENV, "none")
    with pytest.raises(SystemExit):
        parse_args(config)
    assert f"env {TELEMETRY_ENV}='none': expected one of on, off, no-tracing" in capsys.readouterr().err


async def _send(port: int) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/hello", headers={"Host": "reviews"}
    ) as answer:
        assert answer.status == 200
        return dict((await answer.json())["headers"])


async def _requests_total(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/stats/prometheus"
    ) as answer:
        return "\n".join(line for line in (await answer.text()).splitlines()
                         if line.startswith("istio_requests_total{"))


@pytest.mark.parametrize("telemetry", ["on", "off", "no-tracing"])
async def test_a_sidecar_serves_with_each_setting(
    telemetry: str, echo_app: EchoApp, start_proxy: StartProxy, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    proxy = await start_proxy(make_snapshot(echo_app.port), "--telemetry", telemetry,
                              "--access-log", str(log))
    headers = await _send(proxy.ports["outbound"])
    counted = await _requests_total(proxy.ports["admin"])
    await proxy.stop()  # flushes the access log
    if telemetry == "on":
        assert headers.keys() >= TRACE_HEADERS
    else:
        assert not TRACE_HEADERS & headers.keys()
    assert ('reporter="source"' in counted) is (telemetry != "off")
    logged = log.read_text() if log.exists() else ""
    assert ("/hello" in logged) is (telemetry != "off")
