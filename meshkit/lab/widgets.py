"""Interactive controls for labs (ipywidgets): canary slider, YAML rule editor, A/B header router,
fault panel and mTLS mode toggle.

All act on the real mesh: the slider applies a weighted VirtualService each time it settles on a
value, the editor applies what is typed, the others build one rule from their fields. Problems
(the analyzer's messages, with resource and field) show inline instead of raising; each
control's ``status`` line says what the last action did.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from meshkit.lab.display import LabError, Rule, to_yaml
from meshkit.lab.mesh import Mesh
from meshkit.lab.rules import ab_test, canary, fault, mtls

__all__ = [
    "ABRouter", "CanarySlider", "FaultPanel", "MtlsToggle", "RuleEditor", "canary_slider", "rule_editor",
]


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


class ABRouter(widgets.VBox):
    """Send requests whose header equals a value to one subset, everyone else to another."""

    def __init__(self, mesh: Mesh, host: str = "reviews", *, header: str = "end-user",
                 subsets: tuple[str, ...] = ("v1", "v2", "v3")) -> None:
        self.mesh = mesh
        self.host = host
        self.header = widgets.Text(value=header, description="header")
        self.value = widgets.Text(value="jason", description="equals")
        self.to = widgets.Dropdown(options=subsets, value=subsets[1 % len(subsets)], description="goes to")
        self.default = widgets.Dropdown(options=subsets, value=subsets[0], description="others to")
        self.apply_button = widgets.Button(description="Apply", button_style="primary")
        self.status = widgets.HTML()
        self.apply_button.on_click(lambda _b: self.apply())
        super().__init__([widgets.HBox([self.header, self.value]), widgets.HBox([self.to, self.default]),
                          self.apply_button, self.status])

    def apply(self) -> bool:
        try:
            rule = ab_test(self.host, header=self.header.value, value=self.value.value, to=self.to.value,
                           default=self.default.value)
            result = self.mesh.apply(rule)
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = _ok(f"revision {result.revision}: {self.header.value}: {self.value.value} → "
                                f"{self.to.value}, others → {self.default.value}")
        return True


class FaultPanel(widgets.VBox):
    """Inject a delay and/or an abort into a share of ``host``'s requests; Clear removes the rule."""

    def __init__(self, mesh: Mesh, host: str = "ratings", *, to: str | None = "v1") -> None:
        self.mesh = mesh
        self.host = host
        self.to = to
        self.delay = widgets.FloatSlider(value=0.0, min=0.0, max=10.0, step=0.5, description="delay s")
        self.abort = widgets.Dropdown(options=[("none", 0), ("500", 500), ("503", 503)], value=0,
                                      description="abort")
        self.percent = widgets.IntSlider(value=100, min=0, max=100, step=5, description="percent")
        self.apply_button = widgets.Button(description="Inject", button_style="danger")
        self.clear_button = widgets.Button(description="Clear")
        self.status = widgets.HTML()
        self.apply_button.on_click(lambda _b: self.apply())
        self.clear_button.on_click(lambda _b: self.clear())
        super().__init__([self.delay, self.abort, self.percent,
                          widgets.HBox([self.apply_button, self.clear_button]), self.status])

    def apply(self) -> bool:
        delay = f"{self.delay.value:g}s" if self.delay.value > 0 else None
        try:
            rule = fault(self.host, delay=delay, abort=self.abort.value or None, percent=self.percent.value,
                         to=self.to)
            result = self.mesh.apply(rule)
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = _ok(f"revision {result.revision}: fault on {self.host} ({self.percent.value}%)")
        return True

    def clear(self) -> bool:
        try:
            result = self.mesh.delete(kind="VirtualService", name=self.host)
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = _ok(f"revision {result.revision}: no fault on {self.host}")
        return True


class MtlsToggle(widgets.VBox):
    """PeerAuthentication mode for a namespace (or one workload), applied when a button is chosen."""

    MODES = ("PERMISSIVE", "STRICT", "DISABLE")

    def __init__(self, mesh: Mesh, *, namespace: str = "default", workload: str | None = None,
                 value: str = "PERMISSIVE") -> None:
        self.mesh = mesh
        self.namespace = namespace
        self.workload = workload
        self.mode = widgets.ToggleButtons(options=self.MODES, value=value, description="mTLS")
        self.status = widgets.HTML(f"mTLS mode for {workload or 'namespace ' + namespace}")
        self.mode.observe(lambda change: self.apply(str(change["new"])), names="value")
        super().__init__([self.mode, self.status])

    def apply(self, mode: str | None = None) -> bool:
        chosen = mode or self.mode.value
        try:
            result = self.mesh.apply(mtls(chosen, namespace=self.namespace, workload=self.workload))
        except LabError as exc:
            self.status.value = _problem(exc)
            return False
        self.status.value = _ok(f"revision {result.revision}: mTLS {chosen}")
        return True


def canary_slider(mesh: Mesh, host: str = "reviews", *, stable: str = "v1", canary: str = "v3",
                  value: int = 0) -> CanarySlider:
    return CanarySlider(mesh, host, stable=stable, canary_subset=canary, value=value)


def rule_editor(mesh: Mesh, initial: str | Rule | list[Rule] = "") -> RuleEditor:
    return RuleEditor(mesh, initial)
