"""Where the control plane keeps its state, and where a running one says it listens (stdlib only).

The control plane's own directory defaults to ``$MESHKIT_HOME/control`` (``$MESHKIT_HOME``
defaults to ``~/.meshkit``; the same layout as `meshkit.runtime.state`). A running control plane
writes ``address.json`` (``{"url", "pid"}``) there when it starts and removes it on a clean stop;
the CLI reads it to find the control plane without being told.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

ADDRESS_FILE = "address.json"


def default_home() -> Path:
    """``$MESHKIT_HOME`` or ``~/.meshkit``."""
    return Path(os.environ.get("MESHKIT_HOME") or Path.home() / ".meshkit")


def default_control_dir() -> Path:
    """``$MESHKIT_HOME/control``: the control plane's database, CA and address."""
    return default_home() / "control"


def address_file(control_dir: Path | str | None = None) -> Path:
    return (Path(control_dir) if control_dir is not None else default_control_dir()) / ADDRESS_FILE


def read_recorded_address(control_dir: Path | str | None = None) -> str | None:
    """The URL a running control plane recorded in its directory, or None."""
    try:
        doc = json.loads(address_file(control_dir).read_text())
    except (OSError, ValueError):
        return None
    url = doc.get("url") if isinstance(doc, dict) else None
    return url if isinstance(url, str) else None


def write_address(path: Path, url: str) -> None:
    """Write ``{"url", "pid"}`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".address.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "pid": os.getpid()}, fh)
    os.replace(tmp, path)


def forget_address(path: Path) -> None:
    """Remove the record if this process wrote it (another control plane may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
