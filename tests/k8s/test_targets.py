"""How a cluster target (`connect("kind")`, `meshkit --context k8s:CONTEXT`) names a cluster: pure parsing."""

from __future__ import annotations

import pytest

from meshkit.k8s.targets import ClusterTargetError, api_url, cluster_access, is_cluster_target, kube_context


@pytest.mark.parametrize(("target", "cluster", "context", "url"), [
    ("kind", True, "kind-meshkit", None),
    ("kind:lab", True, "kind-lab", None),
    ("k8s", True, None, None),
    ("k8s:prod", True, "prod", None),
    ("k8s:httpbin-cluster", True, "httpbin-cluster", None),  # a context that merely starts with "http"
    ("k8s:http://127.0.0.1:8001", True, None, "http://127.0.0.1:8001"),
    ("k8s:https://10.0.0.1:6443", True, None, "https://10.0.0.1:6443"),
    ("http://127.0.0.1:15010", False, None, None),
    ("", False, None, None),
])
def test_targets_name_a_context_or_an_api_url(target: str, cluster: bool, context: str | None,
                                               url: str | None) -> None:
    assert is_cluster_target(target) is cluster
    if cluster:
        assert kube_context(target) == context
        assert api_url(target) == url


def test_an_api_url_target_needs_no_kubeconfig_and_a_control_plane_url_is_no_cluster() -> None:
    assert cluster_access("k8s:http://127.0.0.1:8001", "/nonexistent/kubeconfig").server == "http://127.0.0.1:8001"
    with pytest.raises(ClusterTargetError, match="names no cluster"):
        cluster_access("http://127.0.0.1:15010")
