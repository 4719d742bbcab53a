"""Each hop of an explained request gets its access-log lines: the caller sidecar's outbound line and
the receiving sidecar's inbound line for that x-request-id (what `kubectl logs -c istio-proxy | grep`
would find, gathered for you).

The control plane asks the admin page ``/access_log?request_id=ID`` (`meshkit.proxy.access_search`)
of each proxy the trace's spans name (their ``node_id`` tag), at the address that proxy's metrics are
scraped from (`telemetry.Scraper`: proxies name their admin port on their own xDS stream; never a
URL from a client). Fetches run concurrently with a short timeout; a proxy that does not answer is
named in ``access_log_errors``. It must not change the hops the spans gave; it only adds lines.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=2.0)
METRICS_PATH = "/stats/prometheus"


async def _lines(session: aiohttp.ClientSession, url: str, request_id: str) -> list[dict[str, Any]] | str:
    page = f"{url.removesuffix(METRICS_PATH)}/access_log?request_id={quote(request_id)}"
    try:
        async with session.get(page) as response:
            doc = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return f"admin /access_log unreachable: {str(error) or type(error).__name__}"
    if not isinstance(doc, dict):
        return "admin /access_log answered no JSON object"
    if response.status != 200 or doc.get("reason"):
        return str(doc.get("reason") or doc.get("error") or f"HTTP {response.status}")
    lines = doc.get("lines")
    return [line for line in lines if isinstance(line, dict)] if isinstance(lines, list) else []


def _pick(lines: list[dict[str, Any]], used: set[int], direction: str, cluster: str | None,
          status: int) -> dict[str, Any] | None:
    """The first unused line of ``direction``, preferring the hop's cluster and status."""
    candidates = [(i, line) for i, line in enumerate(lines)
                  if i not in used and line.get("direction") == direction]
    for wanted in ((cluster, status), (cluster, None), (None, status), (None, None)):
        for i, line in candidates:
            if (wanted[0] is None or line.get("upstream_cluster") == wanted[0]) and \
                    (wanted[1] is None or line.get("status") == wanted[1]):
                used.add(i)
                return line
    return None


async def merge_access_logs(explained: dict[str, Any], spans: list[dict[str, Any]],
                            targets: dict[str, str]) -> dict[str, Any]:
    """Add ``access_log: {"caller": line|None, "server": line|None}`` to each hop of ``explained``."""
    request_id = explained.get("request_id") or ""
    node_of = {span["id"]: (span.get("tags") or {}).get("node_id", "") for span in spans}
    nodes = sorted({node for node in node_of.values() if node})
    explained["access_log_errors"] = {}
    for hop in explained["hops"]:
        hop["access_log"] = {"caller": None, "server": None}
    if not request_id:
        return explained
    asked = [node for node in nodes if node in targets]
    for node in nodes:
        if node not in targets:
            explained["access_log_errors"][node] = "not connected (no admin address known)"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        answers = await asyncio.gather(*(_lines(session, targets[node], request_id) for node in asked))
    by_node: dict[str, list[dict[str, Any]]] = {}
    for node, answer in zip(asked, answers, strict=True):
        if isinstance(answer, str):
            explained["access_log_errors"][node] = answer
        else:
            by_node[node] = answer
    used: dict[str, set[int]] = {node: set() for node in by_node}
    for hop in explained["hops"]:
        caller = node_of.get(hop.get("client_span") or "")
        server = node_of.get(hop.get("server_span") or "")
        if caller in by_node:
            hop["access_log"]["caller"] = _pick(by_node[caller], used[caller], "outbound", hop.get("cluster"),
                                                hop["status"])
        if server in by_node:
            hop["access_log"]["server"] = _pick(by_node[server], used[server], "inbound", None, hop["status"])
    return explained
