"""``meshkit patch``'s merge: kubectl's strategic merge patch (named lists by name) and RFC 7386."""

from __future__ import annotations

import pytest

from meshkit.config.patch import merge_patch, parse_patch
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
