"""Istio-compatible configuration, as data.

What it is for: parsing Istio YAML into typed resources (`loader`, `resources`),
checking them across resources like ``istioctl analyze`` (`analyze`), and compiling
resources plus the service registry into the plain-JSON per-proxy snapshot that the
sidecar consumes (`compile`, with its sections in `compile_virtual_hosts`,
`compile_routes`, `compile_clusters` and `compile_inbound`; see docs/snapshot.md).

What it must not do: open sockets, start tasks, touch the file system beyond what
a caller hands it, or import anything from `meshkit.control`, `meshkit.runtime`,
`meshkit.proxy` or the notebook side. Everything here is a pure function of its input.
"""
