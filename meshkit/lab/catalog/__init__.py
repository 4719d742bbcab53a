"""The lab catalog: every lab's steps (title, check, hint, solution, exercise), one module per lab.

A notebook only names its lab (``Lab("03-mirroring", mesh)``); the steps, their checks and their
solutions come from here, so a learner sees step titles and check cells, never the checking code or
the solutions, and the reference edition of a notebook (`meshkit.lab.editions`) is generated from
the same definitions. Each lab module defines ``LAB = LabSpec(...)``.

A check is ``check(mesh, lab) -> None | str | bool`` raising `CheckFailed` with what is missing;
``lab.state`` holds what the lab's ``setup`` recorded when the lab opened, ``lab.namespace`` the
notebook's variables. This package must not import the drawing libraries (ipywidgets, plotly) nor
run anything on import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["EXERCISE_KINDS", "LabSpec", "StepSpec", "get", "names"]

ExerciseKind = Literal["python", "yaml", "cli", "predict", "none"]
EXERCISE_KINDS: tuple[str, ...] = ("python", "yaml", "cli", "predict", "none")

CheckFn = Callable[["Mesh", "Lab"], Any]

_MODULES: dict[str, str] = {
    "00-welcome": "lab00_welcome",
    "01-request-routing": "lab01_request_routing",
    "02-canary": "lab02_canary",
    "03-mirroring": "lab03_mirroring",
    "04-fault-injection": "lab04_fault_injection",
    "05-resilience": "lab05_resilience",
    "06-mtls": "lab06_mtls",
    "07-authorization": "lab07_authorization",
    "08-observability": "lab08_observability",
    "09-library-node-agent-sidecar": "lab09_library_node_agent_sidecar",
    "10-debugging-503s": "lab10_debugging_503s",
}


@dataclass(frozen=True)
class StepSpec:
    """One step. ``task`` is what the learner edition's exercise cell asks for; ``solution`` is the
    exact source of that cell in the reference edition; ``exercise`` says what the learner writes:
    Python (``python``), Istio YAML in a ``%%mesh apply`` cell (``yaml``), a command in the terminal
    (``cli``), an answer to a prediction (``predict``) or nothing (``none``: a check of what the
    demonstration cells did). ``choices`` are a prediction's possible answers, ``answer`` the right one."""

    id: str
    title: str
    check: CheckFn
    hint: str
    solution: str
    task: str = ""
    exercise: ExerciseKind = "python"
    choices: tuple[str, ...] = ()
    answer: str = ""
    retry_for: float | None = None
    traffic: str = ""  # what the notebook's traffic cell after the exercise does (instructor fast-forward)
    # what the notebook runs before the exercise that the step depends on, beyond earlier steps' solutions
    # (lab 10 plants its incident): the instructor fast-forward runs it first; self-contained code
    before: str = ""

    def __post_init__(self) -> None:
        if self.exercise not in EXERCISE_KINDS:
            raise ValueError(f"step {self.id!r}: exercise must be one of {EXERCISE_KINDS}, got "
                             f"{self.exercise!r}")
        if self.exercise == "predict" and self.answer not in self.choices:
            raise ValueError(f"step {self.id!r}: the answer {self.answer!r} is not one of its choices")


@dataclass(frozen=True)
class LabSpec:
    """A lab: its id (the notebook's file stem), objectives, prerequisites, steps in order, and an
    optional ``setup(mesh, state)`` run when a notebook opens the lab (e.g. to note a certificate's
    serial before the learner rotates it)."""

    name: str
    title: str
    objectives: tuple[str, ...]
    prerequisites: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    setup: Callable[[Mesh, dict[str, Any]], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def step(self, step_id: str) -> StepSpec:
        for spec in self.steps:
            if spec.id == step_id:
                return spec
        raise KeyError(f"lab {self.name!r} has no step {step_id!r} (steps: "
                       f"{', '.join(s.id for s in self.steps)})")


def names() -> list[str]:
    """Every lab id in the catalog, in order."""
    return list(_MODULES)


def get(name: str) -> LabSpec | None:
    """The lab ``name`` (e.g. ``"03-mirroring"``), or None when the catalog has no such lab."""
    module = _MODULES.get(name)
    if module is None:
        return None
    spec: LabSpec = importlib.import_module(f"{__name__}.{module}").LAB
    return spec
