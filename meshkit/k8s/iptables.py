"""Traffic capture for an injected pod: istio-init-like rules in the ``nat`` table, as data.

`capture_rules` returns the rules; `render_commands` turns them into ``iptables -t nat ...``
command lines and `render_script` into the shell script the ``meshkit-init`` container
runs (``python -m meshkit.k8s.iptables > operator/meshkit-init.sh``; a test keeps the
committed script in step with this module).

What the rules do (REDIRECT mode, like ``istio-iptables``):

* ``MESHKIT_INBOUND`` (from PREROUTING): TCP arriving at the pod goes to the sidecar's
  inbound port 15006, except the sidecar's own ports (admin, metrics, health, ...).
* ``MESHKIT_OUTPUT`` (from OUTPUT): TCP the pod sends goes to the outbound port 15001,
  except traffic of the proxy itself (uid/gid 1337) and loopback traffic; the one loopback
  case that *is* redirected is the proxy calling its own pod IP (it goes to inbound, as
  in Istio), so a pod calling itself still crosses its sidecar.

The script is idempotent (an init container may run again after a crash or a node restart,
in the same network namespace): it creates each meshkit chain or flushes it when it exists,
and adds the jumps from the built-in chains only when they are not there (``iptables -C``).
It honours Istio's per-pod exclusions, which the injector passes from the pod's annotations
(``traffic.sidecar.istio.io/excludeOutboundPorts``, ``excludeOutboundIPRanges``,
``excludeInboundPorts``) as comma-separated environment variables (`EXCLUDE_ENV`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from meshkit.k8s import names

TABLE = "nat"
INBOUND = "MESHKIT_INBOUND"
IN_REDIRECT = "MESHKIT_IN_REDIRECT"
OUTPUT = "MESHKIT_OUTPUT"
REDIRECT = "MESHKIT_REDIRECT"
# the source address the proxy uses to reach its app for inbound passthrough (Istio's 127.0.0.6)
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"
LOCALHOST = "127.0.0.1/32"
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"})
# pod annotation (Istio's names) -> environment variable of the init container -> (chain, match)
EXCLUDE_ENV: dict[str, tuple[str, str, str]] = {
    "traffic.sidecar.istio.io/excludeOutboundPorts": ("EXCLUDE_OUTBOUND_PORTS", OUTPUT, "--dport"),
    "traffic.sidecar.istio.io/excludeOutboundIPRanges": ("EXCLUDE_OUTBOUND_IP_RANGES", OUTPUT, "-d"),
    "traffic.sidecar.istio.io/excludeInboundPorts": ("EXCLUDE_INBOUND_PORTS", INBOUND, "--dport"),
}


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    outbound_port: int = names.PORT_OUTBOUND
    inbound_port: int = names.PORT_INBOUND
    proxy_uid: int = names.PROXY_UID
    proxy_gid: int = names.PROXY_GID
    # inbound ports never redirected: the sidecar's own listeners
    exclude_inbound_ports: tuple[int, ...] = (
        names.PORT_ADMIN, names.PORT_OUTBOUND, names.PORT_INBOUND, names.PORT_HEALTH, names.PORT_METRICS,
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """One iptables operation: ``-N CHAIN`` (new chain) or ``-A CHAIN <match> -j <target>``."""

    operation: str  # "-N" | "-A" (| "-C", a check)
    chain: str
    spec: tuple[str, ...] = ()
    table: str = TABLE

    def argv(self) -> list[str]:
        return ["iptables", "-t", self.table, self.operation, self.chain, *self.spec]


def capture_rules(settings: CaptureSettings | None = None) -> list[Rule]:
    """The ordered rule list; applying it to a fresh network namespace captures its TCP traffic."""
    s = settings or CaptureSettings()
    uid, gid = str(s.proxy_uid), str(s.proxy_gid)
    rules = [Rule("-N", chain) for chain in (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT)]
    rules += [
        Rule("-A", REDIRECT, ("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(s.outbound_port))),
        Rule("-A", IN_REDIRECT, ("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(s.inbound_port))),
        # inbound
        Rule("-A", "PREROUTING", ("-p", "tcp", "-j", INBOUND)),
        *(Rule("-A", INBOUND, ("-p", "tcp", "--dport", str(port), "-j", "RETURN"))
          for port in sorted(set(s.exclude_inbound_ports))),
        Rule("-A", INBOUND, ("-p", "tcp", "-j", IN_REDIRECT)),
        # outbound
        Rule("-A", "OUTPUT", ("-p", "tcp", "-j", OUTPUT)),
        Rule("-A", OUTPUT, ("-o", "lo", "-s", INBOUND_PASSTHROUGH_SOURCE, "-j", "RETURN")),
    ]
    for kind, owner in (("--uid-owner", uid), ("--gid-owner", gid)):
        rules += [
            # the proxy calling its own pod IP: treat as inbound (Istio does the same)
            Rule("-A", OUTPUT, ("!", "-d", LOCALHOST, "-o", "lo", "-m", "owner", kind, owner,
                                "-j", IN_REDIRECT)),
            # the app talking over loopback (to itself, or to its pod IP) is left alone
            Rule("-A", OUTPUT, ("-o", "lo", "-m", "owner", "!", kind, owner, "-j", "RETURN")),
            # everything else the proxy sends leaves as is (no loop through itself)
            Rule("-A", OUTPUT, ("-m", "owner", kind, owner, "-j", "RETURN")),
        ]
    rules += [
        Rule("-A", OUTPUT, ("-d", LOCALHOST, "-j", "RETURN")),
        Rule("-A", OUTPUT, ("-j", REDIRECT)),
    ]
    return rules


def render_commands(rules: list[Rule]) -> list[str]:
    """``iptables -t nat ...`` command lines, shell-quoted."""
    return [shlex.join(rule.argv()) for rule in rules]


def _script_line(rule: Rule) -> str:
    """One rule as an idempotent shell line (see the module doc)."""
    command = shlex.join(rule.argv())
    if rule.operation == "-N":
        flush = shlex.join(["iptables", "-t", rule.table, "-F", rule.chain])
        return f"{command} 2>/dev/null || {flush}"
    if rule.chain in BUILTIN_CHAINS:
        check = shlex.join(Rule("-C", rule.chain, rule.spec, rule.table).argv())
        return f"{check} 2>/dev/null || {command}"
    return command


def _exclusions(chain: str) -> list[str]:
    """Shell loops adding the per-pod exclusions of ``chain`` (before its catch-all redirect)."""
    lines = []
    for variable, excluded_chain, match in EXCLUDE_ENV.values():
        if excluded_chain != chain:
            continue
        rule = shlex.join(["iptables", "-t", TABLE, "-A", chain, "-p", "tcp", match])
        lines += [
            f'for value in $(echo "${{{variable}:-}}" | tr "," " "); do',
            f'  {rule} "$value" -j RETURN',
            "done",
        ]
    return lines


def render_script(settings: CaptureSettings | None = None) -> str:
    """The POSIX shell script the ``meshkit-init`` container runs: idempotent, fails on the first error."""
    s = settings or CaptureSettings()
    header = [
        "#!/bin/sh",
        "# Generated by `python -m meshkit.k8s.iptables`; do not edit (tests/k8s check it is current).",
        f"# Captures the pod's TCP: outbound -> {s.outbound_port}, inbound -> {s.inbound_port};",
        f"# the proxy (uid {s.proxy_uid}) is exempt. Inbound ports left alone: "
        f"{', '.join(str(p) for p in sorted(set(s.exclude_inbound_ports)))}.",
        "# Safe to run again: meshkit's chains are created or flushed, built-in jumps added once.",
        "# Per-pod exclusions (comma-separated): "
        + ", ".join(variable for variable, _, _ in EXCLUDE_ENV.values()) + ".",
        "set -eu",
        "",
    ]
    body: list[str] = []
    for rule in capture_rules(s):
        catch_all = rule.operation == "-A" and rule.spec in (("-p", "tcp", "-j", IN_REDIRECT),
                                                             ("-j", REDIRECT))
        if catch_all and rule.chain in (INBOUND, OUTPUT):
            body += _exclusions(rule.chain)
        body.append(_script_line(rule))
    return "\n".join([*header, *body, ""])


def main() -> None:
    sys.stdout.write(render_script())


if __name__ == "__main__":
    main()
