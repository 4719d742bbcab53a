"""The Kubernetes objects Istio's samples carry, as typed models, and what the local mesh runs for them.

Models: ``Namespace``, ``Service``, ``ServiceAccount`` (core ``v1``) and ``Deployment``
(``apps/v1``), with Kubernetes' own field names. Fields that matter to the local mesh are
typed and checked (labels, selectors, replicas, ports, images, service accounts, the
``sidecar.istio.io/inject`` annotation). Fields that only a real kubelet could honour
(``volumes``, ``volumeMounts``, ``env``, ``resources``, probes, ``securityContext``,
``imagePullPolicy``...) are accepted as written and have no effect on the local mesh: they
are listed in ``LOCAL_NO_EFFECT`` and in docs/config-reference.md, never silently invented.
The one exception: the ``nginx`` image reads its ConfigMap and Secret volumes as files
(`meshkit.config.volumes`).
Any other field is rejected by name, as for the Istio kinds.

``SAMPLE_IMAGES`` maps Istio's sample images (any registry, any tag) to the built-in demo
app that stands in for them; `plan_workloads` turns the Deployments, Services, ServiceAccounts
and Namespaces of a config into `WorkloadPlan` values (pure data) that the local runtime
reconciles its processes to. This module is data only: no sockets, no processes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from meshkit.config.resources import IstioModel, Resource

INJECT_ANNOTATION = "sidecar.istio.io/inject"
INJECTION_LABEL = "istio-injection"
DEFAULT_NAMESPACE = "default"

# Fields Kubernetes defines that the local mesh accepts and does not act on (no kubelet here).
LOCAL_NO_EFFECT = (
    "imagePullPolicy", "env", "envFrom", "command", "args", "volumeMounts", "volumes", "resources",
    "livenessProbe", "readinessProbe", "startupProbe", "securityContext", "workingDir", "lifecycle",
    "terminationGracePeriodSeconds", "imagePullSecrets", "nodeSelector", "affinity", "tolerations",
    "strategy", "revisionHistoryLimit", "minReadySeconds", "progressDeadlineSeconds", "secrets",
    "automountServiceAccountToken", "sessionAffinity", "type",
)


class CoreResource(Resource):
    """A core (``v1``) Kubernetes object: its apiVersion has no group."""

    group = ""
    versions = ("v1",)

    @classmethod
    def accepted_api_versions(cls) -> list[str]:
        return list(cls.versions)


# ---------------------------------------------------------------------------------------------
# Namespace, ServiceAccount
# ---------------------------------------------------------------------------------------------


class NamespaceSpec(IstioModel):
    finalizers: list[str] | None = None


class Namespace(CoreResource):
    """Cluster-scoped in Kubernetes; stored under the ``default`` namespace its metadata defaults to."""

    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec | None = None

    @property
    def injection(self) -> bool | None:
        """``istio-injection=enabled`` -> True, ``disabled`` -> False, no label -> None."""
        value = (self.metadata.labels or {}).get(INJECTION_LABEL)
        return None if value is None else value == "enabled"


class ObjectReference(IstioModel):
    name: str | None = None


class ServiceAccount(CoreResource):
    kind: Literal["ServiceAccount"] = "ServiceAccount"
    spec: None = None
    secrets: list[ObjectReference] | None = None
    image_pull_secrets: list[ObjectReference] | None = None
    automount_service_account_token: bool | None = None


# ---------------------------------------------------------------------------------------------
# Service
# ---------------------------------------------------------------------------------------------


class ServicePort(IstioModel):
    unsupported_fields = frozenset({"nodePort"})

    name: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None


class ServiceSpec(IstioModel):
    unsupported_fields = frozenset(
        {"externalName", "externalIPs", "loadBalancerIP", "externalTrafficPolicy", "internalTrafficPolicy",
         "healthCheckNodePort", "ipFamilies", "ipFamilyPolicy", "clusterIPs", "loadBalancerSourceRanges",
         "publishNotReadyAddresses", "sessionAffinityConfig", "allocateLoadBalancerNodePorts",
         "loadBalancerClass", "trafficDistribution"}
    )

    ports: list[ServicePort] = Field(min_length=1)
    selector: dict[str, str] | None = None
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    session_affinity: Literal["None", "ClientIP"] | None = None


class Service(CoreResource):
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec


# ---------------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------------


class LabelSelector(IstioModel):
    unsupported_fields = frozenset({"matchExpressions"})

    match_labels: dict[str, str] = Field(min_length=1)


class ContainerPort(IstioModel):
    unsupported_fields = frozenset({"hostPort", "hostIP"})

    container_port: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(IstioModel):
    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    ports: list[ContainerPort] | None = None
    image_pull_policy: str | None = None
    env: list[Any] | None = None
    env_from: list[Any] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    volume_mounts: list[Any] | None = None
    resources: dict[str, Any] | None = None
    liveness_probe: dict[str, Any] | None = None
    readiness_probe: dict[str, Any] | None = None
    startup_probe: dict[str, Any] | None = None
    security_context: dict[str, Any] | None = None
    working_dir: str | None = None
    lifecycle: dict[str, Any] | None = None


class PodSpec(IstioModel):
    unsupported_fields = frozenset({"initContainers", "hostNetwork", "hostPID", "hostIPC", "nodeName",
                                    "dnsPolicy", "dnsConfig", "hostAliases", "runtimeClassName"})

    containers: list[Container] = Field(min_length=1)
    service_account_name: str | None = None
    service_account: str | None = None  # the deprecated alias of serviceAccountName
    volumes: list[Any] | None = None
    termination_grace_period_seconds: int | None = None
    security_context: dict[str, Any] | None = None
    image_pull_secrets: list[Any] | None = None
    node_selector: dict[str, str] | None = None
    affinity: dict[str, Any] | None = None
    tolerations: list[Any] | None = None

    @property
    def account(self) -> str:
        return self.service_account_name or self.service_account or "default"


class TemplateMeta(IstioModel):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PodTemplate(IstioModel):
    metadata: TemplateMeta = TemplateMeta()
    spec: PodSpec


class DeploymentSpec(IstioModel):
    unsupported_fields = frozenset({"paused"})

    replicas: int = Field(default=1, ge=0)
    selector: LabelSelector
    template: PodTemplate
    strategy: dict[str, Any] | None = None
    revision_history_limit: int | None = None
    min_ready_seconds: int | None = None
    progress_deadline_seconds: int | None = None


class Deployment(Resource):
    group = "apps"
    versions = ("v1",)

    kind: Literal["Deployment"] = "Deployment"
    spec: DeploymentSpec

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.spec.template.metadata.labels or {})


WORKLOAD_KINDS: tuple[type[Resource], ...] = (Namespace, Service, ServiceAccount, Deployment)

# Kubernetes kinds that travel in Istio's sample files but that the local mesh does not model: they
# are reported as ignored (a warning each), never a reason to refuse the file they are in.
IGNORED_KINDS = frozenset({
    "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Role", "RoleBinding",
    "ClusterRole", "ClusterRoleBinding", "StatefulSet", "DaemonSet", "Job", "CronJob",
    "Ingress", "Pod", "ReplicaSet", "PersistentVolumeClaim", "Endpoints", "EndpointSlice",
    # Gateway API's grant of a cross-namespace backendRef: the local mesh lets an HTTPRoute name a Service
    # of another namespace without one, so a grant would change nothing
    "ReferenceGrant",
})


# ---------------------------------------------------------------------------------------------
# Istio's sample images -> the built-in app that stands in for them
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleImage:
    pattern: re.Pattern[str]  # matched against the repository path without registry host or tag
    app: str  # the meshkit.apps app ("reviews"); "{1}" takes the pattern's first group
    example: str  # as Istio's samples write it

    def app_for(self, repository: str) -> str | None:
        found = self.pattern.search(repository)
        if found is None:
            return None
        return self.app.replace("{1}", found.group(1)) if "{1}" in self.app else self.app


SAMPLE_IMAGES: tuple[SampleImage, ...] = (
    SampleImage(re.compile(r"(?:^|/)examples-bookinfo-(productpage|details|reviews|ratings)-v[\w-]*$"), "{1}",
                "docker.io/istio/examples-bookinfo-<productpage|details|reviews|ratings>-v<N>:<tag>"),
    SampleImage(re.compile(r"(?:^|/)(?:go-)?httpbin$"), "httpbin",
                "docker.io/mccutchen/go-httpbin, docker.io/kong/httpbin, docker.io/kennethreitz/httpbin"),
    SampleImage(re.compile(r"(?:^|/)(?:curl|curl-ssl)$"), "sleep",
                "docker.io/curlimages/curl (samples/sleep, samples/curl), governmentpaas/curl-ssl"),
    # the circuit-breaking task's load client: an in-mesh client whose `fortio load|curl` commands run
    # through `meshkit exec` (meshkit.runtime.exec_command)
    SampleImage(re.compile(r"(?:^|/)fortio$"), "sleep",
                "fortio/fortio (samples/httpbin/sample-client/fortio-deploy.yaml)"),
    SampleImage(re.compile(r"(?:^|/)examples-helloworld-v[\w-]*$"), "helloworld",
                "docker.io/istio/examples-helloworld-v<N> (samples/helloworld)"),
    # plain TCP (no HTTP): the prefix it writes is the container's second arg (`WorkloadPlan.args`)
    SampleImage(re.compile(r"(?:^|/)tcp-echo-server$"), "tcp-echo",
                "docker.io/istio/tcp-echo-server (samples/tcp-echo)"),
    # the nginx of Istio's TLS tasks: static files by the nginx.conf its ConfigMap volume mounts
    SampleImage(re.compile(r"^(?:library/)?nginx$"), "nginx",
                "nginx, docker.io/library/nginx (the TLS tasks' server, configured by a mounted nginx.conf)"),
)


def known_images() -> str:
    return "; ".join(image.example for image in SAMPLE_IMAGES)


def repository_of(image: str) -> str:
    """``registry.istio.io/release/examples-bookinfo-reviews-v2:1.20.3`` -> ``release/examples-...-v2``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    head, _, rest = name.partition("/")
    if rest and ("." in head or ":" in head or head == "localhost"):
        name = rest  # drop the registry host
    return name


