"""``python -m meshkit.cli`` runs the ``meshkit`` command."""

from meshkit.cli import main

main()
