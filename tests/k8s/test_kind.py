"""`meshkit kind` orchestration without a cluster: the plan, the prerequisite check, step running.

The real thing (Docker + kind) is in tests/e2e_kind, marked ``kind`` and skipped where it cannot run.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.k8s.kind import (
    KindError,
    KindOptions,
    Step,
    down_steps,
    find_root,
    load_image_argv,
    missing_prerequisites,
    run_steps,
    up_steps,
)

ROOT = Path(__file__).resolve().parents[2]


def _tool(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_up_plan_builds_loads_applies_and_waits() -> None:
    steps = up_steps(KindOptions(cluster="k"), ROOT, cluster_exists=False)
    commands = [" ".join(step.argv) for step in steps]
    assert commands[0] == "kind create cluster --name k --wait 120s"
    assert commands[1].startswith(f"docker build -f {ROOT}/operator/Dockerfile -t meshkit:dev")
    # docker-image first; Docker's containerd image store needs the archive route
    assert steps[2].argv[:2] == ("sh", "-c")
    assert steps[2].argv[2].startswith("kind load docker-image meshkit:dev --name k || { docker save")
    assert "kind load image-archive /tmp/meshkit-kind-k.tar --name k" in steps[2].argv[2]
    assert commands[3] == f"kubectl --context kind-k apply -k {ROOT}/operator/deploy/base"
    assert commands[4] == ("kubectl --context kind-k -n meshkit-system rollout restart "
                           "deployment/meshkit-control deployment/meshkit-operator")
    assert "rollout status deployment/meshkit-operator" in commands[6]
    assert commands[7].endswith("operator/deploy/overlays/demo")
    assert "wait --for=condition=Available deployment --all" in commands[8]
    for step in steps:  # every path a step names exists in the checkout
        for arg in step.argv:
            if arg.startswith(str(ROOT)):
                assert Path(arg).exists(), arg


def test_existing_cluster_is_reused_and_demo_optional() -> None:
    steps = up_steps(KindOptions(demo=False), ROOT, cluster_exists=True)
    assert steps[0].argv[:2] == ("docker", "build")
    assert not any("bookinfo" in " ".join(s.argv) or "overlays" in " ".join(s.argv) for s in steps)
    down = [s.argv for s in down_steps(KindOptions(cluster="k"))]
    assert down == [("kind", "delete", "cluster", "--name", "k")]


def test_missing_tools_are_named_with_how_to_get_them(tmp_path: Path) -> None:
    missing = missing_prerequisites(path=str(tmp_path))
    assert len(missing) == 3
    assert missing[0].startswith("`docker` is not installed: install Docker Engine")
    assert missing[1].startswith("`kind` is not installed")
    assert missing[2].startswith("`kubectl` is not installed")


def test_docker_without_a_daemon_is_reported(tmp_path: Path) -> None:
    complaint = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
    _tool(tmp_path, "docker", f'echo "{complaint}" >&2; exit 1')
    _tool(tmp_path, "kind", "exit 0")
    _tool(tmp_path, "kubectl", "exit 0")
    missing = missing_prerequisites(path=str(tmp_path))
    expected = f"the Docker daemon is not reachable (`docker info` failed: {complaint}); start Docker"
    assert missing == [expected]


def test_find_root(tmp_path: Path) -> None:
    assert find_root(ROOT / "meshkit" / "k8s") == ROOT
    with pytest.raises(KindError, match="operator/Dockerfile"):
        find_root(tmp_path)


def test_run_steps_streams_progress_and_stops_at_the_first_failure() -> None:
    lines: list[str] = []
    python = sys.executable
    steps = [
        Step("say hello", (python, "-c", "print('hello')")),
        Step("fail", (python, "-c", "import sys; print('boom'); sys.exit(3)")),
        Step("never", (python, "-c", "print('not reached')")),
    ]
    with pytest.raises(KindError) as error:
        run_steps(steps, lines.append)
    assert "[1/3] say hello" in lines and "      hello" in lines
    assert "step 2/3 failed: fail" in str(error.value) and "boom" in str(error.value)
    assert not any("not reached" in line for line in lines)


def test_run_steps_stops_a_hung_step() -> None:
    step = Step("hang", (sys.executable, "-c", "import time; time.sleep(60)"), timeout_s=1)
    with pytest.raises(KindError, match="timed out after 1 s"):
        run_steps([step], lambda _: None)


def test_missing_command_is_reported() -> None:
    with pytest.raises(KindError, match="cannot start"):
        run_steps([Step("nothing", (os.devnull + "-no-such-tool",))], lambda _: None)


def test_the_image_load_falls_back_to_an_archive(tmp_path: Path) -> None:
    """The load step's shell, run with stand-in ``kind`` and ``docker`` that behave like Docker's
    containerd image store (``kind load docker-image`` fails, ``docker save`` works)."""
    calls = tmp_path / "calls"
    for tool, script in {
        "kind": 'echo "kind $*" >> "$CALLS"; [ "$2" = image-archive ] && [ -s "$3" ]',
        "docker": 'echo "docker $*" >> "$CALLS"; echo image > "$4"',
    }.items():
        path = tmp_path / tool
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CALLS": str(calls)}
    argv = load_image_argv(f"k{tmp_path.name[-6:]}")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["kind", "load", "docker-image"], ["docker", "save", "meshkit:dev"],
        ["kind", "load", "image-archive"]]
    assert not Path(lines[1].split()[-1]).exists()  # the archive is removed afterwards
