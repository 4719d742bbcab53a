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


def _outcome(load: Any, text: bytes | str) -> tuple[str, str]:
    """What ``load(text)`` gives: the value's repr (key order and -0.0 count), or the error."""
    try:
        return "value", repr(load(text))
    except (ValueError, RecursionError) as error:
        return type(error).__name__, str(error)


ROUTE = b'{"match": [{"uri": {"prefix": "/r-%d/"}}], "route": [{"destination": {"host": "h"}}]}'
SPACED = (b' \r\n\t{ "a" :\t[ 1 , 2.5e3 , -0 , -0.0, true , false , null , "x\\u00e9\\"y" ] ,'
          b' "b" : { } , "c" : [ ] }\n ')


def test_jsontext_loads_is_json_loads() -> None:
    texts: list[bytes | str] = [json.dumps(value, indent=indent).encode()
                                for value in VALUES for indent in (None, 1)]
    body = (b'{"apiVersion": "v1", "kind": "List", "items": [{"kind": "VirtualService", "spec": {"http": ['
            + b", ".join(ROUTE % n for n in range(500)) + b"]}}]}")
    texts += [
        body, SPACED,
        b'{"a": 1, "b": 2, "a": [3]}',  # a repeated key: the last value, at the first place
        b"[NaN, Infinity, -Infinity, 1e999, 12345678901234567890123]",
        "\ufeff[1]".encode(), '{"caf\u00e9": "\u2603"}'.encode("utf-16"), '["\u00e9"]'.encode("utf-32"),
        '{"ключ": ["значение"]}',
    ]
    valid = len(texts)
    # what json.loads refuses gets its own error, word for word
    texts += [b"", b"   ", b"[1,", b"[1,]", b'{"a":1,}', b'{"a" 1}', b"{1: 2}", b'{"a":1}x', b"[1] [2]",
              b'["\x01"]', b"[" * 100_000, b'{"a":' * 50_000, b"nul", "\ufeff[1]", b'{"a": [1, 2}']
    for number, text in enumerate(texts):
        expected = _outcome(json.loads, text)
        for depth in range(7):
            assert _outcome(lambda raw, d=depth: jsontext.loads(raw, d), text) == expected, (text[:60], depth)
            if number < valid and isinstance(text, bytes) and not text.startswith(b"\xef\xbb\xbf") \
                    and text[:1] not in (b"\xff", b"\xfe", b"\x00"):
                # walked here, not handed to json.loads: the walk itself gives the same value
                decoded = text.decode()
                value, end = jsontext._value(decoded, jsontext._skip(decoded, 0), depth)
                assert (repr(value), jsontext._skip(decoded, end)) == (expected[1], len(decoded)), depth
    assert expected[0] == "JSONDecodeError"  # (the last text is refused)
