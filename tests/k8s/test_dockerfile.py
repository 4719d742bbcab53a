"""operator/Dockerfile cannot be built here (no Docker daemon); check it by reading, against the
paths and users the manifests and the injector rely on."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from meshkit.k8s import names

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "operator" / "Dockerfile").read_text()
INSTRUCTIONS = [line.split(None, 1) for line in DOCKERFILE.splitlines()
                if line.strip() and not line.startswith((" ", "#"))]


def _args(instruction: str) -> list[str]:
    return [rest for name, *rests in INSTRUCTIONS if name == instruction for rest in rests]


def test_python_slim_base_and_non_root_1337() -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", _args("FROM")[0])
    assert _args("USER")[-1] == f"{names.PROXY_UID}:{names.PROXY_GID}"
    assert f"--uid {names.PROXY_UID}" in DOCKERFILE


def test_installs_meshkit_with_the_k8s_extra_and_iptables() -> None:
    assert any('pip install ".[k8s]"' in arg for arg in _args("RUN"))
    assert "iptables" in DOCKERFILE


def test_files_land_where_the_pods_expect_them() -> None:
    copies = {arg.split()[-1]: " ".join(arg.split()[:-1]) for arg in _args("COPY")}
    assert copies[names.INIT_SCRIPT_PATH] == "operator/meshkit-init.sh"
    operator = yaml.safe_load_all((ROOT / "operator" / "deploy" / "base" / "operator.yaml").read_text())
    deployment = next(d for d in operator if d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert copies[command[1]] == "operator/main.py"
    for sources in copies.values():
        for source in sources.split():
            assert (ROOT / source).exists(), source


def test_dockerignore_keeps_the_context_small_but_not_what_the_image_copies() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "tests", "labs"} <= set(ignored)
    for copied in ("pyproject.toml", "README.md", "meshkit", "operator"):  # what COPY needs
        assert copied not in ignored and not any(copied.startswith(p.rstrip("/") + "/") for p in ignored)
