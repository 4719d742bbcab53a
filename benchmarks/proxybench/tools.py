"""Finds (and, as root on Debian, installs) the external tools: nginx, haproxy and wrk."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

PACKAGES = ("nginx", "haproxy", "wrk")
# nginx and haproxy live in /usr/sbin, which is not on an ordinary user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
INSTALL_TIMEOUT_S = 600


class ToolsMissing(RuntimeError):
    """nginx, haproxy or wrk is absent and could not be installed."""


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the tools, and their versions (recorded with the results)."""

    nginx: str
    haproxy: str
    wrk: str

    def versions(self) -> dict[str, str]:
        return {
            "nginx": _first_line([self.nginx, "-v"]),
            "haproxy": _first_line([self.haproxy, "-v"]),
            "wrk": _first_line([self.wrk, "-v"]),
        }


def _first_line(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def find_tools() -> Tools | None:
    """The tools if all three are installed, else None."""
    paths = [shutil.which(name, path=SEARCH_PATH) for name in PACKAGES]
    if any(path is None for path in paths):
        return None
    nginx, haproxy, wrk = (str(path) for path in paths)
    return Tools(nginx=nginx, haproxy=haproxy, wrk=wrk)


def missing_tools() -> list[str]:
    return [name for name in PACKAGES if shutil.which(name, path=SEARCH_PATH) is None]


def ensure_tools(install: bool = True) -> Tools:
    """Return the tools; as root with apt-get, install missing ones first. Else raise ToolsMissing."""
    tools = find_tools()
    if tools is not None:
        return tools
    missing = missing_tools()
    hint = f"install them with: sudo apt-get install -y {' '.join(missing)}"
    if not install:
        raise ToolsMissing(f"missing {', '.join(missing)}; {hint}")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolsMissing(f"missing {', '.join(missing)} and not root with apt-get; {hint}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                                timeout=INSTALL_TIMEOUT_S)
        if result.returncode != 0:
            raise ToolsMissing(f"`{' '.join(argv)}` failed ({result.returncode}): "
                               f"{result.stderr.strip()[-500:]}; {hint}")
    tools = find_tools()
    if tools is None:
        raise ToolsMissing(f"still missing {', '.join(missing_tools())} after apt-get install")
    return tools
