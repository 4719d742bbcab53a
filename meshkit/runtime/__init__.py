"""Where workloads run: the embedded local mesh (processes on 127.0.0.1) and Kubernetes.

What it is for: starting, finding, observing and stopping the processes of a mesh (control
plane, demo apps, one sidecar per workload instance, the ingress gateway), keeping their
pids, ports and logs in one state dir, and registering endpoints with the control plane.

What it must not do: contain data-plane logic (that is ``meshkit.proxy``), control-plane
logic (``meshkit.control``), or notebook UI (``meshkit.lab``). It talks to the control plane
over its HTTP API like any client — except ``kubernetes``, the control plane's Kubernetes
backend, which runs the control plane in-process and feeds its store and registry from a cluster.
"""
