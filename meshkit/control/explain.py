"""Explain one request from its trace: every hop, the rule that routed it, what fired, where time went.

`explain(spans)` pairs each client span (the caller's sidecar or the gateway) with the server span of
the sidecar it reached, and tells per hop: the VirtualService rule that matched (the sidecar tags its
client spans with the route's source, ``VirtualService/<ns>/<name>#http[<i>]``, or ``default``), the
cluster and subset chosen, the endpoint, the fault configured on that rule and whether it fired, the
attempts made (retries), the timeout in force, each response flag in words with its likely cause and
the config that produces it, mutual TLS, and the time spent in the caller's proxies and network
versus in the called app. `FLAGS` is the dictionary of Envoy response flags meshkit raises.

Pure data: no I/O.
"""

from __future__ import annotations

from typing import Any

# flag -> (what happened, the likely cause and the config that produces it)
FLAGS: dict[str, tuple[str, str]] = {
    "NR": ("no route: no rule matched the request's host and path",
           "no VirtualService rule matches (check match conditions, hosts, namespace, a gateways: list "
           "that binds the VirtualService to a gateway only) and the host is no mesh service"),
    "NC": ("no cluster: the route points at an upstream that does not exist",
           "a VirtualService routes to a subset no DestinationRule defines (add the subset, or apply "
           "the DestinationRule first)"),
    "UH": ("no healthy upstream: every endpoint of the cluster is ejected or none is registered",
           "DestinationRule outlierDetection ejected all endpoints after consecutive 5xx, or the "
           "service has no running instance of that subset"),
    "UF": ("upstream connection failure: the connect was refused or timed out",
           "the destination app or sidecar is down, or its port is wrong"),
    "UC": ("upstream connection termination: the upstream closed the connection before a response",
           "the app crashed mid-request, or the destination's sidecar refused the connection (STRICT "
           "mTLS against a plaintext client: DestinationRule tls.mode DISABLE, or a caller without sidecar)"),
    "UO": ("upstream overflow: the circuit breaker refused the request",
           "DestinationRule trafficPolicy.connectionPool limits (http1MaxPendingRequests, "
           "maxRequestsPerConnection, http2MaxRequests, tcp.maxConnections) were reached"),
    "URX": ("upstream retry limit exceeded: every attempt failed",
            "VirtualService retries.attempts were used up (retryOn matched each failure)"),
    "UT": ("upstream request timeout: no response within the time allowed",
           "VirtualService timeout (or retries.perTryTimeout) is shorter than the upstream took"),
    "DI": ("delay injected: the request was held before it was forwarded",
           "VirtualService fault.delay on this route"),
    "FI": ("fault injected: the sidecar answered with an error without forwarding the request",
           "VirtualService fault.abort on this route"),
    "RL": ("rate limited: the local rate limiter refused the request",
           "EnvoyFilter local_ratelimit token bucket on the destination workload"),
    "DC": ("downstream connection termination: the caller went away before the response",
           "the client gave up (its own timeout) or was stopped"),
    "UPE": ("upstream protocol error: the upstream answered something that is not valid HTTP",
            "the port speaks another protocol, or the app wrote a broken response"),
}


def flag_words(flags: str) -> list[dict[str, str]]:
    """``"DI,UT"`` -> each flag with its meaning and likely cause (unknown flags said as such)."""
    words = []
    for flag in [f for f in flags.split(",") if f and f != "-"]:
        meaning, cause = FLAGS.get(flag, ("an Envoy response flag meshkit does not describe", ""))
        words.append({"flag": flag, "meaning": meaning, "cause": cause})
    return words


def _tags(span: dict[str, Any]) -> dict[str, str]:
    return span.get("tags") or {}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "-") else None
    except ValueError:
        return None


