"""Where each resource of a file starts (`meshkit.config.locations`), put on the messages about it."""

from __future__ import annotations

from meshkit.config.analyze import analyze
from meshkit.config.loader import load_resources
from meshkit.config.locations import index_locations, locate, locate_messages

TEXT = """# a comment first
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews, reviews]
  http:
  - route: [{destination: {host: reviews}}]
---
kind: List
items:
- kind: DestinationRule
  metadata: {name: b, namespace: x}
"""


def test_each_resource_is_found_at_its_first_line() -> None:
    index = index_locations(TEXT, "f.yaml")
    assert index["VirtualService/default/a"] == ("f.yaml", 2)
    assert index["DestinationRule/x/b"] == ("f.yaml", 12)  # an item of a List
    assert index["f.yaml document 2"] == ("f.yaml", 10)  # a document by number (the loader's label)
    assert index_locations("kind: [", "broken.yaml") == {}  # not YAML: the loader reports it


def test_messages_get_the_location_of_their_resource() -> None:
    index = index_locations(TEXT, "f.yaml")
    located = locate([{"resource": "VirtualService/bar/a"},  # no namespace written: `apply -n bar`
                      {"resource": "f.yaml: DestinationRule/x/b"},  # the loader's label
                      {"resource": "DestinationRule/y/b"},  # another namespace: not this one
                      {"resource": "VirtualService/default/a", "location": "kept.yaml:3"}], index)
    assert [m.get("location") for m in located] == ["f.yaml:2", "f.yaml:12", None, "kept.yaml:3"]
    [message] = locate_messages(analyze(load_resources(TEXT.split("---", maxsplit=1)[0])), index)
    assert (message.code, message.file, message.line) == ("MK0127", "f.yaml", 2)
    assert str(message).startswith(
        "Error [MK0127] (VirtualService/default/a spec.hosts[1] f.yaml:2) duplicate hosts")
