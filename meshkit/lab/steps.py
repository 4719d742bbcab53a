"""Labs and their steps: `Lab("02-canary", mesh)` loads the lab's steps from `meshkit.lab.catalog`;
`lab.step(id, title, check=fn, hint=..., solution=...)` adds one by hand (tests, custom labs).

`lab.check(id)` (or ``lab[id].check()``) runs the step's check against the mesh (re-trying for a
few seconds, as telemetry lags a scrape behind), records the verdict in the learner's progress —
the state now, not history: a step that passed and fails later shows as *regressed* — and tells
every listener registered with `lab.on_check` (the workshop reports results to the instructor
through this hook). Opening a lab again (a kernel restart re-runs the first cell) re-checks every
step with recorded progress. `hint()` shows a hint; `solution()` shows a solution only in
self-study (no workshop joined), once the instructor released it, or in instructor mode
(``MESHKIT_INSTRUCTOR=1``), and records that the learner saw it. `lab.predict(id, answer)` records
a prediction before the learner observes the outcome. ``MESHKIT_LAB_STRICT=1`` makes a failing
check raise, which is how the test suite runs every lab.
"""

from __future__ import annotations

import html
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshkit.lab import catalog
from meshkit.lab.checks import CheckFailed
from meshkit.lab.display import LabError, Plain
from meshkit.lab.mesh import Mesh, connect
from meshkit.lab.progress import ProgressStore

__all__ = ["CheckResult", "Lab", "Note", "Step", "default_retry", "instructor_mode", "strict_mode"]

CheckFn = Callable[[Mesh], Any]
Listener = Callable[["CheckResult"], None]
RETRY_FOR = 4.0  # telemetry lags up to a scrape (1 s) behind; $MESHKIT_LAB_RETRY_FOR overrides


def default_retry() -> float:
    try:
        return max(0.0, float(os.environ.get("MESHKIT_LAB_RETRY_FOR", RETRY_FOR)))
    except ValueError:
        return RETRY_FOR


def _kernel_namespace() -> dict[str, Any] | None:
    """The IPython kernel's user namespace, or None outside a notebook."""
    try:
        from IPython import get_ipython  # noqa: PLC0415
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    namespace: dict[str, Any] = shell.user_ns
    return namespace


def _notebook_namespace() -> dict[str, Any]:
    """The IPython kernel's user namespace (what the notebook's cells define)."""
    try:
        from IPython import get_ipython  # noqa: PLC0415
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is None:
        raise LabError("fast_forward: outside a notebook, pass namespace={...} with the names the "
                       "solutions use (mesh, rules, ...)")
    namespace: dict[str, Any] = shell.user_ns
    return namespace


def instructor_mode() -> bool:
    return os.environ.get("MESHKIT_INSTRUCTOR", "") not in ("", "0", "false", "no")


