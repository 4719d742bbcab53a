"""The sidecar data plane: the process that runs beside each workload.

What it is for: accepting HTTP/1.1 on an outbound listener (the app's explicit proxy),
an inbound listener (in front of the app) and an admin listener, and sending every
request through an ordered chain of small filters (``filters/``, one concern per file)
configured by the plain-JSON snapshot described in docs/snapshot.md.

What it must not do: import pydantic, aiohttp or anything from ``meshkit.config``,
``meshkit.control``, ``meshkit.runtime`` or the notebook side (import-linter enforces
this), or allocate per request what can be built once per snapshot. It may import
the standard library, uvloop and httptools. ``cryptography`` is for the short-lived key/CSR
helper process only (``tls.csr_helper``, ``tls.x509``): the running sidecar never loads it.
"""
