"""``ConfigStore.mirror`` and ownership: how an external source (Kubernetes) keeps the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError
from meshkit.control.database import open_database
from meshkit.control.store import ConfigStore, ConflictError
from tests.k8s import kube_objects as k

# a VirtualService whose subsets no DestinationRule defines: an analyzer Error (MK0101) on its own
LONELY = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings, subset: v2}}]}]
"""


def test_mirror_makes_the_config_exactly_the_source_in_one_revision(tmp_path: Path) -> None:
    store = ConfigStore(open_database(tmp_path))
    everything = load_resources(k.ISTIO_YAML)
    created = store.mirror(everything, source="kubernetes")
    assert (created.revision, created.changed) == (1, True)
    assert [action for _, action in created.actions] == ["created"] * 4
    assert store.history()[0].summary.startswith("kubernetes: created AuthorizationPolicy/bookinfo/")

    unchanged = store.mirror(load_resources(k.ISTIO_YAML), source="kubernetes")
    assert (unchanged.revision, unchanged.changed, unchanged.actions) == (1, False, [])

    without_vs = [r for r in everything if r.kind != "VirtualService"]
    deleted = store.mirror(without_vs, source="kubernetes")
    assert deleted.actions == [("VirtualService/bookinfo/reviews", "deleted")]
    assert store.history()[-1].summary == "kubernetes: deleted VirtualService/bookinfo/reviews"
    assert store.revision == 2


# what Istio's validation refuses (every weight 0): apply refuses it, the mirror takes the cluster's word
REFUSED = LONELY.replace("http: [{route: [{destination: {host: ratings, subset: v2}}]}]",
                         "http: [{route: [{destination: {host: ratings}, weight: 0},\n"
                         "                {destination: {host: reviews}, weight: 0}]}]")


def test_mirror_is_not_gated_by_the_analyzer_but_apply_is(tmp_path: Path) -> None:
    store = ConfigStore(open_database(tmp_path))
    with pytest.raises(ConfigError, match="MK0102"):
        store.apply(load_resources(REFUSED))
    assert store.mirror(load_resources(REFUSED), source="kubernetes").changed
    assert [r.ref for r in store.resources()] == ["VirtualService/bookinfo/ratings"]


def test_mirror_refuses_the_same_resource_twice(tmp_path: Path) -> None:
    store = ConfigStore(open_database(tmp_path))
    with pytest.raises(ConfigError, match="MK0901"):
        store.mirror([*load_resources(LONELY), *load_resources(LONELY)], source="kubernetes")
    assert store.revision == 0


def test_an_owned_store_refuses_apply_delete_and_rollback(tmp_path: Path) -> None:
    store = ConfigStore(open_database(tmp_path))
    store.apply(load_resources(LONELY.replace("subset: v2", "port: {number: 9080}")))
    assert store.owned_by is None
    store.own("kubernetes", "use kubectl")
    assert store.owned_by == "kubernetes"
    key = ("VirtualService", "bookinfo", "ratings")
    for change in (lambda: store.apply(load_resources(LONELY)), lambda: store.delete([key]),
                   lambda: store.rollback(0)):
        with pytest.raises(ConflictError) as refused:
            change()
        [message] = refused.value.messages
        assert message.code == "MK0906"
        assert message.text == "the config of this control plane is mirrored from kubernetes; use kubectl"
    assert store.revision == 1
    assert store.mirror([], source="kubernetes").actions == [("VirtualService/bookinfo/ratings", "deleted")]
