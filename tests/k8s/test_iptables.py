"""Traffic capture rules: as data, as the committed init script, and FOR REAL in network namespaces.

The real test builds two namespaces joined by a veth pair (a "pod" 10.77.0.2 and a "peer"
10.77.0.1), runs the committed ``operator/meshkit-init.sh`` inside the pod namespace, and
checks where unmodified clients' connections land (SO_ORIGINAL_DST gives the address the
client asked for). Nothing leaves the namespaces the test created; both are always deleted.
Needs root, ``ip`` and ``iptables``; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from meshkit.k8s.iptables import CaptureSettings, Rule, capture_rules, render_commands, render_script
from tests.k8s.netns_pod import PEER_IP, POD_IP, SCRIPT, SERVICE_IP, Namespaces

ROOT = Path(__file__).resolve().parents[2]


def test_committed_init_script_is_generated_from_the_rules() -> None:
    assert SCRIPT.read_text() == render_script(), (
        "operator/meshkit-init.sh is stale: run `python -m meshkit.k8s.iptables > operator/meshkit-init.sh`"
    )


def test_rules_as_data() -> None:
    rules = capture_rules()
    assert rules[:4] == [Rule("-N", c) for c in
                         ("MESHKIT_INBOUND", "MESHKIT_IN_REDIRECT", "MESHKIT_OUTPUT", "MESHKIT_REDIRECT")]
    commands = render_commands(rules)
    assert "iptables -t nat -A MESHKIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in commands
    assert "iptables -t nat -A MESHKIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in commands
    assert "iptables -t nat -A MESHKIT_OUTPUT -m owner --uid-owner 1337 -j RETURN" in commands
    excluded = [r.spec[3] for r in rules if r.chain == "MESHKIT_INBOUND" and "--dport" in r.spec]
    assert excluded == ["15000", "15001", "15006", "15021", "15090"]
    # the final catch-all comes last, after every exemption
    assert rules[-1] == Rule("-A", "MESHKIT_OUTPUT", ("-j", "MESHKIT_REDIRECT"))


def test_settings_change_the_rules() -> None:
    custom = CaptureSettings(outbound_port=16001, proxy_uid=2000, exclude_inbound_ports=(22,))
    commands = render_commands(capture_rules(custom))
    assert "iptables -t nat -A MESHKIT_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in commands
    assert "iptables -t nat -A MESHKIT_OUTPUT -m owner --uid-owner 2000 -j RETURN" in commands
    assert "iptables -t nat -A MESHKIT_INBOUND -p tcp --dport 22 -j RETURN" in commands
    assert not any("--dport 15021" in c for c in commands)


# ---------------------------------------------------------------------------------------------
# for real
# ---------------------------------------------------------------------------------------------


def test_capture_for_real_in_a_network_namespace(namespaces: Namespaces) -> None:
    pod, peer = namespaces.pod, namespaces.peer
    # the sidecar's listeners and an app on 9080 in the pod; a plain server on 9080 in the peer
    namespaces.listen(pod, 15001, 15006, 15021, 9080)
    namespaces.listen(peer, 9080, 15021)
    # before capture: the pod's client reaches the peer directly
    assert namespaces.connect(pod, PEER_IP, 9080).startswith(f"{peer} 9080 ")

    result = subprocess.run(["ip", "netns", "exec", pod, "sh", str(SCRIPT)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr

    # outbound: an unmodified client's connection to a service IP lands on 15001, original dst kept
    assert namespaces.connect(pod, SERVICE_IP, 9080) == f"{pod} 15001 {SERVICE_IP}:9080"
    assert namespaces.connect(pod, PEER_IP, 9080) == f"{pod} 15001 {PEER_IP}:9080"
    # the proxy's own traffic (uid 1337) is not captured: it reaches the peer itself
    assert namespaces.connect(pod, PEER_IP, 9080, uid=1337).startswith(f"{peer} 9080 ")
    # the app talking to itself over loopback is left alone
    assert namespaces.connect(pod, "127.0.0.1", 9080).startswith(f"{pod} 9080 ")
    # the proxy calling its own pod IP goes to inbound, as in Istio
    assert namespaces.connect(pod, POD_IP, 9080, uid=1337) == f"{pod} 15006 {POD_IP}:9080"
    # inbound: a peer calling the pod's app port lands on 15006 with the original destination
    assert namespaces.connect(peer, POD_IP, 9080) == f"{pod} 15006 {POD_IP}:9080"
    # excluded inbound ports (the sidecar's health port) are not redirected
    assert namespaces.connect(peer, POD_IP, 15021).startswith(f"{pod} 15021 ")


def _init(namespaces: Namespaces, **env: str) -> str:
    """Run the committed init script in the pod namespace (with ``env``); its nat table after."""
    result = subprocess.run(["ip", "netns", "exec", namespaces.pod, "sh", str(SCRIPT)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env})
    assert result.returncode == 0, f"the init script failed: {result.stderr}"
    table = subprocess.run(["ip", "netns", "exec", namespaces.pod, "iptables", "-t", "nat", "-S"],
                           capture_output=True, text=True, timeout=30, check=True)
    return table.stdout


def test_the_init_script_runs_twice(namespaces: Namespaces) -> None:
    """A restarted init container runs the script again in the same network namespace. The script
    used ``iptables -N`` under ``set -e``, so the second run failed ("Chain already exists") and
    the pod crash-looped; now both runs succeed and leave the same table, still capturing."""
    pod = namespaces.pod
    namespaces.listen(pod, 15001, 15006)
    first = _init(namespaces)
    second = _init(namespaces)
    assert second == first
    assert first.count("-j MESHKIT_OUTPUT") == 1 and first.count("-j MESHKIT_INBOUND") == 1
    assert namespaces.connect(pod, SERVICE_IP, 9080) == f"{pod} 15001 {SERVICE_IP}:9080"


def test_exclusion_annotations_reach_the_rules(namespaces: Namespaces) -> None:
    """Istio's ``traffic.sidecar.istio.io/exclude*`` annotations, as the injector passes them."""
    pod, peer = namespaces.pod, namespaces.peer
    namespaces.listen(pod, 15001, 15006, 9080, 9443)
    namespaces.listen(peer, 9080, 9443, 5432)
    _init(namespaces, EXCLUDE_OUTBOUND_PORTS="5432,9443", EXCLUDE_OUTBOUND_IP_RANGES="10.96.0.0/12",
          EXCLUDE_INBOUND_PORTS="9443")
    assert namespaces.connect(pod, PEER_IP, 5432).startswith(f"{peer} 5432 ")  # excluded port
    assert namespaces.connect(pod, PEER_IP, 9443).startswith(f"{peer} 9443 ")
    assert namespaces.connect(pod, PEER_IP, 9080) == f"{pod} 15001 {PEER_IP}:9080"  # still captured
    assert namespaces.connect(pod, SERVICE_IP, 9080).startswith("error")  # excluded range: not redirected
    assert namespaces.connect(peer, POD_IP, 9443).startswith(f"{pod} 9443 ")  # excluded inbound
    assert namespaces.connect(peer, POD_IP, 9080) == f"{pod} 15006 {POD_IP}:9080"
    # a re-run with other exclusions replaces them (the chains are flushed, not appended to)
    _init(namespaces)
    assert namespaces.connect(pod, PEER_IP, 5432) == f"{pod} 15001 {PEER_IP}:5432"
