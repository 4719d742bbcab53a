"""How meshkit.lab things look in a notebook: rules as YAML, errors and findings as readable boxes.

Every object here has a `_repr_html_` for JupyterLab and a plain-text `__str__`/`__repr__` for
consoles and nbclient outputs. `LabError` is the one exception the lab raises for bad input or a
refused change; IPython shows it as its message (never a traceback) through `_render_traceback_`.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from meshkit.config.messages import format_message

__all__ = [
    "BrowserPage", "Findings", "LabError", "Plain", "Rule", "ShownAsTable", "Table", "message_line",
    "show_errors_as_html", "to_yaml",
]

_SEVERITY_COLOUR = {"Error": "#b00020", "Warning": "#a15c00", "Info": "#1f5f99"}


def to_yaml(docs: Any) -> str:
    """One or several resources as multi-document YAML, in Istio's key order (no sorting)."""
    items = docs if isinstance(docs, list) else [docs]
    return "---\n".join(yaml.safe_dump(_plain(d), sort_keys=False, default_flow_style=False) for d in items)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _pre(text: str, border: str = "#ccc") -> str:
    return (f'<pre style="border-left:4px solid {border};padding:6px 10px;margin:4px 0;'
            f'background:#f7f7f7;white-space:pre-wrap">{html.escape(text)}</pre>')


class Rule(dict[str, Any]):
    """An Istio resource (a plain dict, accepted wherever a resource is) that displays as YAML."""

    @property
    def ref(self) -> str:
        meta = self.get("metadata", {})
        return f"{self.get('kind')}/{meta.get('namespace', 'default')}/{meta.get('name')}"

    def yaml(self) -> str:
        return to_yaml(dict(self))

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(self.ref)}</b>{_pre(self.yaml(), '#1f5f99')}</div>"

    def __repr__(self) -> str:
        return self.yaml()


def message_line(msg: Mapping[str, str]) -> str:
    """The CLI's one-line form of an analyzer message dict (with Istio's code when there is one)."""
    return format_message(dict(msg))


def _messages_html(messages: Iterable[Mapping[str, str]]) -> str:
    rows = []
    for m in messages:
        colour = _SEVERITY_COLOUR.get(m.get("severity", "Error"), "#333")
        rows.append(
            f'<li><b style="color:{colour}">{html.escape(m.get("severity", ""))} '
            f'{html.escape(m.get("code", ""))}</b> <code>{html.escape(m.get("resource", ""))}</code> '
            f'field <code>{html.escape(m.get("field", ""))}</code>: {html.escape(m.get("message", ""))}'
            + (f' <small>({html.escape(m["istio"])} in Istio)</small>' if m.get("istio") else "") + "</li>")
    return f"<ul style='margin:4px 0'>{''.join(rows)}</ul>" if rows else ""


class LabError(Exception):
    """Bad input or a change the mesh refused; ``messages`` name the resource and the field."""

    def __init__(self, summary: str, messages: list[dict[str, str]] | None = None) -> None:
        self.summary = summary
        self.messages = list(messages or [])
        super().__init__(self.text())

    def text(self) -> str:
        lines = [self.summary, *(f"  {message_line(m)}" for m in self.messages)]
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:  # IPython: show this instead of a traceback
        return [f"LabError: {self.text()}"]

    def _repr_html_(self) -> str:
        return (f'<div style="border:1px solid #b00020;padding:6px 10px;border-radius:4px">'
                f'<b style="color:#b00020">{html.escape(self.summary)}</b>'
                f"{_messages_html(self.messages)}</div>")


def show_errors_as_html() -> bool:
    """In IPython, show a `LabError` escaping a cell as its HTML box plus its one-line text.

    The cell still fails (later cells of Run All do not run; nbclient still stops), but the
    learner reads the resource and field instead of a traceback. False outside IPython.
    """
    try:
        from IPython import get_ipython  # noqa: PLC0415
        from IPython.display import display  # noqa: PLC0415
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def handler(_shell: Any, _etype: type, value: BaseException, _tb: Any,
                tb_offset: Any = None) -> list[str]:
        if isinstance(value, LabError):
            display(value)
            return [f"LabError: {value.summary}"]
        return _shell.InteractiveTB.structured_traceback(_etype, value, _tb, tb_offset=tb_offset)

    shell.set_custom_exc((LabError,), handler)
    return True


class Findings:
    """The analyzer's answer: no messages is a green line, otherwise one line per message."""

    def __init__(self, messages: list[dict[str, str]], subject: str = "the mesh's config") -> None:
        self.messages = messages
        self.subject = subject

    @property
    def errors(self) -> list[dict[str, str]]:
        return [m for m in self.messages if m.get("severity") == "Error"]

    def __bool__(self) -> bool:  # truthy when clean, so `assert mesh.analyze()` reads well
        return not self.errors

    def __str__(self) -> str:
        if not self.messages:
            return f"✔ No problems found in {self.subject}."
        return "\n".join(message_line(m) for m in self.messages)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        if not self.messages:
            return f'<div style="color:#1b7f3b">✔ No problems found in {html.escape(self.subject)}.</div>'
        return f"<div>{_messages_html(self.messages)}</div>"


class Plain(str):
    """Text a notebook shows as text (a plain ``str`` result would show quoted)."""

    def __repr__(self) -> str:
        return str(self)


class Table:
    """Rows of dicts as an HTML table (and aligned text)."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
        self.rows = rows
        self.columns = columns
        self.title = title

    def __str__(self) -> str:
        cells = [[str(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.upper().ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in self.columns)
                       + "</tr>" for r in self.rows)
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        return f"{title}<table><tr>{head}</tr>{body}</table>"


class ShownAsTable:
    """A result a notebook shows as its `table()` (HTML) and a console as the table's text.

    A dataclass using it needs ``repr=False`` (else its generated ``__repr__`` wins).
    """

    def table(self) -> Table:
        raise NotImplementedError

    def __str__(self) -> str:
        return str(self.table())

    def __repr__(self) -> str:
        return str(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


class BrowserPage:
    """A page of the mesh's ingress as the learner's browser shows it, in a cell: an iframe through
    JupyterLab's own server (jupyter-server-proxy's ``/proxy/<port>/``), so it works on Binder and
    JupyterHub too, where the browser cannot reach 127.0.0.1. The base URL is JupyterHub's
    ``JUPYTERHUB_SERVICE_PREFIX`` when set, else ``/`` (`meshkit lab`)."""

    def __init__(self, port: int, path: str = "/productpage", *, height: int = 520) -> None:
        self.port = port
        self.path = path if path.startswith("/") else f"/{path}"
        self.height = height

    @property
    def url(self) -> str:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        return f"{prefix.rstrip('/')}/proxy/{self.port}{self.path}"

    def __str__(self) -> str:
        return f"{self.path} of the ingress (port {self.port}), in JupyterLab at {self.url}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return (f'<iframe src="{url}" title="Bookinfo" style="width:100%;height:{self.height}px;'
                'border:1px solid #ccc"></iframe>'
                f'<div style="font-size:90%">What a user\'s browser shows, through JupyterLab '
                f'(jupyter-server-proxy). Run the cell again to reload it, or <a href="{url}" '
                'target="_blank" rel="noopener">open it in a tab</a> and refresh there.</div>')
