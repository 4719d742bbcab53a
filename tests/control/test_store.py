"""The versioned config store: atomic applies, revisions with diffs, rollback, delete, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.config.loader import load_resources
from meshkit.config.messages import ConfigError, Severity
from meshkit.control.database import open_database
from meshkit.control.store import ConfigStore, ConflictError, NotFoundError
from tests.control.resources import (
    BOOKINFO_REVIEWS,
    DESTINATION_RULE,
    REFUSED_VIRTUAL_SERVICE,
    virtual_service,
)

VS_KEY = ("VirtualService", "default", "reviews")
DR_KEY = ("DestinationRule", "default", "reviews")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    connection = open_database(tmp_path)
    yield ConfigStore(connection)
    connection.close()


def snapshot_of(store: ConfigStore) -> list[dict[str, object]]:
    return [r.to_dict() for r in store.resources()]


def test_apply_creates_a_revision_with_actions(store: ConfigStore) -> None:
    result = store.apply(load_resources(BOOKINFO_REVIEWS))
    assert (result.revision, result.changed) == (1, True)
    assert sorted(result.actions) == [("DestinationRule/default/reviews", "created"),
                                      ("VirtualService/default/reviews", "created")]
    assert [r.key for r in store.resources()] == [DR_KEY, VS_KEY]
    assert store.history()[0].summary.startswith("apply: created")


def test_one_bad_document_rejects_the_whole_apply(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    before = snapshot_of(store)
    # a valid change to an existing resource and a new resource Istio's validation refuses
    incoming = load_resources(virtual_service("v2") + "---\n" + REFUSED_VIRTUAL_SERVICE)
    with pytest.raises(ConfigError) as caught:
        store.apply(incoming)
    errors = [m for m in caught.value.messages if m.severity == Severity.ERROR]
    assert errors and all(m.resource == "VirtualService/default/ratings-refused" for m in errors)
    assert "sum to 0" in errors[0].text
    assert snapshot_of(store) == before
    assert store.revision == 1
    assert len(store.history()) == 1


def test_a_document_repeated_in_one_input_is_rejected(store: ConfigStore) -> None:
    with pytest.raises(ConfigError) as caught:
        store.apply(load_resources(DESTINATION_RULE + "---\n" + DESTINATION_RULE))
    assert caught.value.messages[0].code == "MK0901"
    assert store.revision == 0


def test_reapplying_the_same_config_makes_no_revision(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    result = store.apply(load_resources(BOOKINFO_REVIEWS))
    assert (result.revision, result.changed) == (1, False)
    assert {action for _, action in result.actions} == {"unchanged"}


def test_revision_diff_is_a_yaml_unified_diff(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    result = store.apply(load_resources(virtual_service("v2")))
    assert result.actions == [("VirtualService/default/reviews", "configured")]
    diff = store.revision_info(2).diff
    assert "--- a/VirtualService/default/reviews\n+++ b/VirtualService/default/reviews\n" in diff
    assert "-        subset: v1\n" in diff and "+        subset: v2\n" in diff
    assert "DestinationRule" not in diff
    first = store.revision_info(1).diff
    assert "--- /dev/null\n+++ b/DestinationRule/default/reviews\n" in first


def test_rollback_restores_an_old_config_as_a_new_revision(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    store.apply(load_resources(virtual_service("v2", timeout="3s")))
    result = store.rollback(1)
    assert (result.revision, result.changed) == (3, True)
    assert result.actions == [("VirtualService/default/reviews", "configured")]
    vs = store.get("VirtualService", "default", "reviews")[0].resource.to_dict()
    assert vs["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v1"
    assert "timeout" not in vs["spec"]["http"][0]
    assert [r.number for r in store.history()] == [1, 2, 3]
    assert store.history()[-1].summary == "rollback to revision 1"
    # rolling back to what is already current changes nothing
    again = store.rollback(3)
    assert (again.revision, again.changed) == (3, False)
    # revision 0 is the empty config
    assert store.rollback(0).actions == [("DestinationRule/default/reviews", "deleted"),
                                         ("VirtualService/default/reviews", "deleted")]
    assert store.resources() == []


def test_rollback_to_an_unknown_revision_is_not_found(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    with pytest.raises(NotFoundError) as caught:
        store.rollback(7)
    assert "revision 7 does not exist (current revision: 1)" in str(caught.value)


def test_delete_is_all_or_nothing(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    missing = ("VirtualService", "default", "nope")
    with pytest.raises(NotFoundError) as caught:
        store.delete([VS_KEY, missing])
    assert [m.resource for m in caught.value.messages] == ["VirtualService/default/nope"]
    assert len(store.resources()) == 2
    result = store.delete([VS_KEY])
    assert result.actions == [("VirtualService/default/reviews", "deleted")]
    assert [r.key for r in store.resources()] == [DR_KEY]
    assert "--- a/VirtualService/default/reviews\n+++ /dev/null" in store.revision_info(2).diff


FOO = """\
apiVersion: v1
kind: Namespace
metadata: {name: foo}
---
apiVersion: v1
kind: Namespace
metadata: {name: bar}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: bar}
spec: {}
"""


def test_deleting_a_namespace_deletes_what_it_holds_and_default_is_kept(store: ConfigStore) -> None:
    store.apply(load_resources(FOO))
    store.apply(load_resources(BOOKINFO_REVIEWS))
    result = store.delete([("Namespace", "default", "foo")])
    assert sorted(result.actions) == [("AuthorizationPolicy/foo/allow-nothing", "deleted"),
                                      ("Namespace/default/foo", "deleted"),
                                      ("PeerAuthentication/foo/default", "deleted")]
    assert sorted(r.key for r in store.resources()) == sorted(
        [("Namespace", "default", "bar"), ("AuthorizationPolicy", "bar", "allow-nothing"), VS_KEY, DR_KEY])
    with pytest.raises(ConfigError) as caught:  # as Kubernetes: "this namespace may not be deleted"
        store.delete([("Namespace", "default", "default")])
    assert [m.code for m in caught.value.messages] == ["MK0907"]
    assert "may not be deleted" in str(caught.value)


def test_get_filters_and_reports_missing_names(store: ConfigStore) -> None:
    store.apply(load_resources(BOOKINFO_REVIEWS))
    assert [s.resource.kind for s in store.get("DestinationRule")] == ["DestinationRule"]
    assert store.get(namespace="other") == []
    with pytest.raises(NotFoundError):
        store.get("DestinationRule", "default", "ratings")


def test_expected_revision_conflict(store: ConfigStore) -> None:
    store.apply(load_resources(DESTINATION_RULE))
    with pytest.raises(ConflictError) as caught:
        store.apply(load_resources(virtual_service()), expected_revision=0)
    assert "expected revision 0 but the store is at revision 1" in str(caught.value)
    assert store.apply(load_resources(virtual_service()), expected_revision=1).revision == 2


def test_listeners_hear_accepted_changes_only(store: ConfigStore) -> None:
    calls: list[int] = []
    unsubscribe = store.subscribe(lambda: calls.append(store.revision))
    store.apply(load_resources(BOOKINFO_REVIEWS))
    with pytest.raises(ConfigError):
        store.apply(load_resources(REFUSED_VIRTUAL_SERVICE))
    store.apply(load_resources(BOOKINFO_REVIEWS))  # unchanged
    store.delete([VS_KEY])
    unsubscribe()
    store.rollback(1)
    assert calls == [1, 2]


def test_everything_survives_reopening(tmp_path: Path) -> None:
    first = open_database(tmp_path)
    store = ConfigStore(first)
    store.apply(load_resources(BOOKINFO_REVIEWS))
    store.apply(load_resources(virtual_service("v2")))
    created = {s.resource.ref: s.created for s in store.get()}
    history = store.history()
    first.close()

    second = open_database(tmp_path)
    reopened = ConfigStore(second)
    assert reopened.revision == 2
    assert {s.resource.ref: s.created for s in reopened.get()} == created
    assert reopened.history() == history
    assert reopened.get("VirtualService")[0].revision == 2
    assert reopened.get("DestinationRule")[0].revision == 1
    reopened.rollback(1)
    assert reopened.get("VirtualService")[0].resource.to_dict()["spec"]["http"][0]["route"][0][
        "destination"]["subset"] == "v1"
    second.close()
