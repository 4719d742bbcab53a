"""Snapshots the worker process compiles ahead of the push (`Preparation.apply` with ``snapshots``,
`PushServer.expect`): the same bytes as the push server's own compile, and never used when the
push server's inputs moved on (a registry change, another revision, a new proxy)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.config.loader import load_resources
from meshkit.config.registry import Service
from meshkit.control import preparation
from meshkit.control.database import open_database
from meshkit.control.preparation import (
    ApplyJob,
    Precompiled,
    SnapshotJob,
    compile_ahead,
    named_ahead,
    parse_resources,
    run_apply_job,
    with_parsed,
)
from meshkit.control.push import ProxyState, PushServer
from meshkit.control.registry import ServiceRegistry, parse_endpoint
from meshkit.control.store import ChangeResult, ConfigStore, PreparedChange
from tests.control.resources import DESTINATION_RULE, endpoint
from tests.control.test_bounds import big_virtual_service

MESH = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks.json"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext, namespace: default}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"""

PROXIES = [("reviews-v1-0.default", "sidecar"), ("reviews-v1-1.default", "sidecar"),
           ("reviews-v2-0.default", "sidecar"), ("productpage-v1-0.default", "sidecar"),
           ("ingressgateway-0.istio-system", "gateway")]


class Keys:
    """A stand-in for `JwksResolver`: what compile reads of it."""

    keys = {"https://issuer.example/jwks.json": '{"keys": []}'}
    errors: dict[str, str] = {}


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[ConfigStore, ServiceRegistry, PushServer]]:
    connection = open_database(tmp_path)
    store, registry = ConfigStore(connection), ServiceRegistry(connection)
    for name in ("reviews", "productpage"):
        registry.register_service(Service(name, "default", 9080))
    for instance, version, port in (("reviews-v1-0", "v1", 41000), ("reviews-v1-1", "v1", 41001),
                                    ("reviews-v2-0", "v2", 41002)):
        registry.register_endpoint(parse_endpoint(endpoint(instance, version, port)))
    registry.set_external({"httpbin.org:80": "127.0.0.1:48080"}, real_dns=False)
    store.apply(load_resources(DESTINATION_RULE + "---\n" + MESH), registry.view())
    push = PushServer(store, registry, trace_sampling=25.0)
    push.jwks = Keys()
    for proxy_id, kind in PROXIES:
        push._proxies[proxy_id] = ProxyState(proxy_id, kind, registry.node_for(proxy_id, kind))
    preparation._KNOWN.clear()  # as a freshly started worker: it decodes the store's document
    try:
        yield store, registry, push
    finally:
        preparation._KNOWN.clear()
        connection.close()


def in_worker(store: ConfigStore, registry: ServiceRegistry, job: SnapshotJob,
              *items: dict[str, Any]) -> tuple[PreparedChange, Precompiled]:
    """An apply job run as the worker process runs it (every input and output through pickle), and
    what `Preparation.apply` does meanwhile and after: parse the body, compile the snapshots of the
    config it makes over the store's, name them by the worker's change."""
    revision, token, document = store.state
    raw = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}).encode()
    apply_job = pickle.loads(pickle.dumps(ApplyJob(raw, True, revision, token, document, registry.view())))
    incoming = parse_resources(raw, True, [])
    ahead = compile_ahead(store.resources(), incoming, revision + 1, job)
    assert ahead.token == ""  # no store's token until the worker's change names the config
    _, data = run_apply_job(apply_job)
    _, change = pickle.loads(data)
    assert isinstance(change, PreparedChange)
    precompiled = named_ahead(ahead, change)
    assert isinstance(precompiled, Precompiled) and precompiled.token == change.token
    return with_parsed(change, incoming), precompiled


def frames(push: PushServer) -> dict[str, tuple[str | None, int | None, bytes | None]]:
    return {p.id: (p.latest_version, p.latest_revision, p.latest_frame) for p in push._proxies.values()}


def resolved(value: Precompiled | None) -> asyncio.Future[Precompiled | None]:
    future: asyncio.Future[Precompiled | None] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


