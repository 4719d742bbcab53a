"""``meshkit traces`` (recent traces, filtered), ``meshkit trace ID`` (one trace as a waterfall) and
``meshkit explain ID`` (every hop of one request: rule, subset, fault, retries, flags in words)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from meshkit.cli.common import app, table

OutputOption = Annotated[str, typer.Option("-o", "--output", help="table or json.")]
BAR_WIDTH = 40


@app.command()
def traces(  # noqa: PLR0917 (typer maps parameters to options)
    service: Annotated[str | None, typer.Option(
        help="Only traces through this service (e.g. ratings).")] = None,
    errors: Annotated[bool, typer.Option(
        "--errors", help="Only traces where a span failed (5xx, no response).")] = False,
    min_duration: Annotated[str | None, typer.Option(
        help="Only traces at least this long (250ms, 1.5s, 2m).")] = None,
    request_id: Annotated[str | None, typer.Option(help="The trace of this x-request-id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    output: OutputOption = "table",
) -> None:
    """Recent traces the control plane collected (sampled as Istio samples: 1% unless configured)."""
    from meshkit.cli.common import _call, _client  # noqa: PLC0415

    answer = _call(_client(None).traces, service, errors=errors, min_duration=min_duration,
                   request_id=request_id, limit=limit)
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    for line in traces_lines(answer):
        typer.echo(line)


def traces_lines(answer: dict[str, Any]) -> list[str]:
    rows = [["TRACE ID", "START", "DURATION", "SPANS", "ROOT", "STATUS", "SERVICES"]]
    for t in answer["traces"]:
        start = datetime.fromtimestamp(t["start_us"] / 1e6, UTC).strftime("%H:%M:%S.%f")[:-3]
        root = t["root"]
        rows.append([t["trace_id"], start, f"{t['duration_ms']:.1f}ms", str(t["spans"]),
                     f"{root['service']} {root['name']}", ("ERROR " if t["error"] else "") + root["status"],
                     ",".join(t["services"])])
    if len(rows) == 1:
        stats = answer.get("stats", {})
        return [f"no traces match (the collector holds {stats.get('traces', 0)}; the mesh samples 1% "
                "of requests unless configured: send x-client-trace-id to force one)"]
    return table(rows)


@app.command()
def trace(
    trace_id: Annotated[str, typer.Argument(metavar="ID", help="A trace id or an x-request-id.")],
    output: Annotated[str, typer.Option("-o", "--output", help="table, json, otlp or zipkin.")] = "table",
) -> None:
    """One trace as a waterfall: every sidecar's client and server span, where the time went."""
    from meshkit.cli.common import _call, _client  # noqa: PLC0415

    client = _client(None)
    if output in ("otlp", "zipkin"):
        typer.echo(json.dumps(_call(client.request, "GET", f"traces/{trace_id}/{output}"), indent=2))
        return
    answer = _call(client.request, "GET", f"traces/{trace_id}")
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    from rich.console import Console  # noqa: PLC0415

    Console().print(waterfall_table(answer["trace_id"], answer["spans"]))


