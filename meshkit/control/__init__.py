"""The control plane: the mesh's single source of configuration truth, served over HTTP (aiohttp).

What it is for: keeping the accepted Istio resources as numbered revisions (`store`), the live
service registry (`registry`), compiling and streaming per-proxy snapshots to sidecars with
ACK/NACK tracking (`push`), the REST API that exposes all of it (`api`), the certificate
authority (`ca`), and running it on a host/port (`server`). `client` is the small synchronous
HTTP client the CLI uses.

What it must not do: carry traffic or import the sidecar (`meshkit.proxy`), the runtime, the
notebook side or the CLI; decide what a rule means (that is `meshkit.config`: the control plane
only stores, analyzes through `config.analyze` and compiles through `config.compile`); or keep
module-level mutable state (everything lives on objects a `ControlPlane` owns).
"""
