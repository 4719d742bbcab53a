"""One operator-wide status resync: re-analyse every indexed Istio object, patch the statuses that changed.

Why not a ``kopf.timer`` per object: kopf puts a finalizer on every object a timer or daemon
serves (to stop it gracefully on deletion), so once the operator is gone — uninstalled, or
just not running — every Istio object hangs in deletion. This loop is one task of the
operator, started by its start-up handler and cancelled by its clean-up handler; it touches
no ``metadata``: nothing of it outlives the operator.

Each period it computes, for every object kopf has indexed, the status the analysis against
all the others gives (`meshkit.k8s.admission.status_messages`, `meshkit.k8s.status.build_status`)
and merge-patches ``/status`` only where the findings changed. It leaves objects alone whose
status kopf's own create/update/resume handlers have not written yet (those run once every
index has listed, so the resync never judges an object against a half-listed cluster).

It patches through kopf's API client (``kopf._cogs.clients.api``, the operator's own credentials
and retries, from the context kopf runs its handlers in); that is kopf's internal module, so
this is the one place that depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

from meshkit.config.api_kinds import ApiKind
from meshkit.k8s.admission import status_messages
from meshkit.k8s.status import build_status

Patcher = Callable[[str, dict[str, Any]], Any]  # (path, merge patch) -> awaitable


def status_path(kind: ApiKind, namespace: str, name: str) -> str:
    return (f"/apis/{kind.group}/{kind.version}/namespaces/{quote(namespace, safe='')}/"
            f"{kind.plural}/{quote(name, safe='')}/status")


def stale_statuses(
        objects: Mapping[ApiKind, Iterable[Mapping[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(status path, fresh status) of every object whose written status no longer matches its findings."""
    everything = [copy.deepcopy(dict(obj)) for group in objects.values() for obj in group]
    for kind, group in objects.items():
        for raw in group:
            obj = copy.deepcopy(dict(raw))
            current = obj.get("status") or {}
            if not current.get("conditions"):
                continue  # kopf's own handlers write the first status
            metadata = obj.get("metadata") or {}
            messages = status_messages(obj, everything)
            fresh = build_status(metadata.get("generation"), messages, previous=current)
            if {key: current.get(key) for key in fresh} != fresh:
                namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name"))
                yield status_path(kind, namespace, name), fresh


class StatusResync:
    """The loop; ``indexed()`` gives the objects kopf currently holds for each kind."""

    def __init__(self, indexed: Callable[[], Mapping[ApiKind, Sequence[Mapping[str, Any]]]], period_s: float,
                 patch: Patcher, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.indexed = indexed
        self.period_s = period_s
        self.patch = patch
        self.logger = logger
        self.patched = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the next period tries again; the operator keeps serving
                self.logger.warning(f"status resync failed: {error}")

    async def once(self) -> int:
        count = 0
        for path, fresh in list(stale_statuses(self.indexed())):
            await self.patch(path, {"status": fresh})
            count += 1
        self.patched += count
        return count


def kopf_requester(settings: Any, logger: Any) -> Callable[..., Any]:
    """``request(method, path, body=None)`` through kopf's API client: the JSON answer, None on 404
    (must be called from a task kopf's context started)."""

    async def request(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            if method == "GET":
                return await kopf_api.get(url=path, settings=settings, logger=logger)
            if method == "POST":
                return await kopf_api.post(url=path, payload=body, settings=settings, logger=logger)
            return await kopf_api.patch(url=path, payload=body, settings=settings, logger=logger,
                                        headers={"Content-Type": "application/merge-patch+json"})
        except kopf_errors.APINotFoundError:
            return None

    return request


async def every(period_s: float, step: Callable[[], Any], logger: Any, what: str) -> None:
    """Run ``await step()`` every ``period_s`` seconds until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning(f"{what} failed: {error}")


def kopf_patcher(settings: Any, logger: Any) -> Patcher:
    """A merge-patch through kopf's API client (must be called from a task kopf's context started)."""

    async def patch(path: str, body: dict[str, Any]) -> None:
        # deleted meanwhile: its index entry goes with the next watch event
        with contextlib.suppress(kopf_errors.APINotFoundError):
            await kopf_api.patch(url=path, payload=body, settings=settings, logger=logger,
                                 headers={"Content-Type": "application/merge-patch+json"})

    return patch