def sample_app(image: str) -> str | None:
    """The built-in app that runs ``image`` on the local mesh, or None for an image that is not a sample."""
    repository = repository_of(image)
    for sample in SAMPLE_IMAGES:
        app = sample.app_for(repository)
        if app is not None:
            return app
    return None


# ---------------------------------------------------------------------------------------------
# Deployments -> what the local mesh runs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadPlan:
    """One Deployment as the local mesh runs it: ``replicas`` instances of ``app``."""

    name: str  # the Deployment: "reviews-v1"
    namespace: str
    app: str  # the meshkit.apps app: "reviews", "httpbin", "sleep", "legacy"
    labels: tuple[tuple[str, str], ...]  # the pod template's labels
    service_account: str
    replicas: int
    service: str  # the Service selecting its pods (else its app label, else its name)
    service_port: int  # that Service's first port (else the container port, else 80)
    sidecar: bool
    args: tuple[str, ...] = ()  # the container's args (tcp-echo's ["9000,9001,9002", "one"])
    container_port: int | None = None  # the container's first port (nginx serves its server there)
    concurrency: int = 1  # the sidecar's worker processes (proxy.istio.io/config "concurrency")
    # the pod template's traffic.sidecar.istio.io/includeOutboundIPRanges / excludeOutboundIPRanges
    ip_ranges: tuple[tuple[str, str], ...] = ()

    @property
    def version(self) -> str:
        return dict(self.labels).get("version", "latest")  # Istio's canonical revision default


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service selector selects pods carrying all of its labels; an empty selector selects none."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def injection_enabled(deployment: Deployment, namespaces: Mapping[str, Namespace]) -> bool:
    """Istio's rule: the pod's ``sidecar.istio.io/inject`` (label, then annotation) wins; else the
    namespace's ``istio-injection`` label; when neither says, the local mesh injects in ``default``
    only (it behaves as if labelled ``istio-injection=enabled``, as Istio's getting-started has it
    labelled), and, as Istio, not in other namespaces: the mTLS migration task's ``legacy``
    namespace runs its client without a sidecar, while ``foo`` and ``bar`` are injected with
    ``istioctl kube-inject`` (`inject_manifests`, ``meshkit kube-inject``) or the namespace label."""
    template = deployment.spec.template.metadata
    for source in (template.labels or {}, template.annotations or {}):
        if INJECT_ANNOTATION in source:
            return source[INJECT_ANNOTATION].lower() == "true"
    namespace = namespaces.get(deployment.metadata.namespace)
    decided = namespace.injection if namespace is not None else None
    return deployment.metadata.namespace == DEFAULT_NAMESPACE if decided is None else decided


