"""Telemetry (``telemetry.istio.io`` v1/v1alpha1), its tracing part: the models.

Tracing providers, the sampling percentage and span reporting, per workload selector; Istio's
metrics and access logging parts are named as not supported.

It must not decide what a proxy samples (`compile`) or import any meshkit module but
`resource_base`. Importers use `meshkit.config.resources`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshkit.config.resource_base import IstioModel, Resource, WorkloadSelector


class TracingProvider(IstioModel):
    name: str = Field(min_length=1)  # any name: every span goes to the control plane's collector


class Tracing(IstioModel):
    unsupported_fields = frozenset({"match", "customTags", "useRequestIdForTraceSampling", "enableIstioTags"})

    providers: list[TracingProvider] | None = None
    random_sampling_percentage: float | None = Field(default=None, ge=0.0, le=100.0)
    disable_span_reporting: bool | None = None


class TelemetrySpec(IstioModel):
    unsupported_fields = frozenset({"metrics", "accessLogging", "targetRef", "targetRefs"})

    selector: WorkloadSelector | None = None
    tracing: list[Tracing] | None = None


class Telemetry(Resource):
    group = "telemetry.istio.io"
    versions = ("v1", "v1alpha1")

    kind: Literal["Telemetry"] = "Telemetry"
    spec: TelemetrySpec = TelemetrySpec()
