"""The demo workloads the mesh runs: Bookinfo, an httpbin-like echo, and two clients.

Every app is an ordinary aiohttp process, started as
``python -m meshkit.apps <app> --port N [--instance reviews-v2-0] [--version v2]``:

- ``productpage``, ``details``, ``reviews`` (v1/v2/v3), ``ratings``: Istio's Bookinfo, with
  the original apps' timeouts, retry and header propagation, so Istio's lessons reproduce;
- ``httpbin``: status codes, delays, header and request echo;
- ``sleep``: an in-mesh client whose ``/fetch`` goes through its sidecar (``HTTP_PROXY``);
- ``legacy``: an out-of-mesh client whose ``/fetch`` always connects directly.

Every app answers ``/healthz`` and offers fault knobs under ``/admin/`` (failure rate,
delay) for outlier-detection and timeout lessons.

What this package must NOT do: import anything else from meshkit (import-linter enforces
it). The apps know nothing of the mesh; they reach other services only by plain HTTP
through the proxy named in ``HTTP_PROXY``, exactly as a workload beside a sidecar would.
"""
