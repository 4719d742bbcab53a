"""meshkit on Kubernetes: everything that knows about a cluster lives here.

* The cluster side of the mesh: sidecar injection, traffic capture rules, admission checks,
  CRDs. Most modules are pure functions over plain dicts (`inject`, `iptables`, `crds`,
  `admission`, `status`) so they can be tested without a cluster; `operator` wires them into
  kopf handlers and `kind` drives a local kind cluster.
* Talking to the API server: `api` (async, aiohttp: list, watch, create, for the control plane)
  and `client` (sync, urllib: for the CLI and notebooks), `kubeconfig` (a fast kubeconfig
  reader), `port_forward`.
* The control plane's Kubernetes backend: `control_plane` (``meshkit control --kubernetes``:
  mirrors the Istio CRDs, Services, EndpointSlices and Pods into the control plane's store and
  registry), `sources` (the pure object -> registry/resource mapping) and `tokenreview` (the
  CA's caller check).
* The client side: `cluster_config` is the control-plane client of a mesh on a cluster (config
  through the Kubernetes API, reads through the API server's service proxy) and `targets`
  turns ``kind`` / ``k8s:<context>`` into one; ``meshkit.connect("kind")`` and the CLI's
  ``--context`` use them.

This package must not import the proxy (the sidecar runs in its own container) nor the local
runtime (`meshkit.runtime`, its sibling in the import layers: neither imports the other); it
builds on `meshkit.control` and `meshkit.config` (.importlinter).
"""
