"""meshkit: a Jupyter-first, hands-on service-mesh classroom.

The public API is curated here and loaded lazily, so that importing a small part of
meshkit (the sidecar, above all) never pulls in the notebook or control-plane stacks.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; filled in as the layers land.
_PUBLIC: dict[str, str] = {
    "load_resources": "meshkit.config.loader",
    "analyze": "meshkit.config.analyze",
    "ConfigError": "meshkit.config.messages",
    "Message": "meshkit.config.messages",
    "connect": "meshkit.lab.mesh",
    "Mesh": "meshkit.lab.mesh",
}

__all__ = ["ConfigError", "Mesh", "Message", "__version__", "analyze", "connect", "load_resources"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'meshkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
