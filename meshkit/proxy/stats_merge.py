"""Sum the counters of a ``--concurrency`` sidecar's processes into one set, as Envoy's stats are
one set for all its worker threads.

``prometheus(texts)``: Prometheus text expositions -> one, each series (name and labels) summed over
the texts (counters, histogram buckets, ``_sum`` and ``_count``, and gauges such as active
connections, whose sidecar-wide value is the sum); a ``*_timestamp_seconds`` gauge takes the largest
value. Series keep the order of their first appearance, under their first ``# HELP``/``# TYPE``.
``documents(docs)``: ``/stats`` JSON documents -> one, numbers summed key by key (recursively),
anything else (strings, None, booleans, lists) taken from the first document.

Pure functions: no I/O.
"""

from __future__ import annotations

from typing import Any


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _format(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def prometheus(texts: list[str]) -> str:
    order: list[str] = []  # comment lines and series keys, in first-seen order
    values: dict[str, float] = {}
    raw: dict[str, str] = {}  # series whose value is not a number: the first text's line
    seen_comments: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                if line not in seen_comments:
                    seen_comments.add(line)
                    order.append(line)
                continue
            key, _, value_text = line.rpartition(" ")
            value = _number(value_text)
            if not key or value is None:
                if line not in raw:
                    raw[line] = line
                    order.append(line)
                continue
            if key not in values:
                order.append(key)
                values[key] = value
            elif key.split("{", 1)[0].endswith("_timestamp_seconds"):
                values[key] = max(values[key], value)
            else:
                values[key] += value
    lines = [f"{item} {_format(values[item])}" if item in values else item for item in order]
    return "\n".join(lines) + "\n" if lines else ""


def documents(docs: list[Any]) -> Any:
    if not docs:
        return None
    first = docs[0]
    if isinstance(first, dict):
        keys: list[Any] = []
        for doc in docs:
            if isinstance(doc, dict):
                keys += [key for key in doc if key not in keys]
        return {key: documents([doc[key] for doc in docs if isinstance(doc, dict) and key in doc])
                for key in keys}
    if isinstance(first, int | float) and not isinstance(first, bool):
        total = sum(doc for doc in docs if isinstance(doc, int | float) and not isinstance(doc, bool))
        return round(total, 6) if isinstance(total, float) else total
    return first