def explain(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """The hops of one trace in call order (see the module docstring)."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span.get("parentId"):
            by_parent.setdefault(span["parentId"], []).append(span)
    hops = []
    for client in sorted((s for s in spans if s.get("kind") == "CLIENT"), key=lambda s: s["timestamp"]):
        servers = [s for s in by_parent.get(client["id"], []) if s.get("kind") == "SERVER"]
        server = servers[0] if servers else None
        hops.append(_hop(client, server, by_parent))
    # Server spans with no client span: callers outside the mesh (no sidecar of their own).
    client_ids = {s["id"] for s in spans if s.get("kind") == "CLIENT"}
    outside = [s for s in spans if s.get("kind") == "SERVER" and s.get("parentId") not in client_ids]
    hops += [_hop(None, server, by_parent) for server in outside]
    hops.sort(key=lambda h: h["start_us"])
    request_ids = sorted({_tags(s).get("guid:x-request-id", "") for s in spans} - {""})
    return {"trace_id": spans[0]["traceId"] if spans else "",
            "request_id": request_ids[0] if request_ids else "", "hops": hops, "verdict": _verdict(hops)}


def _hop(client: dict[str, Any] | None, server: dict[str, Any] | None,
         by_parent: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    main = client or server
    assert main is not None
    tags = _tags(main)
    server_tags = _tags(server) if server else {}
    cluster = tags.get("upstream_cluster", "-") if client else None
    flags = tags.get("response_flags", "-")
    hop: dict[str, Any] = {
        "from": tags.get("istio.canonical_service", "") if client else "(outside the mesh)",
        "to": server_tags.get("istio.canonical_service") or main.get("name", "").split(":")[0].split("/")[0],
        "start_us": main["timestamp"],
        "status": _int(tags.get("http.status_code")) or 0,
        "flags": flags,
        "flags_explained": flag_words(flags),
        "route": tags.get("meshkit.route") if client else None,
        "route_name": tags.get("meshkit.route_name") if client else None,
        "cluster": cluster,
        "subset": cluster.partition("|")[2] or None if cluster and "|" in cluster else None,
        "endpoint": _endpoint(client) if client else None,
        "fault": tags.get("meshkit.fault") if client else None,
        "fault_fired": any(f in flags.split(",") for f in ("DI", "FI")),
        "attempts": _int(tags.get("retry.attempts")) if client else None,
        "timeout_ms": _int(tags.get("meshkit.timeout_ms")) if client else None,
        "mtls": (server_tags or tags).get("connection_security_policy") == "mutual_tls",
        "reached_server": server is not None,
        "duration_ms": main["duration"] / 1000.0,
        "server_ms": server["duration"] / 1000.0 if server else None,
        "client_span": client["id"] if client else None,
        "server_span": server["id"] if server else None,
    }
    if server is not None:
        # the app's own time: the server span minus the calls it made (its children's client spans)
        calls = sum(c["duration"] for c in by_parent.get(server["id"], []) if c.get("kind") == "CLIENT")
        hop["app_ms"] = max(0.0, (server["duration"] - calls) / 1000.0)
        if client is not None:
            hop["caller_proxy_and_network_ms"] = max(0.0, (client["duration"] - server["duration"]) / 1000.0)
    return hop


def _endpoint(span: dict[str, Any]) -> str | None:
    remote = span.get("remoteEndpoint") or {}
    if remote.get("ipv4") and remote.get("port"):
        return f"{remote['ipv4']}:{remote['port']}"
    return None


def _verdict(hops: list[dict[str, Any]]) -> str:
    """One sentence: the deepest hop that failed or raised a flag, else where the time went."""
    if not hops:
        return "no spans: the request was not sampled, or its trace was dropped"
    marked = [h for h in hops if h["status"] >= 500 or h["status"] == 0 or h["flags"] not in ("-", "")]
    if marked:
        hop = marked[-1]
        words = "; ".join(f"{w['flag']}: {w['meaning']}" for w in hop["flags_explained"]) or \
            "answered by the app itself (no response flag)"
        return f"{hop['from']} → {hop['to']} answered {hop['status']}: {words}"
    served = [h for h in hops if h.get("app_ms") is not None]
    if not served:
        return "no error"
    slowest = max(served, key=lambda h: h["app_ms"])
    return f"no error; the app that took longest was {slowest['to']} ({slowest['app_ms']:.1f} ms of its own)"
