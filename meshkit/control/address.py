"""Where a running control plane says it listens: ``<state dir>/control/address.json`` (stdlib only).

The server writes it when it starts and removes it on a clean stop; the CLI reads it to find the
control plane without being told. The state dir is ``$MESHKIT_HOME`` or ``~/.meshkit``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CONTROL_SUBDIR = "control"
ADDRESS_FILE = "address.json"


def default_state_dir() -> Path:
    """``$MESHKIT_HOME`` or ``~/.meshkit`` (the same rule as `meshkit.runtime.state`)."""
    return Path(os.environ.get("MESHKIT_HOME") or Path.home() / ".meshkit")


def address_file(state_dir: Path | str | None = None) -> Path:
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    return root / CONTROL_SUBDIR / ADDRESS_FILE


def read_recorded_address(state_dir: Path | str | None = None) -> str | None:
    """The URL a running control plane recorded in the state dir, or None."""
    try:
        doc = json.loads(address_file(state_dir).read_text())
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
