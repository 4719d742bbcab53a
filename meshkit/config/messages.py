"""Diagnostics shared by the loader, the analyzer and every caller that shows them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"


@dataclass(frozen=True, slots=True)
class Message:
    """One finding about one resource, like a line of ``istioctl analyze``.

    ``code`` is stable (e.g. ``MK0101``) so tests and docs can refer to it; ``resource``
    is ``Kind/namespace/name`` (or ``<document N>`` before a name is known); ``field`` is
    the path inside the resource (``spec.http[0].route[1].destination.subset``). ``file`` and
    ``line`` say where the resource starts in its input, when it came from a file (`with_location`);
    ``istio`` is the matching ``istioctl analyze`` code (``IST0101``), from `meshkit.config.codes`.
    """

    code: str
    severity: Severity
    resource: str
    field: str
    text: str
    file: str = ""
    line: int = 0

    @property
    def istio(self) -> str:
        from meshkit.config.codes import CODES  # noqa: PLC0415 (codes imports this module)

        entry = CODES.get(self.code)
        return entry.istio.split()[0] if entry is not None and entry.istio else ""

    def __str__(self) -> str:
        return format_message(self.to_dict())

    def to_dict(self) -> dict[str, str]:
        found = {
            "code": self.code,
            "severity": self.severity.value,
            "resource": self.resource,
            "field": self.field,
            "message": self.text,
        }
        if self.istio:
            found["istio"] = self.istio
        if self.file:
            found["location"] = f"{self.file}:{self.line}" if self.line else self.file
        return found


def format_message(message: dict[str, str]) -> str:
    """One finding as ``istioctl analyze`` lays it out, for a `Message` or its ``to_dict()``:
    ``Error [MK0101] (VirtualService/default/reviews spec.http[0].route[0].destination.subset vs.yaml:12)
    subset "v9" ... [IST0101]`` (the location when known, Istio's code when there is one)."""
    where = " ".join(part for part in (message.get("resource", ""), message.get("field", ""),
                                       message.get("location", "")) if part)
    severity, code = message.get("severity", "Error"), message.get("code", "")
    istio = f" [{message['istio']}]" if message.get("istio") else ""
    return f"{severity} [{code}] ({where}) {message.get('message', '')}{istio}"


class ConfigError(ValueError):
    """Raised when input is rejected; carries every message, errors first."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = sorted(messages, key=lambda m: m.severity != Severity.ERROR)
        super().__init__("\n".join(str(m) for m in self.messages))
