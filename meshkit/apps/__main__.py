"""``python -m meshkit.apps <app> --port N``: run one demo app (see ``meshkit.apps.launcher``)."""

from __future__ import annotations

import sys

from meshkit.apps.launcher import main

if __name__ == "__main__":
    sys.exit(main())
