"""`meshkit wait --for=condition=...` (kubectl's wait) and `get -o jsonpath` on a Gateway API object's
computed status, as a real subprocess against a real control plane process."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.cli.wait_verbs import condition_met, full_name, parse_for, parse_timeout
from tests.test_cli import ControlProcess, cli_env, control, meshkit  # noqa: F401 (the fixture)

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  gatewayClassName: CLASS
  listeners:
  - name: https
    hostname: "nginx.example.com"
    port: 443
    protocol: TLS
    tls:
      mode: Passthrough
"""


async def test_wait_for_programmed_then_the_gateways_address(control: ControlProcess,  # noqa: F811
                                                             tmp_path: Path) -> None:
    env = cli_env(tmp_path, control.url)
    applied = await meshkit("apply", "-f", "-", env=env, stdin=GATEWAY.replace("CLASS", "istio"))
    assert applied.code == 0, applied.err
    waited = await meshkit("wait", "--for=condition=programmed", "gtw", "mygateway", env=env)
    met = "gateway.gateway.networking.k8s.io/mygateway condition met\n"
    assert (waited.code, waited.out) == (0, met), waited
    address = await meshkit("get", "gtw", "mygateway", "-o", "jsonpath={.status.addresses[0].value}", env=env)
    assert (address.code, address.out) == (0, "127.0.0.1"), address
    port = await meshkit("get", "gtw", "mygateway", "-o",
                         'jsonpath={.spec.listeners[?(@.name=="https")].port}', env=env)
    assert (port.code, port.out) == (0, "443"), port


async def test_wait_times_out_on_a_gateway_no_controller_programs(control: ControlProcess,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    env = cli_env(tmp_path, control.url)
    applied = await meshkit("apply", "-f", "-", env=env, stdin=GATEWAY.replace("CLASS", "other"))
    assert applied.code == 0, applied.err
    waited = await meshkit("wait", "--for=condition=Programmed", "gtw/mygateway", "--timeout=1s", env=env)
    assert waited.code == 1 and waited.out == "", waited
    assert "timed out waiting for the condition on gateway.gateway.networking.k8s.io/mygateway" in waited.err
    missing = await meshkit("wait", "--for=condition=programmed", "gtw", "nothere", "--timeout=1s", env=env)
    assert missing.code == 1 and "not found" in missing.err, missing


def test_conditions_match_as_kubectl_matches_them() -> None:
    doc = {"status": {"conditions": [{"type": "Programmed", "status": "True"},
                                     {"type": "Accepted", "status": "False"}]}}
    assert condition_met(doc, "programmed") and condition_met(doc, "PROGRAMMED", "true")
    assert not condition_met(doc, "accepted") and condition_met(doc, "Accepted", "False")
    assert not condition_met({"status": {}}, "programmed") and not condition_met({}, "programmed")
    assert full_name({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                      "metadata": {"name": "g"}}) == "gateway.gateway.networking.k8s.io/g"
    assert full_name({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}) == "service/s"


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1m30s", 90), ("90", 90),
                                               ("0.5s", 0.5)])
def test_timeouts_as_kubectl_writes_them(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d"])
def test_a_bad_timeout_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="--timeout"):
        parse_timeout(text)


def test_for_takes_conditions_only() -> None:
    assert parse_for("condition=programmed") == ("programmed", "True")
    assert parse_for("condition=Ready=false") == ("Ready", "false")
    for text in ("delete", "jsonpath={.status.phase}=Running", "condition="):
        with pytest.raises(ValueError, match="conditions only"):
            parse_for(text)
