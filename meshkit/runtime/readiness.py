"""Probes the local mesh waits on: the control plane answers, an HTTP health URL is 200, a TCP app's port
accepts a connection, proxies ACKed.

Each probe returns a bool and never raises for a peer that is not there (yet), so a caller can
poll it until a deadline; `unsynced` explains which proxies are not synced and why.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from meshkit.control.client import ApiError, ControlClient, ControlUnreachable


def control_answers(client: ControlClient) -> bool:
    try:
        client.healthz()
    except (ControlUnreachable, ApiError):
        return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def tcp_open(host: str, port: int) -> bool:
    """Something accepts a TCP connection on ``host:port`` (an app with no HTTP, such as tcp-echo,
    as a Kubernetes ``tcpSocket`` probe); the connection is closed at once, having sent nothing."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def all_synced(client: ControlClient, proxy_ids: list[str]) -> bool:
    """Every proxy of ``proxy_ids`` is connected and has ACKed its latest snapshot."""
    try:
        rows = client.proxy_status()
    except (ControlUnreachable, ApiError):
        return False
    proxies = rows.get("proxies", rows) if isinstance(rows, dict) else rows
    synced = {row.get("id") for row in proxies if row.get("status") == "SYNCED"}
    return all(pid in synced for pid in proxy_ids)


def everything_synced(client: ControlClient, within: float) -> bool:
    """No recompilation pending and every connected proxy SYNCED (the control plane waits ``within`` s)."""
    try:
        answer = client.proxy_status(wait=max(0.0, min(within, 60.0)))
    except (ControlUnreachable, ApiError):
        return False
    return bool(answer.get("synced")) and all(p.get("status") == "SYNCED" for p in answer.get("proxies", [])
                                              if p.get("connected", True))


def unsynced(client: ControlClient, proxy_ids: list[str]) -> str:
    """Which proxies have not ACKed, and why (NACK reason, compile error, never connected)."""
    try:
        rows = {row.get("id"): row for row in client.proxy_status().get("proxies", [])}
    except (ControlUnreachable, ApiError) as error:
        return f"(the control plane did not answer: {error})"
    missing = []
    for pid in proxy_ids:
        row = rows.get(pid)
        if row is None:
            missing.append(f"{pid} never connected")
        elif row.get("status") != "SYNCED":
            why = row.get("compile_error") or row.get("reason") or ""
            missing.append(f"{pid} {row.get('status')}" + (f" ({why})" if why else ""))
    return "; ".join(missing) or "(all synced now)"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
