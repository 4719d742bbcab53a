"""The meshkit operator: kopf handlers wiring injection, validation and status to a cluster.

`build_registry(config)` returns a fresh ``kopf.OperatorRegistry`` (no global registry) with:

* ``inject``: a mutating webhook on pod CREATE that applies `meshkit.k8s.inject.inject`,
  with the pod's namespace labels from an index over namespaces;
* ``validate-<plural>``: a validating webhook per Istio kind that loads and analyses the
  object and rejects it with the analyzer's messages (`meshkit.k8s.admission`);
* ``status-<plural>``: on create / update / resume, writes ``status`` (observedGeneration,
  a Ready condition, validationMessages) from an analysis against every Istio resource
  the operator has indexed; one operator-wide task (`meshkit.k8s.status_resync`) every
  ``status_resync_s`` re-analyses all of them and patches only the statuses whose findings
  changed (a DestinationRule applied after its VirtualService turns the VirtualService Ready
  within one period). No handler needs a finalizer, so deletes never wait for the operator;
* the kinds (and the RBAC rules that let the operator serve them) come from one list,
  `meshkit.config.api_kinds`;
* a start-up handler that configures kopf: standalone, progress in annotations (the CRDs'
  status schema has no room for kopf's own status), and the webhook server
  (`meshkit.k8s.webhook`): kopf-managed webhook configurations (``config.managed``: tests,
  dev clusters), or the static ones from ``operator/deploy`` with the CA bundle published.

Run it with ``python operator/main.py`` (see there) or ``kopf.operator(registry=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import kopf

from meshkit.config.api_kinds import ApiKind, istio_kinds
from meshkit.config.messages import Severity
from meshkit.k8s import names
from meshkit.k8s.admission import admission_messages, errors, rejection_text, status_messages
from meshkit.k8s.inject import InjectionRefused, InjectSettings, inject
from meshkit.k8s.root_cert_publisher import RootCertPublisher
from meshkit.k8s.status import build_status
from meshkit.k8s.status_resync import StatusResync, every, kopf_patcher, kopf_requester
from meshkit.k8s.webhook import ApiAccess, MeshkitWebhookServer, ca_bundle_publisher, kopf_server

ANNOTATION_PREFIX = "operator.meshkit.dev"
NAMESPACE_INDEX = "namespace_labels"
INJECT_HANDLER = "inject"

# (group, plural) of every Istio kind meshkit implements: the same list the RBAC rules come from
# (group, version, plural): with the version, as kopf serves a versionless selector only in the
# group's preferred version (v1), which would leave EnvoyFilter (v1alpha3 only) unserved
ISTIO_RESOURCES: tuple[tuple[str, str, str], ...] = tuple(
    (kind.group, kind.version, kind.plural) for kind in istio_kinds()
)


def validate_handler_id(plural_name: str) -> str:
    return f"validate-{plural_name}"


def _index_id(plural_name: str) -> str:
    return f"istio_{plural_name}"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator's handlers and its webhook server need."""

    inject: InjectSettings = field(default_factory=InjectSettings)
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = names.PORT_WEBHOOK
    # the host name put into webhook URLs (kopf-managed mode); None: the listen address
    webhook_host: str | None = None
    # where to write the self-signed serving certificate; None serves plain HTTP (tests only)
    cert_dir: Path | None = None
    # name of kopf-managed webhook configurations; None: use the static ones from operator/deploy
    managed: str | None = None
    # API access for publishing the CA bundle into the static configurations; None: don't
    api: ApiAccess | None = None
    ca_targets: tuple[tuple[str, str], ...] = (
        ("mutating", names.MUTATING_WEBHOOK_CONFIG),
        ("validating", names.VALIDATING_WEBHOOK_CONFIG),
    )
    # injection trusts the webhook configuration's namespace/object selectors (Istio's way); None:
    # when the configurations are the static ones (they carry the selectors; kopf-managed ones
    # select every pod, so the operator decides from its namespace index, and denies a pod whose
    # namespace it has not seen yet so the ReplicaSet retries, instead of admitting it bare)
    trust_selectors: bool | None = None
    # how often each resource's status is re-analysed against the others (seconds)
    status_resync_s: float = 30.0
    hostnames: tuple[str, ...] = (
        f"{names.WEBHOOK_SERVICE}.{names.SYSTEM_NAMESPACE}.svc",
        f"{names.WEBHOOK_SERVICE}.{names.SYSTEM_NAMESPACE}.svc.cluster.local",
        f"{names.WEBHOOK_SERVICE}.{names.SYSTEM_NAMESPACE}",
    )


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry holding every meshkit handler, configured by ``config``."""
    registry = kopf.OperatorRegistry()
    _register_startup(registry, config)
    _register_injection(registry, config)
    for group, version, plural_name in ISTIO_RESOURCES:
        _register_istio_kind(registry, f"{group}/{version}", plural_name)
    _register_status_resync(registry, config.status_resync_s)
    return registry


def add_cluster_login(registry: kopf.OperatorRegistry) -> None:
    """Log in as the pod's service account, or from a kubeconfig outside a cluster."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# start-up: kopf settings and the webhook server
# ---------------------------------------------------------------------------------------------


