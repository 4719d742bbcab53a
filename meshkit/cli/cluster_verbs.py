"""``meshkit cluster-info dump``: the local mesh's notional cluster facts, in kubectl's shape.

Istio's "Direct access to external services" asks the learner to find the cluster's internal IP range,
on kind with ``kubectl cluster-info dump | grep -m 1 service-cluster-ip-range``. The local mesh has no
kube-apiserver; this prints the one fact that step greps for from its notional address plan
(`meshkit.config.ip_ranges`: kind's service range), as the kube-apiserver pod's command line in the
JSON a cluster-info dump holds, so the same pipe finds ``--service-cluster-ip-range=10.96.0.0/16``.

It must not: invent other cluster state (nodes, events, logs): the local mesh has none to show.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meshkit.cli.common import EXIT_REJECTED, _fail, app
from meshkit.config.ip_ranges import SERVICE_CIDR


@app.command("cluster-info")
def cluster_info(
    action: Annotated[str | None, typer.Argument(help="dump: the notional cluster facts (kubectl's form).")]
    = None,
) -> None:
    """`kubectl cluster-info dump | grep -m 1 service-cluster-ip-range`: the local mesh's service range."""
    if action not in (None, "dump"):
        _fail(EXIT_REJECTED, f"error: unknown cluster-info action {action!r}; only `cluster-info dump`")
    if action is None:
        typer.echo(f"The local mesh has no Kubernetes control plane; its notional Service range is "
                   f"{SERVICE_CIDR} (kind's). Try `meshkit cluster-info dump`.")
        return
    pod = {"kind": "PodList", "apiVersion": "v1", "items": [{
        "metadata": {"name": "kube-apiserver-meshkit-control-plane", "namespace": "kube-system",
                     "labels": {"component": "kube-apiserver", "tier": "control-plane"}},
        "spec": {"containers": [{"name": "kube-apiserver", "command": [
            "kube-apiserver", "--secure-port=6443", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt"]}]},
    }]}
    typer.echo(json.dumps(pod, indent=4))
