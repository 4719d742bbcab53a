"""Freeing retired objects a slice at a time (`meshkit.control.release`) and JSON in short calls
(`meshkit.control.jsontext`): what is freed, what is never touched, and the same text."""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import pytest

from meshkit.control import jsontext
from meshkit.control.release import GradualRelease


class Node:
    def __init__(self, children: list[Any]) -> None:
        self.children = children


async def test_what_is_handed_over_is_freed_and_what_others_hold_is_untouched() -> None:
    release = GradualRelease(slice_seconds=0.001)
    shared = Node(["still", "here"])  # also held by the new config, say
    leaves = [Node([n, {"n": n}]) for n in range(20_000)]
    watched = [weakref.ref(leaf) for leaf in leaves[::1000]]
    retired: list[Any] = [Node([*leaves, shared]), {"docs": [leaf.children for leaf in leaves]}]
    del leaves
    release.put(retired)
    assert retired == [] and release.pending == 2  # taken over, not freed yet
    assert all(ref() is not None for ref in watched)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while release.pending:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert all(ref() is None for ref in watched)
    assert shared.children == ["still", "here"]  # walked past, never changed
    assert release.freed >= 20_000


def test_without_a_running_loop_objects_are_freed_at_once() -> None:
    leaf = Node([])
    ref = weakref.ref(leaf)
    handed: list[Any] = [leaf]
    del leaf
    GradualRelease().put(handed)
    assert ref() is None


VALUES: list[Any] = [
    {"b": [1, {"z": "é\u2028", "a": [1.5, None, True, -0.0]}], "a": {}, "c": ()},
    [], {}, "text", 10 ** 30, 1e300, [[[[[[{"deep": [1, 2]}]]]]]],
    {"routes": [{"name": f"r{n}", "match": [{"prefix": f"/{n}"}], "weight": n / 3} for n in range(300)]},
]


@pytest.mark.parametrize("encoder", [
    json.JSONEncoder(), json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    json.JSONEncoder(indent=2), json.JSONEncoder(sort_keys=True),
], ids=["default", "canonical", "indent", "sorted"])
def test_jsontext_is_the_encoders_own_text(encoder: json.JSONEncoder) -> None:
    for value in VALUES:
        assert jsontext.dumps(value, encoder) == encoder.encode(value)
        for depth in range(4):  # runs of members per call at every level, members of any length
            assert jsontext.dumps(value, encoder, depth) == encoder.encode(value)
    # runs sized by the members' mean length: short and long members, several runs per container
    mixed = {"list": [("x" * (n % 7) * 900 if n % 50 == 0 else n) for n in range(3000)],
             "dict": {f"k{n:04d}": [n] * (n % 300) for n in range(900)}}
    for depth in range(3):
        assert jsontext.dumps(mixed, encoder, depth) == encoder.encode(mixed)
    assert jsontext.dumps({1: "x", "a": 2}, json.JSONEncoder()) == json.dumps({1: "x", "a": 2})