def strict_mode() -> bool:
    return os.environ.get("MESHKIT_LAB_STRICT", "") not in ("", "0", "false", "no")


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: the event the workshop reports (lab, step, passed, reason, time)."""

    lab: str
    step: str
    title: str
    passed: bool
    reason: str
    at: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"lab": self.lab, "step": self.step, "title": self.title, "passed": self.passed,
                "reason": self.reason, "at": self.at, "seconds": round(self.seconds, 3)}

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"✔ {self.title}: passed"
        return f"✘ {self.title}: not yet — {self.reason}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1b7f3b" if self.passed else "#b00020"
        mark = "✔" if self.passed else "✘"
        tail = "passed" if self.passed else f"not yet — {html.escape(self.reason)}"
        return f'<div style="color:{colour}"><b>{mark} {html.escape(self.title)}</b>: {tail}</div>'


NOTE_STYLE = ("background:#f7f7f7;padding:6px;white-space:pre-wrap;word-break:normal;"
              "overflow-wrap:break-word")


class Note:
    """A titled block of text (hints, solutions): folded HTML details, or plain text."""

    def __init__(self, title: str, body: str, *, folded: bool = False, hidden_text: str = "") -> None:
        self.title = title
        self.body = body
        self.folded = folded
        self.hidden_text = hidden_text

    def __str__(self) -> str:
        if self.hidden_text:
            return f"{self.title}: {self.hidden_text}"
        if self.folded:
            return f"{self.title}: hidden; call .solution(reveal=True) to see it"
        return f"{self.title}:\n{self.body}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        if self.hidden_text:
            return f"<div><i>{html.escape(self.title)}: {html.escape(self.hidden_text)}</i></div>"
        # JupyterLab's output CSS breaks <pre> text anywhere (word-break: break-all): a prediction's
        # question wrapped mid-word ("p / roductpage"). Wrap at spaces; split a word only when it is
        # longer than the whole line.
        body = (f'<pre style="{NOTE_STYLE}">'
                f"{html.escape(self.body)}</pre>")
        opened = "" if self.folded else " open"
        return f"<details{opened}><summary>{html.escape(self.title)}</summary>{body}</details>"


@dataclass
class Step:
    lab: Lab
    id: str
    title: str
    check_fn: CheckFn
    hint_text: str = ""
    solution_text: str = ""
    retry_for: float | None = None
    spec: catalog.StepSpec | None = None

    def check(self, *, retry_for: float | None = None, strict: bool | None = None) -> CheckResult:
        """Verify the mesh's real state and traffic; passes, or says precisely what is missing."""
        began = time.monotonic()
        wait = retry_for if retry_for is not None else self.retry_for
        deadline = began + (wait if wait is not None else default_retry())
        while True:
            reason = self._run_once()
            if not reason or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        result = CheckResult(self.lab.name, self.id, self.title, not reason, reason, time.time(),
                             time.monotonic() - began)
        self.lab.record(result)
        if not result.passed and (strict_mode() if strict is None else strict):
            raise CheckFailed(str(result))
        return result

    def _run_once(self) -> str:
        try:
            outcome = self.check_fn(self.lab.mesh)
        except CheckFailed as exc:
            return str(exc)
        except LabError as exc:
            return exc.text()
        if outcome is False:
            return "the check found the step not done"
        return outcome if isinstance(outcome, str) else ""

    def hint(self) -> Note:
        return Note(f"Hint for '{self.title}'", self.hint_text or "No hint for this step.")

    def solution(self, reveal: bool = False) -> Note:
        """The solution: hidden while the instructor has not released it (in a workshop); folded
        until ``reveal=True`` otherwise. A revealed solution is recorded (and reported)."""
        title = f"Solution of '{self.title}'"
        locked = self.lab.solution_lock(self) if self.lab.solution_lock else None
        if locked and not instructor_mode():
            return Note(title, "", hidden_text=locked)
        if reveal or instructor_mode():
            if not instructor_mode():
                self.lab.solution_seen(self)
            return Note(title, self.solution_text or "(no solution text)")
        return Note(title, self.solution_text or "(no solution text)", folded=True)

    def done(self) -> bool:
        """Whether the latest check passed (a step that passed once and fails now is not done)."""
        return bool(self.lab.store.of(self.lab.name).get(self.id, {}).get("done"))


