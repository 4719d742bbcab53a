"""``python -m meshkit.proxy``: run the sidecar (see ``meshkit.proxy.main``)."""

from __future__ import annotations

import sys

from meshkit.proxy.main import main

if __name__ == "__main__":
    sys.exit(main())
