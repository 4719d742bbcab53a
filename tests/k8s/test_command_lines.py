"""The command lines the manifests and the injector write parse with the real meshkit CLIs they call.

Pods cannot be started here, so this is where a renamed flag in `meshkit proxy`, `meshkit control`
or `python -m meshkit.apps` is caught before it breaks a cluster.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshkit.apps.launcher import parser as apps_parser
from meshkit.cli import app as cli_app
from meshkit.k8s import names
from meshkit.k8s.inject import InjectSettings, proxy_args, sidecar_container
from meshkit.proxy.main import parse_args as proxy_parse_args

DEPLOY = Path(__file__).resolve().parents[2] / "operator" / "deploy"


def _containers(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    return [c for d in docs for c in d["spec"]["template"]["spec"]["containers"]]


def _expand(args: list[str]) -> list[str]:
    """What the kubelet does with $(VAR) references to env vars."""
    return [a.replace("$(POD_NAME)", "details-v1-abc").replace("$(POD_NAMESPACE)", "bookinfo") for a in args]


def test_sidecar_arguments_parse_with_meshkit_proxy() -> None:
    argv = _expand(proxy_args(InjectSettings()))
    args = proxy_parse_args(argv)
    assert args.control == names.DEFAULT_CONTROL_ADDRESS
    assert args.node_id == "details-v1-abc.bookinfo"
    assert args.address == "0.0.0.0"
    assert (args.outbound_port, args.inbound_port, args.admin_port) == (
        names.PORT_OUTBOUND, names.PORT_INBOUND, names.PORT_ADMIN)


def test_the_sidecar_command_runs_the_proxy_module_with_those_arguments() -> None:
    container = sidecar_container({"containers": []}, InjectSettings())
    assert container["command"] == ["python", "-m", "meshkit.proxy"]  # not the `meshkit` CLI (Typer)
    argv = [sys.executable, *container["command"][1:], *_expand(container["args"]), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--capture" in done.stdout and "--health-port" in done.stdout


@pytest.mark.parametrize("container", _containers(DEPLOY / "overlays" / "demo" / "bookinfo.yaml"),
                         ids=lambda c: c["name"])
def test_demo_app_arguments_parse_with_meshkit_apps(container: dict[str, Any]) -> None:
    assert container["command"] == ["python", "-m", "meshkit.apps"]
    args = apps_parser().parse_args(_expand(container["args"]))
    assert args.port == 9080 and args.host == "0.0.0.0"
    assert args.instance == "details-v1-abc"


def test_control_plane_arguments_are_options_of_meshkit_control() -> None:
    [container] = _containers(DEPLOY / "base" / "control.yaml")
    assert container["command"] == ["meshkit"]
    help_text = CliRunner().invoke(cli_app, ["control", "--help"], terminal_width=200).output
    for arg in container["args"][1:]:
        if arg.startswith("--"):
            assert arg in help_text, f"`meshkit control` has no {arg} option"
