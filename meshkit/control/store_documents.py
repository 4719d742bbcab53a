"""Each resource's ``to_dict()`` and JSON text, computed once per resource object (`Documents`).

The encoding the config store's diffs, comparisons and stored revisions share: a 1 MB resource takes
~0.1 s per dump, so the store keeps the documents of its current resources and a change dumps only
what it brings. It must not decide what a change is (`store_changes`), diff (`config_diff`) or
touch SQLite (`store`); it is never pickled (a `PreparedChange` crosses without it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from meshkit.config.resources import Resource
from meshkit.control import jsontext

_DUMPS_ENCODER = json.JSONEncoder()  # json.dumps's own settings; never changed


class Documents:
    """Each resource's ``to_dict()`` and its JSON computed once (a 1 MB resource takes ~0.1 s per
    dump); the store keeps those of its current resources, so a change dumps only what it brings."""

    def __init__(self, docs: dict[int, tuple[Resource, dict[str, Any]]] | None = None,
                 texts: dict[int, tuple[Resource, str]] | None = None) -> None:
        self._docs: dict[int, tuple[Resource, dict[str, Any]]] = dict(docs or {})
        self._texts: dict[int, tuple[Resource, str]] = dict(texts or {})

    def copy(self) -> Documents:
        return Documents(self._docs, self._texts)

    def only(self, resources: Iterable[Resource]) -> Documents:
        """The documents of ``resources`` already computed (the others are dropped)."""
        ids = {id(r) for r in resources}
        return Documents({i: d for i, d in self._docs.items() if i in ids},
                         {i: t for i, t in self._texts.items() if i in ids})

    def __call__(self, resource: Resource) -> dict[str, Any]:
        found = self._docs.get(id(resource))
        if found is None:
            found = self._docs[id(resource)] = (resource, resource.to_dict())  # keeps the id taken
        return found[1]

    def json(self, resource: Resource) -> str:
        """``json.dumps(self(resource))``, computed once, in short encoder calls (`jsontext`: a change
        prepared on a thread shares the GIL with the loop; one call held it 25-80 ms for 1 MB)."""
        found = self._texts.get(id(resource))
        if found is None:
            # the resource, its spec, a list in it (a VirtualService's http): the list in runs
            found = self._texts[id(resource)] = (resource, jsontext.dumps(self(resource), _DUMPS_ENCODER, 3))
        return found[1]
