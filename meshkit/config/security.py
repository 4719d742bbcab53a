"""PeerAuthentication and AuthorizationPolicy (``security.istio.io`` v1/v1beta1): the models.

Mutual TLS modes (per workload and per port) and authorization rules (sources, operations,
conditions, ALLOW/DENY/AUDIT), with Istio's field names; RequestAuthentication is `authn`.

Validation is per resource and structural; it must not decide which workloads a policy applies
to (`selection`), compile policies (`compile`) or import any meshkit module but `resource_base`.
Importers use `meshkit.config.resources`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from meshkit.config.resource_base import IstioModel, Resource, WorkloadSelector


class MutualTLS(IstioModel):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthenticationSpec(IstioModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[int, MutualTLS] | None = None


class Source(IstioModel):
    unsupported_fields = frozenset({"serviceAccounts", "notServiceAccounts"})

    principals: list[str] | None = None
    not_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None
    # the request principal ``<iss>/<sub>`` of a token a RequestAuthentication verified (config/authn.py)
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None


def _port_string(value: str) -> str:
    """Istio writes ports as strings ("8000"); a YAML integer is accepted and kept as its string."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f'port "{value}" is not a number between 1 and 65535')
    return value


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PortString = Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_port_string)]


class Operation(IstioModel):
    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None
    ports: list[PortString] | None = None
    not_ports: list[PortString] | None = None


class RuleFrom(IstioModel):
    source: Source


class RuleTo(IstioModel):
    operation: Operation


class Condition(IstioModel):
    key: str
    values: list[str] | None = None
    not_values: list[str] | None = None


class Rule(IstioModel):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class AuthorizationPolicySpec(IstioModel):
    unsupported_fields = frozenset({"provider", "targetRef", "targetRefs"})
    unsupported_values = {"action": frozenset({"CUSTOM"})}

    selector: WorkloadSelector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT"] | None = None
    rules: list[Rule] | None = None

    @property
    def effective_action(self) -> str:
        return self.action or "ALLOW"


class PeerAuthentication(Resource):
    group = "security.istio.io"
    versions = ("v1", "v1beta1")

    kind: Literal["PeerAuthentication"] = "PeerAuthentication"
    spec: PeerAuthenticationSpec = PeerAuthenticationSpec()


class AuthorizationPolicy(Resource):
    group = "security.istio.io"
    versions = ("v1", "v1beta1")

    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec = AuthorizationPolicySpec()
