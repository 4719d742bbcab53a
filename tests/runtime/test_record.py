"""`MeshRecord` port slots: stable for running instances, lowest free for new ones, old records readable."""

from __future__ import annotations

import dataclasses
import json

import pytest

from meshkit.runtime import catalog, launch
from meshkit.runtime.record import MeshRecord, legacy_manifests
from meshkit.runtime.rollout import overrides, replica_counts

BOOKINFO = ["productpage-v1-0", "details-v1-0", "reviews-v1-0", "reviews-v2-0", "reviews-v3-0",
            "ratings-v1-0"]


def test_a_record_without_slots_gets_the_old_catalog_order() -> None:
    old = {"base_port": 21000, "apps": ["bookinfo"], "replicas": {"reviews-v1": 2}, "processes": {}}
    rec = MeshRecord.from_json(old)
    names = [i.name for i in rec.instances()]
    assert names == [*BOOKINFO[:3], "reviews-v1-1", *BOOKINFO[3:]]
    assert [rec.slots[n] for n in names] == list(range(7))
    assert rec.instances()[2].ports.app == 21000 + 100 * 3 + 80  # reviews-v1-0 as `up` always placed it


def test_new_instances_take_the_lowest_free_slot_and_running_ones_never_move() -> None:
    rec = MeshRecord(21000, ["bookinfo"], {}, manifests=legacy_manifests(["bookinfo"], {"reviews-v1": 2}))
    before = {i.name: i.ports for i in rec.instances()}
    rec.manifests = legacy_manifests(["bookinfo"], {})
    rec.assign_slots()  # reviews-v1-1 (slot 3) is gone
    assert "reviews-v1-1" not in rec.slots
    assert all(before[i.name] == i.ports for i in rec.instances())
    rec.apps = ["bookinfo", "clients"]
    rec.assign_slots()
    assert rec.slots["sleep-v1-0"] == 3 and rec.slots["legacy-v1-0"] == 7
    assert max(rec.slots.values()) == 7  # 8 instances in 8 blocks: the freed slot 3 was reused
    again = MeshRecord.from_json(rec.to_json())
    assert again.slots == rec.slots
    assert [i.ports for i in again.instances()] == [i.ports for i in rec.instances()]


def test_replica_counts_and_overrides() -> None:
    assert replica_counts(["clients"], {"sleep-v1": 0}) == {"sleep-v1": 0, "legacy-v1": 1}
    assert overrides(["bookinfo"], {"reviews-v1": 1, "reviews-v2": 3}) == {"reviews-v2": 3}
    with pytest.raises(ValueError, match="replicas must be between 0 and 10"):
        catalog.resolve(["bookinfo"], {"reviews-v1": 11})
    with pytest.raises(ValueError, match="no such workload"):
        replica_counts(["bookinfo"], {"sleep-v1": 1})


def test_an_instance_name_gives_its_workload_and_other_names_stay() -> None:
    specs = catalog.resolve(["bookinfo"], {"reviews-v1": 2})
    instances = [name for spec in specs for name in spec.instances()]
    assert {catalog.workload_of(name) for name in instances} == {
        spec.workload for spec in catalog.resolve(["bookinfo"], {})}
    assert catalog.workload_of("reviews-v1-1") == "reviews-v1"
    assert [catalog.workload_of(n) for n in ("reviews-v1", "ingressgateway", "sleep")] == [
        "reviews-v1", "ingressgateway", "sleep"]


def test_a_name_refers_to_a_status_row_by_instance_workload_or_service() -> None:
    row = {"name": "reviews-v1-1", "service": "reviews"}
    assert [catalog.refers_to(n, row) for n in ("reviews-v1-1", "reviews-v1", "reviews")] == [True] * 3
    assert not catalog.refers_to("reviews", row, by_service=False)
    assert not any(catalog.refers_to(n, row) for n in ("reviews-v1-0", "reviews-v2", "ratings", "v1"))


def test_instances_outside_default_carry_their_namespace() -> None:
    foo = catalog.WorkloadSpec("httpbin", "v1", "httpbin", 8000, "httpbin", deployment="httpbin",
                               namespace="foo")
    bar = dataclasses.replace(foo, namespace="bar")
    rec = MeshRecord(21000, [], {}, manifests=[foo, bar, dataclasses.replace(foo, namespace="default")])
    instances = {i.name: i for i in rec.instances()}
    assert sorted(instances) == ["httpbin-0", "httpbin-0.bar", "httpbin-0.foo"]
    assert len({i.ports.app for i in instances.values()}) == 3  # three slots: nothing collides
    one = instances["httpbin-0.foo"]
    assert (one.pod, one.namespace, one.proxy_id) == ("httpbin-0", "foo", "httpbin-0.foo")
    assert instances["httpbin-0"].proxy_id == "httpbin-0.default"
    assert one.status()["namespace"] == "foo"
    assert launch.identity(one.spec) == "spiffe://cluster.local/ns/foo/sa/httpbin"
    assert [catalog.workload_of(n) for n in ("httpbin-0.foo", "sleep-1.legacy")] == ["httpbin.foo",
                                                                                    "sleep.legacy"]


def test_a_workload_spec_with_every_field_set_is_equal_after_a_json_round_trip() -> None:
    # a spec read back from mesh.json must equal the one applied again: a field that comes back as a
    # list instead of a tuple makes every later rollout restart the workload's running instances
    plain = catalog.WorkloadSpec("reviews", "v1", "reviews", 9080, "bookinfo-reviews")
    spec = dataclasses.replace(
        plain, sidecar=False, replicas=2, deployment="reviews-v1", pod_labels=(("app", "reviews"),),
        namespace="foo", args=("--flag",), listen_port=9080, volumes_digest="abc", concurrency=2,
        ip_ranges=(("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.96.0.0/16"),))
    # every optional field set here (a field added later fails this until it is)
    unset = [f.name for f in dataclasses.fields(spec)[5:] if getattr(spec, f.name) == getattr(plain, f.name)]
    assert unset == []
    assert catalog.WorkloadSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
