"""A large apply is prepared in a worker process (not a thread sharing the event loop's GIL): the CA
keeps signing meanwhile, the result is committed by the control plane's store, errors come back
as the same 4xx, a dead worker is replaced, and small bodies never start one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.config.registry import RegistryView
from meshkit.control.api import COMPONENTS
from meshkit.control.preparation import PREPARE_IN_PROCESS_ABOVE, Preparation
from meshkit.control.server import RunningControlPlane, run_control_plane
from meshkit.control.store import ChangeResult, PreparedChange
from tests.control.resources import DESTINATION_RULE
from tests.control.test_bounds import big_virtual_service, call, csrs_signed_while

API = "/api/v1"
JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}


def body(*items: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    running = await run_control_plane(port=0, state_dir=tmp_path)
    try:
        yield running
    finally:
        await running.close()


def preparation_of(plane: RunningControlPlane) -> Preparation:
    return plane.runner.app[COMPONENTS].preparation


async def until_ready(preparation: Preparation) -> None:
    """Poll (bounded) until the worker process started by the first large body has answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not preparation.ready:
        assert loop.time() < deadline, "the worker process never became ready"
        await asyncio.sleep(0.05)


async def test_a_large_apply_is_prepared_in_a_worker_process_while_the_ca_signs(
        plane: RunningControlPlane, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    base = plane.url + API
    preparation = preparation_of(plane)
    status, _ = await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    assert status == 200 and not preparation.ready  # a small body starts no worker
    first = body(big_virtual_service(6000, "v1"))
    assert PREPARE_IN_PROCESS_ABOVE < len(first) < 1024 * 1024
    status, result = await call(session, "POST", f"{base}/apply", data=first, headers=JSON)
    assert status == 200 and result["changed"] is True
    assert preparation.in_worker == 0  # the first large body: on a thread while the worker starts
    await until_ready(preparation)

    applying = asyncio.ensure_future(call(session, "POST", f"{base}/apply",
                                          data=body(big_virtual_service(6000, "v2")), headers=JSON))
    signed_during_apply = await csrs_signed_while(session, base, tmp_path / "ca", applying, 500)
    status, result = await applying
    assert status == 200 and result["changed"] is True
    assert [r["action"] for r in result["results"]] == ["configured"]
    assert preparation.in_worker == 1
    assert preparation.worker_pid is not None and preparation.worker_pid != os.getpid()
    assert signed_during_apply >= 3

    # committed by this process's store: served, in history, pushed from the new revision
    status, config = await call(session, "GET", f"{base}/config/VirtualService/default/big")
    routes = config["items"][0]["resource"]["spec"]["http"]
    assert status == 200 and len(routes) == 6000
    assert {r["route"][0]["destination"]["subset"] for r in routes} == {"v2"}
    status, health = await call(session, "GET", f"{base}/healthz")
    assert health["revision"] == 3
    status, entry = await call(session, "GET", f"{base}/history/3")
    assert "configured VirtualService/default/big" in entry["summary"]
    [stored] = plane.control_plane.store.get("DestinationRule")
    assert stored.revision == 1  # the unchanged DestinationRule kept its revision across the hop


async def test_worker_errors_are_the_same_4xx_and_a_dead_worker_is_replaced(
        plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    preparation = preparation_of(plane)
    status, _ = await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    status, _ = await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000)),
                           headers=JSON)
    assert status == 200
    await until_ready(preparation)
    twice = body(big_virtual_service(2500, "v2"), big_virtual_service(2500, "v2"))
    assert len(twice) >= PREPARE_IN_PROCESS_ABOVE
    status, error = await call(session, "POST", f"{base}/apply", data=twice, headers=JSON)
    assert status == 400 and error["messages"][0]["code"] == "MK0901"  # the worker's ConfigError
    status, error = await call(session, "POST", f"{base}/apply?expect_revision=7",
                               data=body(big_virtual_service(3000, "v2")), headers=JSON)
    assert status == 409 and error["messages"][0]["code"] == "MK0904"
    first_pid = preparation.worker_pid
    assert first_pid is not None and preparation.in_worker == 1

    os.kill(first_pid, signal.SIGKILL)  # out of memory, or killed by hand
    status, result = await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v2")),
                                headers=JSON)
    assert status == 200 and result["changed"] is True and result["revision"] == 3
    assert preparation.worker_pid not in (None, first_pid, os.getpid())


