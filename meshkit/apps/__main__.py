"""``python -m meshkit.apps <app> --port N``: run one demo app (see ``meshkit.apps.launcher``).

The demo apps speak plain HTTP only (mutual TLS is their sidecar's job), so this process does
without the ``ssl`` module: marking it absent before asyncio and aiohttp are imported keeps
OpenSSL's libraries and initialisation out of every app process (about 4 MiB of RSS each, for
issue 4's whole-mesh budget). Both then treat TLS as unavailable, as on a Python built without
it; an ``https://`` URL given to the ``sleep``/``legacy`` clients fails with a clear error.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # before anything imports asyncio

from meshkit.apps.launcher import main  # noqa: E402 - after the ssl line above, on purpose

if __name__ == "__main__":
    sys.exit(main())