def _register_startup(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
        # no handler here needs one (no deletion handlers, timers or daemons): if kopf ever adds
        # one, it carries meshkit's name
        settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
        inner = kopf_server(addr=config.webhook_addr, port=config.webhook_port, host=config.webhook_host,
                            cert_dir=config.cert_dir, hostnames=list(config.hostnames))
        publisher = None
        if config.api is not None and config.managed is None:
            publisher = ca_bundle_publisher(config.api, config.ca_targets)
        settings.admission.server = MeshkitWebhookServer(inner, publisher)
        settings.admission.managed = config.managed


# ---------------------------------------------------------------------------------------------
# sidecar injection
# ---------------------------------------------------------------------------------------------


def _register_injection(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    @kopf.index("namespaces", id=NAMESPACE_INDEX, registry=registry)
    def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
        return {name: dict(labels)}

    @kopf.on.mutate("pods", id=INJECT_HANDLER, operations=["CREATE"], registry=registry)
    def inject_sidecar(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **kwargs: Any) -> None:
        index: kopf.Index[str, dict[str, str]] = kwargs[NAMESPACE_INDEX]
        namespace = body.metadata.namespace or ""
        trust = config.managed is None if config.trust_selectors is None else config.trust_selectors
        labels: dict[str, str] | None = None
        if not trust:
            if namespace not in index:
                # never a silent skip: a pod admitted now would run without its sidecar for good
                raise kopf.AdmissionError(
                    f"meshkit injector: namespace {namespace!r} is not known to the operator yet "
                    f"(it is starting); the pod is refused so that its controller retries", code=503)
            labels = next(iter(index.get(namespace, [])), {})
        try:
            ops = inject(_plain(body), labels, config.inject)
        except InjectionRefused as exc:  # a bad proxy.istio.io/config: said, not injected without it
            raise kopf.AdmissionError(f"meshkit injector: {exc}", code=400) from None
        if ops:
            logger.info(f"injecting {names.SIDECAR_CONTAINER} into a pod in namespace {namespace}")
            patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))


# ---------------------------------------------------------------------------------------------
# Istio kinds: validation webhook, index, status
# ---------------------------------------------------------------------------------------------


def _register_istio_kind(registry: kopf.OperatorRegistry, group: str, plural_name: str) -> None:
    @kopf.on.validate(group, plural_name, id=validate_handler_id(plural_name),
                      operations=["CREATE", "UPDATE"], registry=registry)
    def validate(body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
        # kopf passes ``old`` and ``operation`` too, but its WebhookFn protocol does not declare them
        old: kopf.Body | None = kwargs.get("old")
        operation: str | None = kwargs.get("operation")
        if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
            return  # metadata-only change (labels, kopf's annotations): nothing meshkit checks changed
        messages = admission_messages(_plain(body))
        warnings.extend(str(m) for m in messages if m.severity != Severity.ERROR)
        if errors(messages):
            raise kopf.AdmissionError(rejection_text(messages), code=400)

    @kopf.index(group, plural_name, id=_index_id(plural_name), registry=registry)
    def index_resource(body: kopf.Body, namespace: str | None, name: str,
                       **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace or "", name): _plain(body)}

    def report_status(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
                      **kwargs: Any) -> None:
        messages = status_messages(_plain(body), _indexed_objects(kwargs))
        patch.status.update(build_status(meta.get("generation"), messages, previous=dict(status)))

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        handler_id = f"status-{plural_name}-{decorator.__name__}"
        decorator(group, plural_name, id=handler_id, registry=registry)(report_status)


def _register_status_resync(registry: kopf.OperatorRegistry, period_s: float) -> None:
    """One resync task for the whole operator (`meshkit.k8s.status_resync`): no per-object timer,
    so no finalizer on any Istio object."""
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def start_status_resync(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        logger: logging.Logger = kwargs["logger"]
        # kopf's indices are live mappings, empty (and so falsy) until the first listing
        indices = {kind: kwargs[_index_id(kind.plural)] for kind in istio_kinds()}

        def indexed() -> dict[ApiKind, list[dict[str, Any]]]:
            return {kind: [obj for store in index.values() for obj in store]
                    for kind, index in indices.items()}

        resync = StatusResync(indexed, period_s, kopf_patcher(settings, logger), logger)
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(resync.run(), name="meshkit status resync"))
        # the root certificate for each injected namespace, from the same index the injector uses
        publisher = RootCertPublisher(kopf_requester(settings, logger), logger)
        namespaces: kopf.Index[str, dict[str, str]] = kwargs[NAMESPACE_INDEX]

        def labels() -> dict[str, dict[str, str]]:
            return {name: next(iter(store), {}) for name, store in namespaces.items()}

        tasks.append(loop.create_task(every(period_s, lambda: publisher.once(labels()), logger,
                                            "publishing the root certificate"), name="meshkit root cert"))

    @kopf.on.cleanup(registry=registry)
    async def stop_status_resync(**_: Any) -> None:
        while tasks:
            task = tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _indexed_objects(kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for _, _, plural_name in ISTIO_RESOURCES:
        index = kwargs.get(_index_id(plural_name))
        if index is None:
            continue
        for store in index.values():
            yield from store


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A kopf body (a read-only mapping over the raw object) as an independent plain dict."""
    return copy.deepcopy(dict(body))