def test_the_worker_encoded_warnings_answer_as_the_thread_would(tmp_path: Path) -> None:
    """A body the worker process prepares comes back with its warnings as JSON text; the answer made
    from it is the very text the answer of the same change prepared on a thread is."""
    from meshkit.control.database import open_database  # noqa: PLC0415
    from meshkit.control.preparation import (  # noqa: PLC0415
        ApplyJob,
        parse_resources,
        prepare_apply_here,
        run_apply_job,
        with_parsed,
    )
    from meshkit.control.store import ANSWER_ENCODER, ConfigStore  # noqa: PLC0415

    empty = RegistryView()  # the host "reviews" is in no registry: a warning per route
    foreign = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "x"}}
    stores = [ConfigStore(open_database(tmp_path / name)) for name in ("thread", "worker")]
    for store in stores:
        store.commit(prepare_apply_here(store, DESTINATION_RULE.encode(), False, None, None)[1])
    bodies = [body(big_virtual_service(300, "v1"), foreign),  # created, with a loader warning
              body(big_virtual_service(300, "v2"), foreign),  # configured
              body(big_virtual_service(300, "v2"))]  # unchanged: no new revision
    for raw in (text.encode() for text in bodies):
        notes, change = prepare_apply_here(stores[0], raw, True, empty, None)
        here = stores[0].commit(change)
        here.warnings[:0] = notes
        expected = ANSWER_ENCODER.encode(here.to_dict())
        _, data = run_apply_job(ApplyJob(raw, True, *stores[1].state, empty))
        notes, change = pickle.loads(data)
        if isinstance(change, PreparedChange):  # the body's resources: not pickled, parsed here
            assert not change.entries
            assert [key for key, _ in change.fresh] == [("VirtualService", "default", "big")]
            with pytest.raises(ValueError, match="fresh"):
                stores[1].commit(change)
            change = with_parsed(change, parse_resources(raw, True, []))
        far = stores[1].commit(change)
        assert [(s.resource, s.revision) for s in stores[1].get()] == \
            [(s.resource, s.revision) for s in stores[0].get()]
        far.warnings[:0] = notes
        assert far.encoded_warnings is not None and not far.warnings
        assert far.answer() == expected
        assert far.to_dict() == json.loads(expected)
        assert len(json.loads(expected)["warnings"]) > 300  # one per route, and the loader's
        # warnings both listed and encoded (listed first), either side empty
        for listed in ([], far.to_dict()["warnings"][:2]):
            for encoded in ([], far.to_dict()["warnings"][2:5]):
                mixed = dataclasses.replace(far, warnings=[_message(w) for w in listed],
                                            encoded_warnings=ANSWER_ENCODER.encode(encoded))
                whole = {**far.to_dict(), "warnings": listed + encoded}
                assert mixed.answer() == ANSWER_ENCODER.encode(whole)


def _message(found: dict[str, str]) -> Any:
    from meshkit.config.messages import Message, Severity  # noqa: PLC0415

    return Message(found["code"], Severity(found["severity"]), found["resource"], found["field"],
                   found["message"])


# -- the worker kept warm: it learns each committed config while idle --------------------------------