async def test_the_worker_compiles_the_same_bytes_the_push_server_would(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None and sum(len(nodes) for nodes in job.groups) == len(PROXIES)
    change, precompiled = in_worker(store, registry, job, big_virtual_service(300, "v2"))
    push.expect(job, resolved(precompiled))  # as Preparation.apply does, before the commit
    store.commit(change)
    assert (precompiled.revision, precompiled.token) == store.state[:2]
    await push._recompute_all()
    assert push.stats.precompiled == len(job.groups) and push.stats.compiles == 0
    taken = frames(push)

    push.expect(job, resolved(None))  # nothing from the worker: the push server compiles it all
    for proxy in push._proxies.values():
        proxy.latest_version = proxy.latest_revision = proxy.latest_frame = None
    await push._recompute_all()
    assert push.stats.compiles == len(job.groups)
    assert frames(push) == taken  # byte for byte, version and revision included
    for proxy_id, (version, revision, frame) in taken.items():
        assert version is not None and frame is not None and revision == store.revision
        assert precompiled.rendered[proxy_id][1:] == (version, frame)
    reviews = json.loads(taken["reviews-v1-0.default"][2].split(b"data: ", 1)[1])  # type: ignore[union-attr]
    assert reviews["revision"] == store.revision and reviews["node"]["id"] == "reviews-v1-0.default"


async def test_snapshots_compiled_from_other_inputs_are_not_used(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None
    change, precompiled = in_worker(store, registry, job, big_virtual_service(50, "v2"))
    push.expect(job, resolved(precompiled))
    store.commit(change)
    # a registry change while the apply ran: a new endpoint of reviews-v2
    registry.register_endpoint(parse_endpoint(endpoint("reviews-v2-1", "v2", 41003)))
    await push._recompute_all()
    assert push.stats.precompiled == 0 and push.stats.compiles == len(job.groups)
    reviews = json.loads(push._proxies["productpage-v1-0.default"].latest_frame.split(b"data: ", 1)[1])  # type: ignore[union-attr]
    assert "reviews-v2-1" in json.dumps(reviews)  # the new endpoint is in what is pushed

    # another revision committed since: the worker's snapshots are of an older config
    job = push.snapshot_job()
    assert job is not None
    change, precompiled = in_worker(store, registry, job, big_virtual_service(50, "v1"))
    push.expect(job, resolved(precompiled))
    store.apply(load_resources(MESH.replace('"GET"', '"POST"')))  # committed first
    compiles = push.stats.compiles
    await push._recompute_all()
    assert push.stats.precompiled == 0 and push.stats.compiles == compiles + len(job.groups)

    # a proxy that connected after the job was made is compiled here with the proxies of its shape
    # (unregistered, like productpage-v1-0); the other shapes are taken
    job = push.snapshot_job()
    assert job is not None
    change, precompiled = in_worker(store, registry, job, big_virtual_service(60, "v1"))
    push.expect(job, resolved(precompiled))
    store.commit(change)
    push._proxies["ratings-v1-0.default"] = ProxyState(
        "ratings-v1-0.default", "sidecar", registry.node_for("ratings-v1-0.default", "sidecar"))
    compiles = push.stats.compiles
    await push._recompute_all()
    assert push.stats.precompiled == len(job.groups) - 1 and push.stats.compiles == compiles + 1
    assert push._proxies["ratings-v1-0.default"].latest_revision == store.revision


async def test_a_large_body_prepared_on_a_thread_is_compiled_there_the_same(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    """Before the worker process is up, a large body is prepared on a thread of the control plane,
    which then compiles its snapshots too (before the answer, so the push follows the commit)."""
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None
    raw = json.dumps({"apiVersion": "v1", "kind": "List", "items": [big_virtual_service(200, "v2")]}).encode()
    (_, change), precompiled = preparation.prepare_and_compile_here(store, raw, True, registry.view(), None,
                                                                    job=job)
    assert isinstance(change, PreparedChange) and precompiled is not None
    assert len(precompiled.retired) == len(PROXIES)  # its objects: for the push server to release
    push.expect(job, resolved(precompiled))
    store.commit(change)
    await push._recompute_all()
    assert push.stats.precompiled == len(job.groups) and push.stats.compiles == 0
    assert precompiled.retired == []  # handed to the release
    taken = frames(push)
    push.expect(job, resolved(None))
    for proxy in push._proxies.values():
        proxy.latest_version = proxy.latest_revision = proxy.latest_frame = None
    await push._recompute_all()
    assert push.stats.compiles == len(job.groups) and frames(push) == taken


async def test_on_a_thread_only_a_few_shapes_are_compiled_before_the_answer(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None and len(job.groups) > preparation.PRECOMPILE_ON_THREAD_SHAPES
    told: list[SnapshotJob] = []
    raw = json.dumps({"apiVersion": "v1", "kind": "List", "items": [big_virtual_service(20, "v2")]}).encode()
    prepare = preparation.Preparation(threshold=1)  # every body "large", prepared on a thread
    try:
        _, change = await prepare.apply(store, raw, True, registry.view(), None, snapshots=job,
                                        precompiling=lambda snapshots, _: told.append(snapshots))
        assert isinstance(change, PreparedChange) and told == []  # each shape would delay the answer
        few = SnapshotJob(job.inputs, job.groups[:preparation.PRECOMPILE_ON_THREAD_SHAPES])
        raw = raw.replace(b'"v2"', b'"v1"')
        _, change = await prepare.apply(store, raw, True, registry.view(), None, snapshots=few,
                                        precompiling=lambda snapshots, _: told.append(snapshots))
        assert isinstance(change, PreparedChange) and told == [few]
    finally:
        prepare.close()  # the worker process the first large body started


async def test_a_pass_does_not_wait_for_a_stuck_worker(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None
    change, _ = in_worker(store, registry, job, big_virtual_service(20, "v2"))
    never: asyncio.Future[Precompiled | None] = asyncio.get_running_loop().create_future()
    push.expect(job, never)  # its result never comes
    store.commit(change)
    push.precompiled_wait = 0.05
    await asyncio.wait_for(push._recompute_all(), 10)
    assert push.stats.precompiled == 0 and push.stats.compiles == len(job.groups)
    assert all(p.latest_revision == store.revision for p in push._proxies.values())
    assert push._precompiled is None  # not waited for again


async def test_a_body_the_worker_prepares_has_its_snapshots_compiled_here_meanwhile(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    """`Preparation.apply` through the real worker process: the snapshots compiled on a thread here
    while the worker prepared the change are the ones pushed, byte for byte the push server's."""
    store, registry, push = parts
    prepare = preparation.Preparation(threshold=1)  # every body "large"
    try:
        items = [big_virtual_service(100, "v1")]
        raw = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}).encode()
        _, change = await prepare.apply(store, raw, True, registry.view(), None)  # on a thread; starts it
        store.commit(change)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while not prepare.ready:
            assert loop.time() < deadline, "the worker process never became ready"
            await asyncio.sleep(0.05)
        await push._recompute_all()
        job = push.snapshot_job()
        assert job is not None
        _, change = await prepare.apply(store, raw.replace(b'"v1"', b'"v2"'), True, registry.view(), None,
                                        snapshots=job, precompiling=push.expect)
        assert prepare.in_worker == 1 and isinstance(change, PreparedChange)
        store.commit(change)
        compiles = push.stats.compiles
        for proxy in push._proxies.values():  # every proxy takes what the pass publishes
            proxy.latest_version = proxy.latest_revision = proxy.latest_frame = None
        await push._recompute_all()
        assert push.stats.precompiled == len(job.groups) and push.stats.compiles == compiles
        taken = frames(push)
        assert taken["reviews-v1-0.default"][1] == store.revision
        push.expect(job, resolved(None))
        for proxy in push._proxies.values():
            proxy.latest_version = proxy.latest_revision = proxy.latest_frame = None
        await push._recompute_all()
        assert frames(push) == taken
    finally:
        prepare.close()


def test_snapshots_compiled_ahead_are_named_only_for_the_config_they_were_compiled_for(
        parts: tuple[ConfigStore, ServiceRegistry, PushServer]) -> None:
    store, registry, push = parts
    job = push.snapshot_job()
    assert job is not None
    change, precompiled = in_worker(store, registry, job, big_virtual_service(20, "v2"))
    ahead = dataclasses.replace(precompiled, token="")
    key = ("VirtualService", "default", "big")
    as_sent = dataclasses.replace(change, entries={}, fresh=((key, change.entries[key].created),))
    assert named_ahead(ahead, as_sent) == precompiled and precompiled.token == change.token
    # an entry sent as a model, not the body's own: not the config compiled
    sent = dataclasses.replace(as_sent, entries={key: change.entries[key]}, fresh=())
    assert named_ahead(ahead, sent).token == ""  # type: ignore[union-attr]
    other_base = dataclasses.replace(as_sent, base=change.base + 1)
    assert named_ahead(ahead, other_base).token == ""  # type: ignore[union-attr]
    unchanged = ChangeResult(store.revision, False, [("VirtualService/default/big", "unchanged")])
    assert named_ahead(ahead, unchanged).token == "" and named_ahead(ahead, None).token == ""  # type: ignore[union-attr]
    assert named_ahead(None, as_sent) is None
