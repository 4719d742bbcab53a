"""Harness for ``benchmarks/proxy_overhead.py`` and ``mtls_overhead.py``: targets, load generation,
process sampling, report, and the run frame they share (``session``).

What it is for: measuring what the meshkit sidecar adds to a request compared with nginx and
haproxy doing the same job on the same machine, in the same run (ratios, medians of interleaved
rounds). What it must not do: touch system configuration, bind anything but 127.0.0.1, send
traffic anywhere else, run unbounded, or leave processes behind. It is a benchmark, not a test:
meshkit code is only ever started as a separate process (``python -m meshkit.proxy``).
"""
