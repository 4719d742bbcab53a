"""The `meshkit` CLI as a real subprocess against a real control plane process on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from meshkit.config.analyze import analyze
from meshkit.config.loader import load_files
from meshkit.config.locations import index_locations, locate_messages
from meshkit.control.auth import read_admin_token
from tests.control.resources import (
    BAD_VIRTUAL_SERVICE,
    DESTINATION_RULE,
    REFUSED_VIRTUAL_SERVICE,
    SERVICE,
    endpoint,
    virtual_service,
)
from tests.control.sse import Subscriber

MESHKIT = [sys.executable, "-m", "meshkit.cli"]
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


async def meshkit(*args: str, env: dict[str, str], stdin: str | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        *MESHKIT, *args, env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(home: Path, control: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MESHKIT_CONTROL"}
    env.update(MESHKIT_HOME=str(home), COLUMNS="200", NO_COLOR="1", PYTHONPATH=str(ROOT))
    if control is not None:
        env["MESHKIT_CONTROL"] = control
    return env


def admin(home: Path) -> dict[str, str]:
    """The admin token's header for the control plane of MESHKIT_HOME=``home`` (it made the token)."""
    return {"Authorization": f"Bearer {read_admin_token(home / 'control')}"}


@dataclass
class ControlProcess:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 20)


async def start_control(home: Path, *extra: str) -> ControlProcess:
    process = await asyncio.create_subprocess_exec(
        *MESHKIT, "control", "--port", "0", "--no-ca", *extra, env=cli_env(home), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    line = b""
    for _ in range(50):  # log lines (stderr is merged) may come first
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if b"listening on " in line or not line:
            break
    assert b"listening on http://127.0.0.1:" in line, line
    url = line.decode().split("listening on ")[1].split()[0]
    return ControlProcess(process, url)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlProcess]:
    running = await start_control(tmp_path)
    try:
        yield running
    finally:
        if running.process.returncode is None:
            await running.stop()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a-destination-rule.yaml").write_text(DESTINATION_RULE)
    (folder / "b-virtual-service.yaml").write_text(virtual_service("v1"))
    (tmp_path / "bad.yaml").write_text(BAD_VIRTUAL_SERVICE)
    (tmp_path / "refused.yaml").write_text(REFUSED_VIRTUAL_SERVICE)
    (tmp_path / "vs-v2.yaml").write_text(virtual_service("v2"))
    return folder


