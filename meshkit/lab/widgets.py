"""Interactive controls for labs: the canary slider and the YAML rule editor (ipywidgets).

Both act on the real mesh: the slider applies a weighted VirtualService each time it settles on
a value, the editor applies what is typed and shows the analyzer's messages (resource and field)
inline instead of raising. Their ``status`` line says what the last action did.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from meshkit.lab.display import LabError, Rule, to_yaml
from meshkit.lab.mesh import Mesh
from meshkit.lab.rules import canary


def _ok(text: str) -> str:
    return f'<span style="color:#1b7f3b">✔ {html.escape(text)}</span>'


def _problem(exc: LabError) -> str:
    return exc._repr_html_()


class CanarySlider(widgets.VBox):
    """Percent of ``host``'s traffic to ``canary``; the rest goes to ``stable``. Applies on release."""

    def __init__(self, mesh: Mesh, host: str = "reviews", *, stable: str = "v1", canary_subset: str = "v3",
                 value: int = 0, step: int = 10) -> None:
        self.mesh = mesh
        self.host = host
        self.stable = stable
        self.canary_subset = canary_subset
        self.applied: list[int] = []
        self.slider = widgets.IntSlider(value=value, min=0, max=100, step=step, continuous_update=False,
                                        description=f"{canary_subset} %",
                                        style={"description_width": "initial"})
        self.status = widgets.HTML(f"drag to send part of {host} to {canary_subset}")
        self.slider.observe(self._changed, names="value")
        super().__init__([self.slider, self.status])

    def weights(self, percent: int | None = None) -> dict[str, int]:
        p = self.slider.value if percent is None else percent
        return {self.stable: 100 - p, self.canary_subset: p}

    def _changed(self, change: dict[str, Any]) -> None:
        self.apply(int(change["new"]))

    def apply(self, percent: int | None = None) -> bool:
        weights = self.weights(percent)
        try:
            result = self.mesh.apply(canary(self.host, weights))
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.applied.append(weights[self.canary_subset])
        split = " / ".join(f"{k} {v}%" for k, v in weights.items())
        self.status.value = _ok(f"revision {result.revision}: {self.host} {split}")
        return True


class RuleEditor(widgets.VBox):
    """A YAML text area with Apply and Analyze; the analyzer's messages show under it."""

    def __init__(self, mesh: Mesh, initial: str | Rule | list[Rule] = "", *, rows: int = 16) -> None:
        self.mesh = mesh
        text = initial if isinstance(initial, str) else to_yaml(initial)
        self.text = widgets.Textarea(value=text, layout=widgets.Layout(width="100%"), rows=rows)
        self.apply_button = widgets.Button(description="Apply", button_style="primary", icon="check")
        self.analyze_button = widgets.Button(description="Analyze", icon="search")
        self.status = widgets.HTML()
        self.apply_button.on_click(lambda _b: self.apply())
        self.analyze_button.on_click(lambda _b: self.analyze())
        super().__init__([self.text, widgets.HBox([self.apply_button, self.analyze_button]), self.status])

    def apply(self) -> bool:
        try:
            result = self.mesh.apply(self.text.value)
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = _ok(str(result).replace("\n", "; "))
        return True

    def analyze(self) -> bool:
        try:
            findings = self.mesh.analyze(self.text.value)
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = findings._repr_html_()
        return bool(findings)


def canary_slider(mesh: Mesh, host: str = "reviews", *, stable: str = "v1", canary: str = "v3",
                  value: int = 0) -> CanarySlider:
    return CanarySlider(mesh, host, stable=stable, canary_subset=canary, value=value)


def rule_editor(mesh: Mesh, initial: str | Rule | list[Rule] = "") -> RuleEditor:
    return RuleEditor(mesh, initial)