async def worker_holds(preparation: Preparation, token: str) -> tuple[int | None, tuple[int, ...]]:
    """Poll (bounded) until the worker process holds exactly the config named ``token``; (its pid,
    the revisions it decoded so far)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        pid, tokens, decoded = await preparation.worker_knows()
        if tokens == (token,):
            return pid, decoded
        assert loop.time() < deadline, f"the worker never learnt {token}: it holds {tokens}"
        await asyncio.sleep(0.05)


async def test_the_worker_learns_a_config_committed_without_it_and_prepares_against_it_undecoded(
        plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    preparation, store = preparation_of(plane), plane.control_plane.store
    await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    status, _ = await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v1")),
                           headers=JSON)
    assert status == 200
    await until_ready(preparation)
    _, decoded = await worker_holds(preparation, store.state[1])
    assert decoded == (2,)  # the config the first large body made, as the worker started
    # a small change, prepared on a thread: the worker is sent the config it makes, and the large
    # body right behind it is prepared against that (its job queued behind the `learn`)
    status, result = await call(session, "POST", f"{base}/apply", headers=YAML,
                                data=DESTINATION_RULE.replace("{name: reviews}", "{name: ratings}"))
    assert status == 200 and result["revision"] == 3 and preparation.in_worker == 0
    assert preparation.taught == 1
    status, result = await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v2")),
                                headers=JSON)
    assert status == 200 and result["revision"] == 4 and preparation.in_worker == 1
    assert [r["action"] for r in result["results"]] == ["configured"]
    _, decoded = await worker_holds(preparation, store.state[1])  # the config it made, as committed
    assert decoded == (2, 3)  # revision 3 learnt once, nothing decoded while the change waited
    assert preparation.taught == 1  # nothing sent again: the worker made revision 4


async def test_a_change_made_while_the_worker_learns_is_prepared_against_its_own_base(
        plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    preparation, store = preparation_of(plane), plane.control_plane.store
    await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v1")), headers=JSON)
    await until_ready(preparation)
    await worker_holds(preparation, store.state[1])
    from meshkit.control.preparation import prepare_apply_here  # noqa: PLC0415

    v2, v1 = (body(big_virtual_service(3000, subset)).encode() for subset in ("v2", "v1"))
    store.commit(prepare_apply_here(store, v2, True, None, None)[1])  # revision 3: v2
    await asyncio.sleep(0)  # the loop runs the teaching the commit scheduled: the worker learns 3
    assert preparation.taught >= 1
    fourth = prepare_apply_here(store, v1, True, None, None)[1]  # v1 again, on top of revision 3
    assert isinstance(fourth, PreparedChange)
    store.commit(fourth)
    assert store.revision == 4
    # queued while it learns revision 3 (nothing yielded to the loop since): against revision 4 this
    # body changes nothing; prepared against the config the worker holds, 3, it would be "configured"
    _, change = await preparation.apply(store, v1, True, None, None)
    assert preparation.in_worker == 1
    assert isinstance(change, ChangeResult) and not change.changed and change.revision == 4
    assert change.actions == [("VirtualService/default/big", "unchanged")]
    assert 4 in (await preparation.worker_knows())[2]  # decoded, while the change waited
    _, change = await preparation.apply(store, v2, True, None, None)
    assert isinstance(change, PreparedChange) and change.base == 4
    assert change.actions == [("VirtualService/default/big", "configured")]


async def test_a_worker_that_died_while_idle_is_replaced_by_one_that_learns_the_config(
        plane: RunningControlPlane, session: aiohttp.ClientSession) -> None:
    base = plane.url + API
    preparation, store = preparation_of(plane), plane.control_plane.store
    await call(session, "POST", f"{base}/apply", data=DESTINATION_RULE, headers=YAML)
    await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v1")), headers=JSON)
    await until_ready(preparation)
    first_pid, _ = await worker_holds(preparation, store.state[1])
    assert first_pid is not None and first_pid != os.getpid()
    os.kill(first_pid, signal.SIGKILL)
    status, result = await call(session, "POST", f"{base}/apply", headers=YAML,
                                data=DESTINATION_RULE.replace("{name: reviews}", "{name: ratings}"))
    assert status == 200 and result["revision"] == 3
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:  # the dead worker is found when the commit is taught to it; a new one learns revision 3
        pid, tokens, decoded = await preparation.worker_knows()
        if pid not in (None, first_pid) and tokens == (store.state[1],):
            break
        assert loop.time() < deadline, f"no new worker learnt revision 3: {pid} {tokens}"
        await asyncio.sleep(0.05)
    assert decoded == (3,)
    await until_ready(preparation)
    status, result = await call(session, "POST", f"{base}/apply", data=body(big_virtual_service(3000, "v2")),
                                headers=JSON)
    assert status == 200 and result["revision"] == 4 and preparation.in_worker == 1
    assert preparation.worker_pid == pid
    assert (await preparation.worker_knows())[2] == (3,)  # prepared against it, nothing decoded