def waterfall_table(trace_id: str, spans: list[dict[str, Any]]) -> Any:
    """A rich Table: one row per span, indented by depth, with a bar placed on the trace's timeline."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from meshkit.control.trace_view import waterfall  # noqa: PLC0415

    rows = waterfall(spans)
    total = max((r.offset_ms + r.duration_ms for r in rows), default=0.0) or 1.0
    grid = Table(title=f"trace {trace_id}  ({len(rows)} spans, {total:.1f} ms)", title_justify="left")
    for name, justify in (("SPAN", "left"), ("STATUS", "right"), ("FLAGS", "left"), ("START", "right"),
                          ("DURATION", "right"), ("TIMELINE", "left")):
        grid.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        begin = int(r.offset_ms / total * BAR_WIDTH)
        width = max(1, round(r.duration_ms / total * BAR_WIDTH))
        colour = "red" if r.error else ("yellow" if r.flags not in ("-", "") else
                                        ("cyan" if r.kind == "CLIENT" else "green"))
        bar = Text(" " * begin)
        bar.append("█" * min(width, BAR_WIDTH - begin), style=colour)
        grid.add_row(Text("  " * r.depth + r.label), r.status, r.flags, f"{r.offset_ms:.1f}ms",
                     f"{r.duration_ms:.1f}ms", bar)
    return grid


@app.command()
def explain(  # noqa: PLR0917 (typer maps parameters to options)
    request_id: Annotated[str | None, typer.Argument(
        metavar="[ID]", help="An x-request-id or a trace id (omit with --host for a dry run).")] = None,
    host: Annotated[str | None, typer.Option(
        help="Dry run, no traffic: which rule a request to this host would match, from each caller.")] = None,
    header: Annotated[list[str] | None, typer.Option(
        help="With --host: a request header NAME=VALUE (repeatable), e.g. end-user=jason.")] = None,
    path: Annotated[str, typer.Option(help="With --host: the request path.")] = "/",
    method: Annotated[str, typer.Option(help="With --host: the request method.")] = "GET",
    caller: Annotated[str | None, typer.Option(
        "--from", help="With --host: only this caller workload or app (default: every one).")] = None,
    output: OutputOption = "table",
) -> None:
    """Every hop of one traced request: the rule that routed it, subset and endpoint, fault, attempts,
    timeout, response flags in words with their likely cause, mTLS, and where the time went. With
    --host instead: a dry run against the current config (why is my rule not applied?)."""
    from meshkit.cli.common import _call, _client, _fail  # noqa: PLC0415

    if (request_id is None) == (host is None):
        _fail(2, "error: give a request ID, or --host HOST for a dry run (not both)")
    if host is not None:
        from urllib.parse import urlencode  # noqa: PLC0415

        pairs = [("host", host), ("path", path), ("method", method)]
        pairs += [("header", h if ":" in h else h.replace("=", ":", 1)) for h in header or []]
        if caller:
            pairs.append(("from", caller))
        answer = _call(_client(None).request, "GET", f"explain/route?{urlencode(pairs)}")
        lines = dry_run_lines(answer)
    else:
        answer = _call(_client(None).request, "GET", f"traces/{request_id}/explain")
        lines = explain_lines(answer)
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    for line in lines:
        typer.echo(line)


def dry_run_lines(answer: dict[str, Any]) -> list[str]:
    headers = " ".join(f"{k}={v}" for k, v in answer["headers"].items())
    lines = [f"{answer['method']} {answer['host']}{answer['path']} {headers}".rstrip(), ""]
    for caller in answer["callers"]:
        matched = caller["matched"]
        if matched is None:
            lines.append(f"from {caller['caller']}.{caller['namespace']}: no rule matches")
        else:
            dests = ", ".join(f"{d['cluster']} ({d['weight']:g})" for d in matched["destinations"])
            if matched.get("redirect"):
                dests = f"redirect {matched['redirect']['code']} {matched['redirect']['location']}"
            lines.append(f"from {caller['caller']}.{caller['namespace']}: {matched['source']} → {dests}")
        lines += [f"   {cause}" for cause in caller["causes"]]
    if not answer["callers"]:
        lines.append("no caller: no workload with a sidecar is registered")
    return lines


def explain_lines(answer: dict[str, Any]) -> list[str]:
    lines = [f"request {answer['request_id'] or '-'}  trace {answer['trace_id']}", ""]
    for number, hop in enumerate(answer["hops"], 1):
        lines.append(f"{number}. {hop['from']} → {hop['to']}: {hop['status']}"
                     + (f" {hop['flags']}" if hop["flags"] not in ("-", "") else "")
                     + f" in {hop['duration_ms']:.1f} ms" + ("  (mTLS)" if hop["mtls"] else "  (plaintext)"))
        if hop["route"] is not None:
            name = f" ({hop['route_name']})" if hop["route_name"] else ""
            lines.append(f"   route     {hop['route']}{name}")
        if hop["cluster"] is not None:
            endpoint = f" → {hop['endpoint']}" if hop["endpoint"] else ""
            lines.append(f"   upstream  {hop['cluster']}{endpoint}")
        if hop["fault"]:
            fired = "  FIRED" if hop["fault_fired"] else "  (did not fire)"
            lines.append(f"   fault     {hop['fault']}{fired}")
        if hop["attempts"] is not None:
            lines.append(f"   attempts  {hop['attempts']}"
                         + ("" if hop["timeout_ms"] is None else f", timeout {hop['timeout_ms']} ms"))
        for word in hop["flags_explained"]:
            lines.append(f"   {word['flag']:<9} {word['meaning']}")
            if word["cause"]:
                lines.append(f"   {'':<9} likely: {word['cause']}")
        if hop.get("app_ms") is not None:
            timing = f"   time      app {hop['app_ms']:.1f} ms"
            if hop.get("caller_proxy_and_network_ms") is not None:
                timing += f", caller's proxies and network {hop['caller_proxy_and_network_ms']:.1f} ms"
            lines.append(timing)
        elif not hop["reached_server"]:
            lines.append("   time      the request never reached a sidecar on the other side")
        for side in ("caller", "server"):
            entry = (hop.get("access_log") or {}).get(side)
            if entry:
                lines.append(f"   {side + ' log':<9} {access_line(entry)}")
    lines += ["", f"verdict: {answer['verdict']}"]
    for node, reason in sorted((answer.get("access_log_errors") or {}).items()):
        lines.append(f"(no access-log lines from {node}: {reason})")
    return lines


def access_line(entry: dict[str, Any]) -> str:
    """One access-log line as Envoy's default text format shows it."""
    e = {key: "-" if value is None else value for key, value in entry.items()}
    return (f'[{e.get("start_time")}] "{e.get("method")} {e.get("path")} {e.get("protocol")}" '
            f'{e.get("status")} {e.get("response_flags")} {e.get("bytes_received")} {e.get("bytes_sent")} '
            f'{round(float(entry.get("duration_ms") or 0))} "{e.get("authority")}" '
            f'"{e.get("upstream_host")}" {e.get("upstream_cluster")} ({e.get("direction")})')
