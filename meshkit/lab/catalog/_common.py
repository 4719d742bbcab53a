"""Helpers the lab modules of the catalog share: prediction steps and the checks every lab uses.

It must not hold state: a check reads the mesh, the lab's progress and the notebook's variables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.lab.catalog import StepSpec
from meshkit.lab.checks import CheckFailed

if TYPE_CHECKING:
    from meshkit.lab.mesh import Mesh
    from meshkit.lab.steps import Lab

__all__ = ["predict", "require_passed_before", "require_sticky_split", "require_variable"]


def predict(step_id: str, title: str, question: str, choices: tuple[str, ...], answer: str) -> StepSpec:
    """A step that asks for a prediction (recorded) before the learner observes the outcome."""

    def recorded(_mesh: Mesh, lab: Lab) -> None:
        if lab.prediction(step_id) is None:
            raise CheckFailed(f'no prediction recorded yet: lab.predict("{step_id}", "<your choice>") '
                              "before you run the cells that show the outcome")

    return StepSpec(step_id, title, recorded, exercise="predict", task=question, choices=choices,
                    answer=answer, hint="Any answer counts; what matters is committing to one before you "
                                        "look.",
                    solution=f'lab.predict("{step_id}", "{answer.split(")", 1)[0]}")', retry_for=0)


def require_passed_before(lab: Lab, step_id: str, why: str) -> None:
    """Step ``step_id`` of ``lab`` passed at some point (a later step builds on what it did)."""
    if not lab.status().get(step_id, {}).get("ever"):
        raise CheckFailed(f"{why}: step {step_id!r} has not passed yet (lab.check({step_id!r}))")


def require_variable(lab: Lab, name: str, how: str) -> object:
    """The notebook variable ``name`` (set by the learner's exercise cell)."""
    value = (lab.namespace or {}).get(name)
    if value is None:
        raise CheckFailed(f"no {name} in this notebook yet: {how}")
    return value


def require_sticky_split(mesh: Mesh, *, user: str, to: str, others: dict[str, float],
                         user_pages: int = 12, other_pages: int = 60) -> None:
    """Behaviour, not spelling: the check sends its own page views — ``user`` always lands on ``to``,
    everyone else on ``others`` (version -> expected share, judged with an exact binomial test)."""
    from meshkit.lab import checks  # noqa: PLC0415

    seen = checks.probe_versions(mesh, user_pages, user=user)
    checks.expect(seen == {to: float(user_pages)},
                  f"{user} should always see reviews {to}; {user_pages} page views as {user} were answered "
                  f"by "
                  + ", ".join(f"{v} x{n:.0f}" for v, n in sorted(seen.items())))
    rest = checks.probe_versions(mesh, other_pages)
    for version, share in others.items():
        checks.require_share(rest, version, share, what=f"{other_pages} page views of users other than "
                                                        f"{user}")
