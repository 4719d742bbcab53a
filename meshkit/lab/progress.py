"""Where a learner's progress lives: ``$MESHKIT_HOME/lab/progress.json``, so reopening a notebook keeps it.

One JSON document ``{lab: {step: {"passed", "done", "ever", "regressed", "reason", "at", ...}}}``.
Progress is state, not history: ``passed`` and ``done`` are the latest check's verdict, ``ever``
whether it ever passed, ``regressed`` that it passed before and fails now. `mark` adds facts that
are not verdicts (``prediction``, ``solution_seen``). Written atomically (a crashed kernel never
leaves half a file) and re-read on every access, so two notebooks of the same learner agree.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from meshkit.runtime.state import StateDir

__all__ = ["ProgressStore"]


class ProgressStore:
    def __init__(self, state: StateDir | None = None) -> None:
        root = (state or StateDir.open()).root / "lab"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "progress.json"

    def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def of(self, lab: str) -> dict[str, dict[str, Any]]:
        return dict(self.load().get(lab, {}))

    def record(self, lab: str, step: str, passed: bool, reason: str, at: float) -> dict[str, Any]:
        data = self.load()
        steps = data.setdefault(lab, {})
        previous = steps.get(step, {})
        ever = passed or bool(previous.get("ever"))
        entry = {**previous, "passed": passed, "done": passed, "ever": ever, "regressed": ever and not passed,
                 "reason": reason, "at": at}
        steps[step] = entry
        self._write(data)
        return entry

    def mark(self, lab: str, step: str, **facts: Any) -> dict[str, Any]:
        """Record facts about a step that are not a check's verdict (a prediction, a solution seen)."""
        data = self.load()
        entry = data.setdefault(lab, {}).setdefault(step, {})
        entry.update(facts)
        self._write(data)
        return dict(entry)

    def reset(self, lab: str) -> None:
        data = self.load()
        data.pop(lab, None)
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".progress.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, Path(self.path))
