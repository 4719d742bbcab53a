"""kubectl's ``-o jsonpath=TEMPLATE`` for `meshkit get`, the forms Istio's task pages use.

``{.spec.ports[?(@.name=="tcp")].port}`` (the TCP ingress port), ``{.status.loadBalancer.ingress[0].ip}``,
``{.items[*].metadata.name}``, ``{.items..metadata.name}``: fields (``.name``), list indexes (``[0]``,
``[*]``), filters on a field's value (``[?(@.name=="tcp")]``, ``==`` or ``!=``), the recursive ``..name``,
and text outside the braces, printed as kubectl prints (several results joined by a space). Anything else
is a `JsonPathError` naming it. It only formats what `get` fetched: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"""
    \.\.(?P<deep>[\w-]+)                                  # ..name: every "name" below
  | \.(?P<field>[\w-]+)                                   # .name
  | \[(?P<index>\d+|\*)\]                                 # [0] [*]
  | \[\?\(@\.(?P<key>[\w.-]+)\s*(?P<op>==|!=)\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[\w.-]+))\)\]
""", re.VERBOSE)


class JsonPathError(ValueError):
    """A template this reading does not support, or a malformed one."""


def render(template: str, doc: Any) -> str:
    """``template`` with each ``{...}`` replaced by what it selects in ``doc``."""
    out, at = [], 0
    for found in re.finditer(r"\{([^{}]*)\}", template):
        out.append(template[at:found.start()])
        out.append(" ".join(_text(v) for v in select(found.group(1), doc)))
        at = found.end()
    out.append(template[at:])
    return "".join(out).replace("\\n", "\n")


def select(expression: str, doc: Any) -> list[Any]:
    """The values ``expression`` (``.a.b[0]``, without braces) selects in ``doc``."""
    expression = expression.strip()
    if expression in ("", "."):
        return [doc]
    if expression.startswith("$"):
        expression = expression[1:]
    values, at = [doc], 0
    while at < len(expression):
        step = _STEP.match(expression, at)
        if step is None:
            raise JsonPathError(f"jsonpath {{{expression}}}: cannot read {expression[at:]!r} (supported: "
                                '.field, ..field, [N], [*], [?(@.field=="value")])')
        values = _apply(step, values)
        at = step.end()
    return values


def _apply(step: re.Match[str], values: list[Any]) -> list[Any]:
    if step.group("field") is not None:
        name = step.group("field")
        return [v[name] for v in values if isinstance(v, dict) and name in v]
    if step.group("deep") is not None:
        return [found for v in values for found in _deep(v, step.group("deep"))]
    if step.group("index") is not None:
        index = step.group("index")
        lists = [v for v in values if isinstance(v, list)]
        if index == "*":
            return [item for v in lists for item in v]
        return [v[int(index)] for v in lists if int(index) < len(v)]
    wanted = next(g for g in (step.group("dq"), step.group("sq"), step.group("bare")) if g is not None)
    keys, same = step.group("key").split("."), step.group("op") == "=="
    items = [item for v in values for item in (v if isinstance(v, list) else [v])]
    return [item for item in items if (_text(_get(item, keys)) == wanted) == same]


def _get(item: Any, keys: list[str]) -> Any:
    for key in keys:
        item = item.get(key) if isinstance(item, dict) else None
    return item


def _deep(value: Any, name: str) -> list[Any]:
    found = []
    if isinstance(value, dict):
        if name in value:
            found.append(value[name])
        for child in value.values():
            found.extend(_deep(child, name))
    elif isinstance(value, list):
        for child in value:
            found.extend(_deep(child, name))
    return found


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        import json  # noqa: PLC0415

        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)
