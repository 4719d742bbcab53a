"""meshkit on Kubernetes: sidecar injection, traffic capture rules, admission checks, CRDs, kind.

Most modules here are pure functions over plain dicts (`inject`, `iptables`, `crds`,
`admission`, `status`) so they can be tested without a cluster; `operator` wires them
into kopf handlers and `kind` drives a local kind cluster. `cluster_config` is the
control-plane client of a mesh on a cluster (config through the Kubernetes API, reads through
the API server's service proxy) and `targets` turns ``kind`` / ``k8s:<context>`` into one;
``meshkit.connect("kind")`` and the CLI's ``--context`` use them.

This package must not import the proxy (the sidecar runs in its own container) nor
the local runtime; it sits above `meshkit.runtime` in the import layers and reads
the Istio models and the analyzer from `meshkit.config`.
"""