@dataclass
class Lab:
    """A lab's steps, its progress and its listeners. ``mesh`` defaults to `connect()` on first use."""

    name: str
    mesh_: Mesh | None = None
    store: ProgressStore = field(default_factory=ProgressStore)
    steps: dict[str, Step] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    solution_lock: Callable[[Step], str | None] | None = None
    namespace: dict[str, Any] | None = None  # the notebook's variables (default: the kernel's)
    state: dict[str, Any] = field(default_factory=dict)  # what the catalog's setup recorded
    spec: catalog.LabSpec | None = None
    _widget: Any = None
    room: Any = None  # attend.Room when the learner joined a workshop

    def __post_init__(self) -> None:
        from meshkit.lab import attend  # noqa: PLC0415

        if self.namespace is None:
            self.namespace = _kernel_namespace() or {}
            _register_magic()
        self.spec = catalog.get(self.name) if not self.steps else None
        if self.spec is not None:
            self._load(self.spec)
        self.room = attend.attach(self)
        if self.spec is not None:
            self.recheck()
            self.mesh._lab_opened(self)  # `mesh.reset()` re-checks this lab

    def _load(self, spec: catalog.LabSpec) -> None:
        if spec.setup is not None:
            spec.setup(self.mesh, self.state)
        for item in spec.steps:
            made = Step(self, item.id, item.title, _bound(item.check, self), item.hint, item.solution,
                        item.retry_for, item)
            self.steps[item.id] = made

    def __getitem__(self, step_id: str) -> Step:
        step = self.steps.get(step_id)
        if step is None:
            raise LabError(f"lab {self.name!r} has no step {step_id!r} (steps: "
                           f"{', '.join(self.steps) or 'none'})")
        return step

    def check(self, step_id: str) -> CheckResult:
        """Check step ``step_id`` against the mesh (see `Step.check`)."""
        return self[step_id].check()

    def hint(self, step_id: str) -> Note:
        return self[step_id].hint()

    def solution(self, step_id: str, reveal: bool = False) -> Note:
        return self[step_id].solution(reveal)

    def predict(self, step_id: str, answer: str | None = None) -> Note:
        """A prediction step: without ``answer``, the question and its choices; with one, records
        it (before you observe the outcome — the step's check then wants a recorded answer)."""
        step = self[step_id]
        spec = step.spec
        if spec is None or spec.exercise != "predict":
            raise LabError(f"step {step_id!r} of lab {self.name!r} is not a prediction")
        choices = "\n".join(f"  {c}" for c in spec.choices)
        if answer is None:
            title = spec.title if spec.title.startswith("Predict") else f"Predict: {spec.title}"
            return Note(title, f"{spec.task}\n{choices}\n"
                        f'Answer with lab.predict("{step_id}", "<one of the choices>").')
        picked = _choice(answer, spec.choices)
        if picked is None:
            raise LabError(f"predict: {answer!r} is not one of the choices of {step_id!r}:\n{choices}")
        self.store.mark(self.name, step_id, prediction=picked, predicted_at=time.time())
        return Note(f"Prediction recorded for '{spec.title}'", f"You predicted: {picked}\n"
                    "Now run the next cells and compare.")

    def prediction(self, step_id: str) -> str | None:
        value = self.store.of(self.name).get(step_id, {}).get("prediction")
        return str(value) if value else None

    def solution_seen(self, step: Step) -> None:
        """Record that the learner saw ``step``'s solution (the workshop dashboard shows it)."""
        self.store.mark(self.name, step.id, solution_seen=time.time())
        if self.room is not None:
            self.room.solution_seen(step)

    def recheck(self) -> list[CheckResult]:
        """Check again, once and without raising, every step with recorded progress: progress is
        the mesh's state now, so after `mesh.reset()` (which calls this for every lab opened on the
        mesh) or a kernel restart stale ticks turn into *regressed* steps instead of staying green."""
        saved = self.status()
        return [step.check(retry_for=0, strict=False) for sid, step in self.steps.items() if sid in saved]

    @property
    def mesh(self) -> Mesh:
        if self.mesh_ is None:
            self.mesh_ = connect()
        return self.mesh_

    def step(self, id: str, title: str, *, check: CheckFn, hint: str = "", solution: str = "",
             retry_for: float | None = None) -> Step:
        if not id or id in self.steps:
            raise LabError(f"step id: expected a new, non-empty id in lab {self.name!r}, got {id!r}")
        made = Step(self, id, title, check, hint, solution, retry_for)
        self.steps[id] = made
        return made

    def on_check(self, listener: Listener) -> None:
        """Call ``listener(result)`` after every check of this lab (the workshop's reporting seam)."""
        self.listeners.append(listener)

    def record(self, result: CheckResult) -> None:
        self.store.record(self.name, result.step, result.passed, result.reason, result.at)
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception as exc:  # a broken listener must not break the learner's check
                print(f"meshkit.lab: a check listener failed: {exc!r}")
        self._refresh_widget()

    def status(self) -> dict[str, dict[str, Any]]:
        return self.store.of(self.name)

    def done(self) -> list[str]:
        saved = self.status()
        return [s for s in self.steps if saved.get(s, {}).get("done")]

    def regressed(self) -> list[str]:
        """Steps whose check passed before and fails now."""
        saved = self.status()
        return [s for s in self.steps if saved.get(s, {}).get("regressed")]

    def reset_progress(self) -> None:
        self.store.reset(self.name)
        self._refresh_widget()

    def progress(self) -> Any:
        """A widget: a bar of steps done and one line per step (✔ done, ↺ regressed: passed before
        and fails now, ✘ failing, · not started)."""
        import ipywidgets as widgets  # noqa: PLC0415

        bar = widgets.IntProgress(min=0, max=max(1, len(self.steps)), description=self.name,
                                  style={"description_width": "initial"})
        lines = widgets.HTML()
        self._widget = (bar, lines)
        self._refresh_widget()
        if self.room is None:
            return widgets.VBox([bar, lines])
        self.room.outline()
        banner = widgets.HTML(self.room.banner_html())
        self.room.watch(banner)  # later broadcasts appear in it without running a cell
        return widgets.VBox([banner, bar, lines])

    def _refresh_widget(self) -> None:
        if self._widget is None:
            return
        bar, lines = self._widget
        saved = self.status()
        bar.max = max(1, len(self.steps))
        bar.value = len(self.done())
        rows = []
        for sid, st in self.steps.items():
            entry = saved.get(sid, {})
            if entry.get("done"):
                mark, note = "✔", ""
            elif entry.get("regressed"):
                mark, note = "↺", " <i>(regressed: passed before, fails now)</i>"
            elif "passed" in entry:
                mark, note = "✘", ""
            else:
                mark, note = "·", ""
            rows.append(f"{mark} {html.escape(st.title)}{note}")
        lines.value = "<br>".join(rows)

    def fast_forward(self, to: str, namespace: dict[str, Any] | None = None) -> list[CheckResult]:
        """Instructor mode: run the solutions of every step before ``to`` and check each one, so a
        demo can start mid-lab. Each step's ``before`` code (what its lab runs ahead of the exercise,
        e.g. lab 10's planted incidents) runs first, its ``traffic`` after the solution; ``to``'s own
        ``before`` runs too, so the lab stands where the notebook has it at ``to``'s exercise.
        Solutions run as code in ``namespace`` (default: the notebook's own namespace, so they see
        ``mesh``, ``rules``...); it stops at the first step that fails."""
        if not instructor_mode():
            raise LabError(f"fast_forward: lab {self.name!r} can only be fast-forwarded in instructor mode "
                           "(MESHKIT_INSTRUCTOR=1 or meshkit.lab.instructor())")
        if to not in self.steps:
            known = ", ".join(self.steps) or "none"
            raise LabError(f"fast_forward: lab {self.name!r} has no step {to!r} (steps: {known})")
        scope = namespace if namespace is not None else _notebook_namespace()
        results = []
        for sid, step in self.steps.items():
            if sid == to:  # the lab as the notebook has it just before this step's exercise
                if step.spec and step.spec.before:
                    self._run_before(sid, step.spec.before, scope)
                break
            if not step.solution_text.strip():
                raise LabError(f"fast_forward: step {sid!r} of lab {self.name!r} has no solution to run")
            code = step.solution_text
            before, traffic = (step.spec.before, step.spec.traffic) if step.spec else ("", "")
            if before:  # what the notebook runs before the exercise (lab 10 plants an incident)
                self._run_before(sid, before, scope)
            try:
                if code.startswith("%%bash"):  # a terminal exercise: the same commands in a shell
                    _run_shell(code.partition("\n")[2], f"{self.name}/{sid}")
                elif code.startswith("%%mesh"):  # a YAML exercise: what the cell magic does
                    from meshkit.lab.magic import mesh_cell  # noqa: PLC0415

                    line, _, body = code.partition("\n")
                    mesh_cell(line.removeprefix("%%mesh"), body, scope)
                else:
                    exec(compile(code, f"<solution of {self.name}/{sid}>", "exec"), scope)
                if traffic:  # the notebook's traffic cell after the exercise (Python, also after YAML)
                    exec(compile(traffic, f"<traffic of {self.name}/{sid}>", "exec"), scope)
            except Exception as exc:
                raise LabError(f"fast_forward: the solution of step {sid!r} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
            result = step.check()
            results.append(result)
            if not result.passed:
                raise LabError(f"fast_forward: step {sid!r} still fails after its solution: {result.reason}")
        return results

    def _run_before(self, sid: str, code: str, scope: dict[str, Any]) -> None:
        try:
            exec(compile(code, f"<before {self.name}/{sid}>", "exec"), scope)
        except Exception as exc:
            raise LabError(f"fast_forward: what lab {self.name!r} runs before step {sid!r} failed: "
                           f"{type(exc).__name__}: {exc}") from exc

    def summary(self) -> Plain:
        regressed = self.regressed()
        tail = f", {len(regressed)} regressed ({', '.join(regressed)})" if regressed else ""
        return Plain(f"{self.name}: {len(self.done())}/{len(self.steps)} steps done{tail}")

    def __repr__(self) -> str:
        return str(self.summary())


def _run_shell(script: str, what: str) -> None:
    """Run a terminal exercise's commands (instructor fast-forward) as JupyterLab's terminal would."""
    from meshkit.lab.jupyter import lab_environment  # noqa: PLC0415

    done = subprocess.run(["bash", "-e", "-c", script], env=lab_environment(os.environ), capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise LabError(f"the commands of {what} failed (exit {done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[-500:]}")


def _register_magic() -> None:
    """``%%mesh apply`` in the notebook's kernel (a no-op outside IPython), and the kernel's Python's
    ``bin`` first on ``PATH``: a ``!meshkit`` or ``%%bash`` cell runs the meshkit of this kernel, as
    JupyterLab's terminal does (`meshkit.lab.jupyter.lab_environment`)."""
    try:
        from IPython import get_ipython  # noqa: PLC0415
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "register_magic_function"):
        from meshkit.lab import magic  # noqa: PLC0415
        from meshkit.lab.jupyter import lab_environment  # noqa: PLC0415

        magic.register(shell)
        os.environ["PATH"] = lab_environment(os.environ)["PATH"]


def _bound(check: catalog.CheckFn, lab: Lab) -> CheckFn:
    def run(mesh: Mesh) -> Any:
        return check(mesh, lab)
    return run


def _choice(answer: str, choices: tuple[str, ...]) -> str | None:
    wanted = answer.strip().lower()
    for choice in choices:
        label = choice.split(")", 1)[0].strip().lower()
        if wanted in (choice.lower(), label):
            return choice
    return None