async def test_help_on_every_verb(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    top = await meshkit("--help", env=env)
    assert top.code == 0
    verbs = ["control", "apply", "get", "delete", "analyze", "history", "rollback", "proxy-status"]
    for verb in verbs:
        assert verb in top.out
    results = await asyncio.gather(*(meshkit(verb, "--help", env=env) for verb in verbs))
    for verb, result in zip(verbs, results, strict=True):
        assert result.code == 0, (verb, result.err)
        assert "Usage: " in result.out and verb in result.out


async def test_no_control_plane_is_said_clearly_and_analyze_works_offline(tmp_path: Path,
                                                                          files: Path) -> None:
    env = cli_env(tmp_path, control=f"http://127.0.0.1:{closed_port()}")
    result = await meshkit("get", "vs", env=env)
    assert result.code == 2
    assert "no meshkit control plane is running at http://127.0.0.1:" in result.err
    assert "Traceback" not in result.err
    good = await meshkit("analyze", "-f", str(files), env=env)
    assert good.code == 0, good.err
    assert "No validation issues found" in good.out
    bad_file = str(tmp_path / "bad.yaml")
    bad = await meshkit("analyze", "-f", bad_file, env=env)
    assert bad.code == 79  # istioctl's "analyzers found issues"
    assert 'Error [MK0101] (VirtualService/default/ratings-bad spec.http[0].route[0].destination.subset ' \
           f'{bad_file}:1) subset "v9" of host "ratings" is not defined by any DestinationRule ' \
           "(known subsets: none) [IST0101]" in bad.out
    # the very text of str(Message): what notebooks and the Kubernetes admission webhook show too
    expected = analyze(load_files([tmp_path / "bad.yaml"]), None)
    located = locate_messages(expected, index_locations((tmp_path / "bad.yaml").read_text(), bad_file))
    assert expected and bad.out.splitlines() == [str(m) for m in located]
    forced = await meshkit("analyze", "--offline", "-f", bad_file, env=cli_env(tmp_path))
    assert forced.code == 79
    without_files = await meshkit("analyze", env=env)
    assert without_files.code == 2 and "no meshkit control plane" in without_files.err
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [")
    invalid = await meshkit("analyze", "-f", str(broken), env=env)
    assert invalid.code == 65 and "MK0001" in invalid.err and "Traceback" not in invalid.err
    missing = await meshkit("analyze", "-f", str(tmp_path / "nowhere.yaml"), env=env)
    assert missing.code == 65 and "nowhere.yaml" in missing.err and "no such file" in missing.err


async def test_analyze_exit_codes_warnings_never_fail(tmp_path: Path) -> None:
    env = cli_env(tmp_path, control=f"http://127.0.0.1:{closed_port()}")
    warned = tmp_path / "warned.yaml"  # a rule after a catch-all: IST0130, a Warning
    warned.write_text(DESTINATION_RULE + "---\n" + virtual_service("v1").replace(
        "  http:\n", "  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n", 1))
    result = await meshkit("analyze", "-f", str(warned), env=env)
    assert result.code == 0, result.out + result.err
    assert "Warning [MK0124]" in result.out and "[IST0130]" in result.out
    assert f"{warned}:" in result.out  # the file and line of the resource
    schema = tmp_path / "schema.yaml"  # parses, but is not valid Istio: a finding (79), not unreadable (65)
    schema.write_text(DESTINATION_RULE + "---\n" + virtual_service("v1").replace("hosts:", "hostz:"))
    invalid = await meshkit("analyze", "-f", str(schema), env=env)
    assert invalid.code == 79, invalid.out + invalid.err
    assert "[MK0005]" in invalid.out and "spec.hostz: unknown field" in invalid.out
    assert f"{schema}:" in invalid.out


async def test_apply_get_delete_history_rollback(control: ControlProcess, tmp_path: Path,
                                                 files: Path) -> None:
    env = cli_env(tmp_path)  # no --control: the address the control plane recorded in $MESHKIT_HOME
    applied = await meshkit("apply", "-f", str(files), env=env)
    assert applied.code == 0, applied.err
    assert "DestinationRule/default/reviews created" in applied.out
    assert "VirtualService/default/reviews created" in applied.out
    assert "revision 1" in applied.out

    table = await meshkit("get", "virtualservices", env=env)
    assert table.code == 0
    header, row = table.out.splitlines()
    assert header.split() == ["NAME", "HOSTS", "AGE"]
    assert row.split()[:2] == ["reviews", '["reviews"]']

    as_yaml = await meshkit("get", "vs", "reviews", "-o", "yaml", env=env)
    assert as_yaml.code == 0 and "kind: VirtualService" in as_yaml.out
    reapplied = await meshkit("apply", "-f", "-", env=env, stdin=as_yaml.out)
    assert reapplied.code == 0 and "VirtualService/default/reviews unchanged" in reapplied.out

    # what Istio's validation refuses refuses the whole apply, with file and line
    rejected = await meshkit("apply", "-f", str(tmp_path / "vs-v2.yaml"),
                             "-f", str(tmp_path / "refused.yaml"), env=env)
    assert rejected.code == 1
    assert "Error [MK0102] (VirtualService/default/ratings-refused " in rejected.err
    assert f"{tmp_path / 'refused.yaml'}:1)" in rejected.err
    assert "Traceback" not in rejected.err
    still = json.loads((await meshkit("get", "vs", "-o", "json", env=env)).out)
    assert [item["spec"]["http"][0]["route"][0]["destination"]["subset"] for item in still["items"]] == ["v1"]

    online = await meshkit("analyze", env=env)
    assert online.code == 0, online.out + online.err
    online_bad = await meshkit("analyze", "-f", str(tmp_path / "bad.yaml"), env=env)
    assert online_bad.code == 79 and "MK0101" in online_bad.out
    # a route to an undefined subset: applied and reported, as Istio's API server accepts it
    accepted = await meshkit("apply", "-f", str(tmp_path / "bad.yaml"), env=env)
    assert accepted.code == 0, accepted.err
    assert "VirtualService/default/ratings-bad created" in accepted.out
    assert "Error [MK0101] (VirtualService/default/ratings-bad spec.http[0].route[0].destination.subset " \
           f"{tmp_path / 'bad.yaml'}:1)" in accepted.out + accepted.err
    assert (await meshkit("analyze", env=env)).code == 79  # the running config now has it
    assert (await meshkit("delete", "vs", "ratings-bad", env=env)).code == 0

    assert (await meshkit("apply", "-f", str(tmp_path / "vs-v2.yaml"), env=env)).code == 0
    deleted = await meshkit("delete", "vs", "reviews", env=env)
    assert deleted.code == 0 and "VirtualService/default/reviews deleted" in deleted.out
    missing = await meshkit("delete", "vs", "reviews", env=env)
    assert missing.code == 1 and "VirtualService/default/reviews not found" in missing.err
    by_file = await meshkit("delete", "-f", str(files / "a-destination-rule.yaml"), env=env)
    assert by_file.code == 0 and "DestinationRule/default/reviews deleted" in by_file.out
    empty = await meshkit("get", "all", env=env)
    assert empty.code == 0 and "No resources found" in empty.err

    history = await meshkit("history", env=env)
    lines = history.out.splitlines()
    assert lines[0].split() == ["REVISION", "AGE", "SUMMARY"]
    # 1 the files, 2 ratings-bad applied, 3 it deleted, 4 v2, 5 reviews deleted, 6 the rule deleted
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    diff = await meshkit("history", "4", env=env)
    assert "-        subset: v1" in diff.out and "+        subset: v2" in diff.out

    rolled = await meshkit("rollback", "1", env=env)
    assert rolled.code == 0 and "now at revision 7" in rolled.out
    restored = await meshkit("get", "all", env=env)
    assert "virtualservice/reviews" in restored.out and "destinationrule/reviews" in restored.out
    unknown = await meshkit("rollback", "42", env=env)
    assert unknown.code == 1 and "revision 42 does not exist" in unknown.err


async def test_proxy_status_and_restart_keeps_config(control: ControlProcess, tmp_path: Path,
                                                     files: Path) -> None:
    env = cli_env(tmp_path, control=control.url)
    assert (await meshkit("apply", "-f", str(files), env=env)).code == 0
    async with aiohttp.ClientSession(headers=admin(tmp_path)) as session:
        synced = await Subscriber(session, control.url, "reviews-v1-0.default").start()
        silent = await Subscriber(session, control.url, "ratings-v1-0.default", mode="silent").start()
        try:
            snapshot = await synced.next()
            await silent.next()
            table = await meshkit("proxy-status", env=env)
            assert table.code == 0
            rows = {line.split()[0]: line.split() for line in table.out.splitlines()}
            assert rows["NAME"][:4] == ["NAME", "VERSION-ACKED", "LATEST", "STATUS"]
            assert rows["reviews-v1-0.default"][1:4] == [snapshot["version"], snapshot["version"], "SYNCED"]
            assert rows["ratings-v1-0.default"][1] == "-" and rows["ratings-v1-0.default"][3] == "STALE"
            waited = await meshkit("proxy-status", "--wait", "0.5", env=env)
            assert waited.code == 1 and "not every connected proxy was SYNCED within 0.5 s" in waited.err
            as_json = json.loads((await meshkit("proxy-status", "-o", "json", env=env)).out)
            assert {p["id"]: p["status"] for p in as_json["proxies"]} == {
                "ratings-v1-0.default": "STALE", "reviews-v1-0.default": "SYNCED"}
        finally:
            await synced.close()
            await silent.close()

    assert await control.stop() == 0
    # as the local runtime starts it: the control plane's own dir given explicitly
    restarted = await start_control(tmp_path, "--state-dir", str(tmp_path / "control"))
    try:
        env = cli_env(tmp_path)  # found through the address it recorded there
        table = await meshkit("get", "dr", env=env)
        assert table.code == 0 and "reviews" in table.out
        assert "1" in (await meshkit("history", env=env)).out.splitlines()[1]
    finally:
        assert await restarted.stop() == 0


async def test_proxy_verb_runs_the_real_sidecar(control: ControlProcess, tmp_path: Path, files: Path) -> None:
    env = cli_env(tmp_path, control=control.url)
    usage = await meshkit("proxy", "--help", env=env)
    assert usage.code == 0 and "usage: meshkit proxy" in usage.out and "--control URL" in usage.out
    async with aiohttp.ClientSession(headers=admin(tmp_path)) as session:  # the runtime's part
        for path, body in (("services", SERVICE), ("endpoints", endpoint("reviews-v1-0"))):
            async with session.post(f"{control.url}/api/v1/registry/{path}", json=body) as response:
                assert response.status == 200
    sidecar = await asyncio.create_subprocess_exec(
        *MESHKIT, "proxy", "--control", control.url, "--id", "reviews-v1-0.default", "--outbound-port", "0",
        "--inbound-port", "0", "--admin-port", "0", "--access-log", "off", cwd=ROOT,
        env={**env, "MESHKIT_CONTROL_TOKEN_FILE": str(tmp_path / "control" / "admin-token")},  # no CA
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async def sidecar_status() -> dict[str, str]:
            doc = json.loads((await meshkit("proxy-status", "-o", "json", env=env)).out)
            return {p["id"]: p for p in doc["proxies"]}.get("reviews-v1-0.default") or {}

        first: dict[str, str] = {}
        for _ in range(100):  # bounded: about 20 s at most
            first = await sidecar_status()
            if first.get("status") == "SYNCED":
                break
            await asyncio.sleep(0.2)
        assert first.get("status") == "SYNCED", first
        assert (await meshkit("apply", "-f", str(files), env=env)).code == 0
        second: dict[str, str] = {}
        for _ in range(100):
            second = await sidecar_status()
            if second.get("status") == "SYNCED" and second.get("acked") != first["acked"]:
                break
            await asyncio.sleep(0.2)
        assert second.get("status") == "SYNCED" and second["acked"] != first["acked"], second
    finally:
        sidecar.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sidecar.wait(), 20) == 0


async def test_kind_verbs_say_what_the_machine_lacks(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "PATH": str(tmp_path / "empty-bin")}  # no docker, kind or kubectl here
    usage = await meshkit("kind", "--help", env=env)
    assert usage.code == 0 and "up" in usage.out and "down" in usage.out
    for verb in ("up", "down"):
        result = await meshkit("kind", verb, env=env)
        assert result.code == 1, result.err
        assert "meshkit kind needs what this machine lacks" in result.err
        assert "`docker` is not installed" in result.err and "`kind` is not installed" in result.err
        assert "Traceback" not in result.err


async def test_a_server_that_is_not_a_control_plane_gets_one_clear_line(tmp_path: Path) -> None:
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path.startswith("/api/v1/history") else 404
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = cli_env(tmp_path, control=f"http://127.0.0.1:{server.server_address[1]}")
        wrong = await meshkit("get", "vs", env=env)
        assert wrong.code == 1 and "not an answer of a meshkit control plane" in wrong.err
        odd = await meshkit("history", env=env)  # 200 but HTML: the CLI cannot read it
        assert odd.code == 1 and odd.err.startswith("error: internal error: ") and "Traceback" not in odd.err
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_egress_gateway_setting_is_istioctls_and_other_settings_pass_on() -> None:
    from meshkit.cli.mesh_verbs import _egress_gateway_setting  # noqa: PLC0415

    mode = "meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY"
    assert _egress_gateway_setting(["components.egressGateways[0].enabled=true", mode]) == (True, [mode])
    assert _egress_gateway_setting(["components.egressGateways[0].enabled=false"]) == (False, [])
    assert _egress_gateway_setting([mode]) == (False, [mode])
    with pytest.raises(ValueError, match=r"components\.egressGateways\[0\]\.enabled=true or =false"):
        _egress_gateway_setting(["components.egressGateways[0].enabled=yes please"])


def test_up_refuses_a_bad_egress_gateway_setting_before_starting_anything(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415

    env = {**os.environ, "MESHKIT_HOME": str(tmp_path), "MESHKIT_PORT_BASE": "7000"}
    done = subprocess.run([*MESHKIT, "up", "--set", "components.egressGateways[0].enabled=maybe"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "components.egressGateways[0].enabled=true or =false" in done.stdout + done.stderr
    assert not (tmp_path / "mesh.json").exists()


def test_jsonpath_reads_the_forms_istio_s_tasks_use() -> None:
    from meshkit.cli.jsonpath import JsonPathError, render  # noqa: PLC0415
    from meshkit.runtime.launch import ingress_service  # noqa: PLC0415
    from meshkit.runtime.ports import PortPlan  # noqa: PLC0415

    service = ingress_service(PortPlan(21000))
    assert render('{.spec.ports[?(@.name=="tcp")].port}', service) == "21044"  # TCP_INGRESS_PORT
    assert render('{.spec.ports[?(@.name=="http2")].port}', service) == "21080"  # INGRESS_PORT
    assert render("{.spec.ports[?(@.name=='https')].port}", service) == "21043"  # SECURE_INGRESS_PORT
    assert render("{.status.loadBalancer.ingress[0].ip}", service) == "127.0.0.1"  # INGRESS_HOST
    pods = {"items": [{"metadata": {"name": "sleep-0"}}, {"metadata": {"name": "sleep-1"}}]}
    assert render("{.items[*].metadata.name}", pods) == "sleep-0 sleep-1"
    assert render("{.items..metadata.name}", pods) == "sleep-0 sleep-1"
    assert render("name: {.items[0].metadata.name}\\n", pods) == "name: sleep-0\n"
    with pytest.raises(JsonPathError, match=r"cannot read '\[\?\(@\.name=tcp\)\]'"):
        render("{.spec.ports[?(@.name=tcp)]}", service)


async def test_patch_type_json_applies_rfc_6902_all_or_nothing_with_kubectls_errors(
        control: ControlProcess, tmp_path: Path, files: Path) -> None:
    env = cli_env(tmp_path)
    assert (await meshkit("apply", "-f", str(files), env=env)).code == 0
    subset = "/spec/http/0/route/0/destination/subset"
    ops = json.dumps([{"op": "test", "path": subset, "value": "v1"},
                      {"op": "replace", "path": subset, "value": "v2"},
                      {"op": "add", "path": "/spec/http/0/timeout", "value": "3s"}])
    done = await meshkit("patch", "virtualservice", "reviews", "--type", "json", "-p", ops, env=env)
    assert (done.code, done.out.strip()) == (0, "virtualservice/reviews patched"), done.err
    shown = await meshkit("get", "vs", "reviews", "-o", "json", env=env)
    route = json.loads(shown.out)["spec"]["http"][0]
    assert route["route"][0]["destination"]["subset"] == "v2" and route["timeout"] == "3s", route

    # the test operation fails now (the subset is v2): nothing of the patch is applied
    failing = json.dumps([{"op": "replace", "path": subset, "value": "v3"},
                          {"op": "test", "path": subset, "value": "v1"}])
    refused = await meshkit("patch", "vs", "reviews", "--type", "json", "-p", failing, env=env)
    assert refused.code == 1 and refused.err.splitlines()[-2:] == [
        "The request is invalid: the server rejected our request due to an error in our request",
        f"cause: testing value {subset} failed: test failed"], refused.err
    missing = json.dumps([{"op": "replace", "path": "/spec/http/0/retries/attempts", "value": 3}])
    refused = await meshkit("patch", "vs", "reviews", "--type", "json", "-p", missing, env=env)
    assert refused.code == 1 and refused.err.splitlines()[-1] == (
        "cause: replace operation does not apply: doc is missing path: /spec/http/0/retries/attempts: "
        "missing value"), refused.err
    not_a_list = await meshkit("patch", "vs", "reviews", "--type", "json", "-p", '{"op": "add"}', env=env)
    assert not_a_list.code == 1 and not_a_list.err.strip().endswith(
        "Error from server (BadRequest): json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    other = await meshkit("patch", "vs", "reviews", "--type", "yaml", "-p", "{}", env=env)
    assert other.code == 1 and 'error: --type must be one of [json merge strategic], not "yaml"' in other.err
    shown = await meshkit("get", "vs", "reviews", "-o", "json", env=env)
    assert json.loads(shown.out)["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"
