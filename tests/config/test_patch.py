"""``meshkit patch``'s merge: kubectl's strategic merge patch (named lists by name) and RFC 7386."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.config.patch import (
    JsonPatchError,
    json_patch,
    kubectl_invalid,
    merge_patch,
    parse_json_patch,
    parse_patch,
)
from meshkit.config.proxyconfig import ingress_deployment, is_mesh_ingress_deployment
from meshkit.config.workloads import Deployment

# Istio's "Configuring Gateway Network Topology", as kubectl patch's -p
ANNOTATE = ('{"spec":{"template":{"metadata":{"annotations":{"proxy.istio.io/config":'
            '"{\\"gatewayTopology\\":{\\"numTrustedProxies\\":1}}"}}}}}')


def test_the_annotation_patch_on_the_installed_ingress_deployment() -> None:
    base = ingress_deployment()
    patched = merge_patch(base, parse_patch(ANNOTATE), strategic=True)
    annotations = patched["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"proxy.istio.io/config": '{"gatewayTopology":{"numTrustedProxies":1}}'}
    assert patched["spec"]["template"]["metadata"]["labels"] == base["spec"]["template"]["metadata"]["labels"]
    assert base["spec"]["template"]["metadata"].get("annotations") is None  # the input is not changed
    assert is_mesh_ingress_deployment(Deployment.model_validate(patched))


def test_merge_semantics() -> None:
    target = {"a": {"b": 1, "c": 2}, "d": [1, 2], "containers": [{"name": "x", "image": "i1", "args": ["1"]}]}
    assert merge_patch(target, {"a": {"b": None, "e": 3}}) == {**target, "a": {"c": 2, "e": 3}}
    assert merge_patch(target, {"d": [3]})["d"] == [3]  # plain lists are replaced
    more = {"containers": [{"name": "x", "image": "i2"}, {"name": "y", "image": "j"}]}
    strategic = merge_patch(target, more, strategic=True)
    assert strategic["containers"] == [{"name": "x", "image": "i2", "args": ["1"]},
                                       {"name": "y", "image": "j"}]
    merged = merge_patch(target, {"containers": [{"name": "x", "image": "i2"}]})
    assert merged["containers"] == [{"name": "x", "image": "i2"}]  # RFC 7386: replaced


@pytest.mark.parametrize(("text", "reason"), [("{", "not valid JSON or YAML"), ("[1]", "must be an object")])
def test_bad_patches_are_named(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_patch(text)


DOC = {"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"spec": {
    "containers": [{"name": "a", "image": "x"}]}}}}


def test_a_json_patch_applies_its_operations_in_order_and_leaves_the_target_alone() -> None:
    ops = parse_json_patch('[{"op": "test", "path": "/spec/replicas", "value": 1},'
                           ' {"op": "replace", "path": "/spec/replicas", "value": 3},'
                           ' {"op": "add", "path": "/spec/template/spec/containers/-",'
                           '  "value": {"name": "b"}},'
                           ' {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels"},'
                           ' {"op": "move", "from": "/metadata/labels", "path": "/metadata/app"},'
                           ' {"op": "remove", "path": "/spec/template/spec/containers/0/image"}]')
    patched = json_patch(DOC, ops)
    assert patched["spec"]["replicas"] == 3 and patched["metadata"] == {"name": "d", "app": "d"}
    assert patched["spec"]["template"]["spec"]["containers"] == [{"name": "a"}, {"name": "b"}]
    assert DOC["spec"]["replicas"] == 1  # unchanged


@pytest.mark.parametrize(("op", "message"), [
    ({"op": "test", "path": "/spec/replicas", "value": 2},
     "testing value /spec/replicas failed: test failed"),
    ({"op": "replace", "path": "/spec/x", "value": 1},
     "replace operation does not apply: doc is missing key: /spec/x: missing value"),
    ({"op": "replace", "path": "/spec/x/y", "value": 1},
     "replace operation does not apply: doc is missing path: /spec/x/y: missing value"),
    ({"op": "add", "path": "/spec/x/y", "value": 1},
     'add operation does not apply: doc is missing path: "/spec/x/y": missing value'),
    ({"op": "remove", "path": "/spec/x"},
     "error in remove for path: '/spec/x': Unable to remove nonexistent key: x: missing value"),
    ({"op": "remove", "path": "/spec/x/y"},
     'remove operation does not apply: doc is missing path: "/spec/x/y": missing value'),
    ({"op": "add", "path": "/spec/template/spec/containers/5", "value": {}},
     "Unable to access invalid index: 5: invalid index referenced"),
    ({"op": "move", "from": "/nope", "path": "/spec/x"},
     "move operation does not apply: doc is missing from path: /nope: missing value"),
    ({"op": "frob", "path": "/spec/x"}, "Unexpected kind: frob"),
])
def test_an_operation_that_does_not_apply_has_the_api_servers_words(op: dict[str, Any], message: str) -> None:
    with pytest.raises(JsonPatchError) as raised:
        json_patch(DOC, [{"op": "replace", "path": "/spec/replicas", "value": 9}, op])
    assert str(raised.value) == message
    assert kubectl_invalid(raised.value).splitlines() == [
        "The request is invalid: the server rejected our request due to an error in our request",
        f"cause: {message}"]


@pytest.mark.parametrize(("text", "reason"), [
    ('{"op": "add"}', "cannot unmarshal object into Go value of type jsonpatch.Patch"),
    ("[1]", "cannot unmarshal int into Go value of type jsonpatch.Operation"),
    ("[{", "not valid JSON or YAML"),
])
def test_a_json_patch_that_is_not_a_list_of_operations_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace(".", r"\.")):
        parse_json_patch(text)
