"""Apply-to-effect timeline: when each config revision was stored, compiled, pushed to each proxy,
ACKed (or NACKed) by it, and when that proxy first routed a request with it.

`RolloutTimeline` is pure bookkeeping fed by the push server (compiled, pushed, ACK/NACK) and by the
telemetry scraper (the sidecar's ``meshkit_config_first_request_timestamp_seconds{version=...}``
gauge, which it already exposes on ``/stats/prometheus``: no extra request path cost, no extra
connection). Times are wall-clock seconds (``time.time()``) of the machine that observed them; a
sidecar's first-request time is its own clock.

A revision affects the proxies whose snapshot it changed; the others are listed as unchanged (no push
was needed). Bounded: the last ``keep`` revisions are kept, older ones forgotten.
It must not talk to the network or the store: the API (`timeline_api`) merges the store's record.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

FIRST_REQUEST_METRIC = "meshkit_config_first_request_timestamp_seconds"
KEEP_REVISIONS = 200


@dataclass
class ProxyRollout:
    """One proxy's part in one revision."""

    id: str
    version: str
    compiled: float
    pushed: float | None = None
    acked: float | None = None
    nacked: float | None = None
    reason: str | None = None
    first_request: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "compiled": self.compiled, "pushed": self.pushed,
                "acked": self.acked, "nacked": self.nacked, "reason": self.reason,
                "first_request": self.first_request}


@dataclass
class RevisionRollout:
    """Every proxy a revision reached (``proxies``) or left as it was (``unchanged``)."""

    revision: int
    compiled: float | None = None
    proxies: dict[str, ProxyRollout] = field(default_factory=dict)
    unchanged: set[str] = field(default_factory=set)


class RolloutTimeline:
    """The per-revision rollout record (owned by the push server; read by the timeline API)."""

    def __init__(self, keep: int = KEEP_REVISIONS) -> None:
        self.keep = keep
        self.compiled_revision = -1  # the newest revision a full compile pass finished at
        self._revisions: OrderedDict[int, RevisionRollout] = OrderedDict()
        self._by_version: dict[tuple[str, str], int] = {}  # (proxy id, snapshot version) -> revision

    def _revision(self, revision: int) -> RevisionRollout:
        entry = self._revisions.get(revision)
        if entry is None:
            entry = self._revisions[revision] = RevisionRollout(revision)
            while len(self._revisions) > self.keep:
                old, dropped = self._revisions.popitem(last=False)
                for proxy_id, rollout in dropped.proxies.items():
                    if self._by_version.get((proxy_id, rollout.version)) == old:
                        del self._by_version[(proxy_id, rollout.version)]
        return entry

    # -- fed by the push server -----------------------------------------------------------------

    def compiled(self, revision: int, proxy_id: str, version: str, *, changed: bool, now: float) -> None:
        """The compile at ``revision`` gave ``proxy_id`` snapshot ``version`` (``changed``: a new one)."""
        entry = self._revision(revision)
        if entry.compiled is None:
            entry.compiled = now
        if not changed:
            if proxy_id not in entry.proxies:
                entry.unchanged.add(proxy_id)
            return
        entry.unchanged.discard(proxy_id)
        if proxy_id not in entry.proxies or entry.proxies[proxy_id].version != version:
            entry.proxies[proxy_id] = ProxyRollout(proxy_id, version, now)
        self._by_version[(proxy_id, version)] = revision

    def pass_done(self, revision: int, now: float) -> None:
        """A compile pass over every tracked proxy finished at ``revision``."""
        self.compiled_revision = max(self.compiled_revision, revision)
        entry = self._revision(revision)
        if entry.compiled is None:
            entry.compiled = now

    def _rollout(self, proxy_id: str, version: str) -> ProxyRollout | None:
        revision = self._by_version.get((proxy_id, version))
        entry = self._revisions.get(revision) if revision is not None else None
        return entry.proxies.get(proxy_id) if entry is not None else None

    def pushed(self, proxy_id: str, version: str, now: float) -> None:
        rollout = self._rollout(proxy_id, version)
        if rollout is not None and rollout.pushed is None:
            rollout.pushed = now

    def responded(self, proxy_id: str, version: str, *, ack: bool, reason: str | None, now: float) -> None:
        rollout = self._rollout(proxy_id, version)
        if rollout is None:
            return
        if ack and rollout.acked is None:
            rollout.acked = now
        elif not ack and rollout.nacked is None:
            rollout.nacked, rollout.reason = now, reason

    # -- fed by the telemetry scraper -----------------------------------------------------------

    def scraped(self, proxy_id: str, text: str) -> None:
        """Read the first-request gauge out of one scrape of ``proxy_id``'s metrics."""
        start = text.find(FIRST_REQUEST_METRIC + "{")
        while start >= 0:
            end = text.find("\n", start)
            line = text[start:] if end < 0 else text[start:end]
            version, when = _gauge(line)
            if version is not None and when is not None:
                rollout = self._rollout(proxy_id, version)
                if rollout is not None and rollout.first_request is None:
                    rollout.first_request = when
            start = text.find(FIRST_REQUEST_METRIC + "{", start + 1)

    # -- read by the API ------------------------------------------------------------------------

    def get(self, revision: int) -> RevisionRollout | None:
        return self._revisions.get(revision)


def _gauge(line: str) -> tuple[str | None, float | None]:
    """``name{version="abc"} 1733.5`` -> ("abc", 1733.5); (None, None) when malformed."""
    marker = 'version="'
    at = line.find(marker)
    close = line.find('"', at + len(marker)) if at >= 0 else -1
    brace = line.rfind("}")
    if at < 0 or close < 0 or brace < close:
        return None, None
    try:
        return line[at + len(marker):close], float(line[brace + 1:].split(maxsplit=1)[0])
    except (ValueError, IndexError):
        return None, None


def describe(entry: RevisionRollout | None, revision: int, *, stored: float | None, summary: str,
             proxies: list[dict[str, Any]], compiled_revision: int) -> dict[str, Any]:
    """The timeline document of ``revision`` (``proxies``: the push server's proxy-status rows).

    ``state``: ``pending`` (not compiled yet, or a connected proxy has not answered), ``nacked`` (a
    proxy refused its snapshot), ``synced`` (every affected connected proxy ACKed), or ``superseded``
    (a later revision replaced a snapshot before it was ACKed), or ``unrecorded`` (no compile at this
    revision was seen: it was compiled together with a later one, or before this control plane
    started; the record is in memory).
    """
    status = {row["id"]: row for row in proxies}
    rows = [] if entry is None else [r.to_dict() for r in sorted(entry.proxies.values(), key=lambda r: r.id)]
    state = "synced"
    for row in rows:
        current = status.get(row["id"])
        row["connected"] = bool(current and current["connected"])
        row["superseded"] = bool(current and row["acked"] is None and row["nacked"] is None
                                 and current["latest"] != row["version"])
        if row["nacked"] is not None:
            state = "nacked"
        elif row["acked"] is None and row["connected"] and not row["superseded"] and state != "nacked":
            state = "pending"
    if compiled_revision < revision and state != "nacked":
        state = "pending"
    elif entry is None:
        state = "unrecorded"  # compiled together with a later revision, or before this process started
    if state == "synced" and any(r["superseded"] for r in rows):
        state = "superseded"
    return {"revision": revision, "stored": stored, "summary": summary, "state": state,
            "compiled": None if entry is None else entry.compiled, "proxies": rows,
            "unchanged": [] if entry is None else sorted(entry.unchanged)}
