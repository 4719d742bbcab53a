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
    the path inside the resource (``spec.http[0].route[1].destination.subset``).
    """

    code: str
    severity: Severity
    resource: str
    field: str
    text: str

    def __str__(self) -> str:
        where = f"{self.resource} {self.field}".strip()
        return f"{self.severity.value} [{self.code}] ({where}) {self.text}"

    def to_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "resource": self.resource,
            "field": self.field,
            "message": self.text,
        }


class ConfigError(ValueError):
    """Raised when input is rejected; carries every message, errors first."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = sorted(messages, key=lambda m: m.severity != Severity.ERROR)
        super().__init__("\n".join(str(m) for m in self.messages))