def inject_manifests(documents: Sequence[Any]) -> list[Any]:
    """What ``istioctl kube-inject -f`` gives, for the local mesh: every Deployment's pod template
    labelled ``sidecar.istio.io/inject: "true"`` (it then gets a sidecar whatever its namespace says);
    everything else unchanged. ``documents`` are parsed YAML documents (dicts; others pass through)."""
    out = []
    for doc in documents:
        injected = doc
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            injected = copy.deepcopy(doc)
            template = injected.setdefault("spec", {}).setdefault("template", {})
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels[INJECT_ANNOTATION] = "true"
        out.append(injected)
    return out


# Istio's per-pod outbound interception annotations (meshkit.config.ip_ranges reads them)
IP_RANGE_ANNOTATIONS = frozenset({"traffic.sidecar.istio.io/includeOutboundIPRanges",
                                  "traffic.sidecar.istio.io/excludeOutboundIPRanges"})


def ip_range_annotations(deployment: Deployment) -> tuple[tuple[str, str], ...]:
    """The pod template's outbound IP range annotations, (name, value) sorted."""
    found = deployment.spec.template.metadata.annotations or {}
    return tuple(sorted((k, str(v)) for k, v in found.items() if k in IP_RANGE_ANNOTATIONS))


def plan_workloads(resources: Sequence[Resource]) -> list[WorkloadPlan]:
    """Every Deployment of a sample image in ``resources``, as the local mesh runs it (sorted)."""
    services = [r for r in resources if isinstance(r, Service)]
    namespaces = {r.metadata.name: r for r in resources if isinstance(r, Namespace)}
    from meshkit.config.proxyconfig import workload_concurrency  # noqa: PLC0415 - it imports this module

    plans = []
    for deployment in sorted((r for r in resources if isinstance(r, Deployment)), key=lambda d: d.key):
        container = deployment.spec.template.spec.containers[0]
        app = sample_app(container.image)
        if app is None:
            continue  # analyze reports it (MK0301); the store never holds one
        labels = deployment.pod_labels
        sidecar = injection_enabled(deployment, namespaces)
        if app == "sleep" and not sidecar:
            app = "legacy"  # the out-of-mesh client: calls go straight to the service, in plaintext
        backing = sorted((s for s in services if s.metadata.namespace == deployment.metadata.namespace
                          and selects(s.spec.selector, labels)), key=lambda s: s.metadata.name)
        container_port = container.ports[0] if container.ports else None
        if backing:
            service, port = backing[0].metadata.name, backing[0].spec.ports[0].port
        else:
            service = labels.get("app", deployment.metadata.name)
            port = container_port.container_port if container_port is not None else 80
        plans.append(WorkloadPlan(
            name=deployment.metadata.name, namespace=deployment.metadata.namespace, app=app,
            labels=tuple(sorted(labels.items())), service_account=deployment.spec.template.spec.account,
            replicas=deployment.spec.replicas, service=service, service_port=port, sidecar=sidecar,
            args=tuple(container.args or ()),
            container_port=container_port.container_port if container_port is not None else None,
            concurrency=workload_concurrency(deployment) if sidecar else 1,
            ip_ranges=ip_range_annotations(deployment) if sidecar else (),
        ))
    return plans

