"""Where workloads run locally: the embedded mesh of processes on 127.0.0.1.

What it is for: starting, finding, observing and stopping the processes of a mesh (control
plane, demo apps, one sidecar per workload instance, the ingress gateway), keeping their
pids, ports and logs in one state dir, and registering endpoints with the control plane.

What it must not do: contain data-plane logic (that is ``meshkit.proxy``), control-plane
logic (``meshkit.control``), notebook UI (``meshkit.lab``) or anything about Kubernetes
(``meshkit.k8s``; import-linter keeps the two apart). It talks to the control plane over its
HTTP API like any client.
"""
