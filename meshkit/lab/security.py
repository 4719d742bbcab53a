"""Helpers for the security labs (06 mTLS, 07 authorization): certificates, the wire, who may call whom.

What a learner looks at: `certificate(mesh, "reviews-v1-0")` (a sidecar's workload certificate as
a readable table), `rotate(mesh, "reviews-v1-0")` (renew it now: old and new serial and expiry)
and `watch_rotation(...)` (all three from `meshkit.lab.certs`, re-exported here),
`wire(mesh, "sleep-v1-0", "reviews-v1-0")` (the first bytes between two workloads, captured by
`meshkit.runtime.tap`: TLS records or plaintext HTTP), `exchange(mesh, ...)` / `access(mesh, ...)`
(real requests from the ``sleep`` and ``legacy`` clients, as a table of answers). The
``require_*`` functions are the labs' checks: each reads the mesh's real config, traffic and
telemetry and raises `CheckFailed` saying what is missing.

It must not: reach into the sidecar's or the control plane's internals (it reads their HTTP
pages and APIs), keep module-level state, or wait unboundedly (every wait has a limit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.lab.certs import (
    Certificate,
    Rotation,
    RotationWatch,
    certificate,
    certificates,
    instance_row,
    mtls_counters,
    require_rotation_without_errors,
    rotate,
    watch_rotation,
)
from meshkit.lab.checks import CheckFailed, expect, require_rule, window_since, window_since_change
from meshkit.lab.display import LabError, Table
from meshkit.lab.mesh import Mesh
from meshkit.runtime import tap

WIRE_SECONDS = 10.0
MAX_CALLS = 50
DENIED_BODY = "RBAC: access denied"


# -- the wire ---------------------------------------------------------------------------------


def connections(mesh: Mesh, service: str) -> Table:
    """Inbound connection counters of every sidecar of ``service``: what each accepted and refused."""
    names = ("mtls_accepted", "plaintext_accepted", "plaintext_refused")
    rows = [{"instance": w["name"], **{n: mtls_counters(mesh, w["name"]).get(n, 0) for n in names}}
            for w in mesh.workloads() if w.get("service") == service and w.get("admin_port")]
    if not rows:
        raise LabError(f"service {service!r}: no instance with a sidecar")
    return Table(rows, ["instance", *names], title=f"inbound connections of {service}'s sidecars")


def _run(coro: Any, timeout: float) -> Any:
    """Run a coroutine to completion in its own thread (a notebook's kernel already runs a loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


@dataclass
class Wire:
    """The first bytes of one connection between two workloads, each way."""

    source: str
    target: str
    sent: bytes
    received: bytes
    statuses: list[int] = field(default_factory=list)

    @property
    def encrypted(self) -> bool:
        """The caller opened with a TLS handshake record (0x16 0x03): nothing readable follows."""
        return len(self.sent) >= 2 and self.sent[0] == 0x16 and self.sent[1] == 0x03

    @property
    def plaintext(self) -> bool:
        return tap.describe(self.sent).startswith("plaintext HTTP")

    def verdict(self) -> str:
        if self.encrypted:
            return f"{self.source} → {self.target}: mutual TLS — the request is encrypted on the wire"
        if self.plaintext and not self.received:
            return (f"{self.source} → {self.target}: PLAINTEXT, and no answer came back — "
                    "the sidecar refused the connection")
        if self.plaintext:
            return f"{self.source} → {self.target}: PLAINTEXT — anyone on the path can read it"
        return f"{self.source} → {self.target}: {tap.describe(self.sent)}"

    def lines(self) -> list[str]:
        out = [self.verdict()]
        for title, data in ((f"{self.source} → {self.target}", self.sent),
                            (f"{self.target} → {self.source}", self.received)):
            out.append(f"{title}: first {len(data)} bytes: {tap.describe(data)}")
            out += [f"  {line}" for line in tap.hexdump(data)]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1b7f3b" if self.encrypted else "#b00020"
        body = html.escape("\n".join(self.lines()[1:]))
        return (f'<div><b style="color:{colour}">{html.escape(self.verdict())}</b>'
                f'<pre style="background:#f7f7f7;padding:6px;font-size:12px">{body}</pre></div>')


def wire(mesh: Mesh, source: str, target: str, *, path: str = "/health", max_bytes: int = 64,
         seconds: float = WIRE_SECONDS) -> Wire:
    """Capture the first bytes ``source`` sends to instance ``target`` (through a short-lived relay).

    A source with a sidecar sends through it (mTLS when the mesh uses it); a source without one
    (``legacy``) sends plaintext straight to the target's inbound port, as that client does.
    """
    src = instance_row(mesh, source)
    dst = instance_row(mesh, target)
    if not dst.get("inbound_port"):
        raise LabError(f"target {dst['name']!r} has no sidecar: there is no mesh hop to watch")
    if not 0 < seconds <= 30:
        raise LabError(f"seconds: expected (0, 30], got {seconds!r}")
    coro = tap.tap(mesh.control_url, src.get("outbound_proxy") or None, dst["name"], path=path,
                   max_bytes=max_bytes, seconds=seconds, token=getattr(mesh.client, "token", None))
    try:
        capture = _run(coro, seconds + 40.0)
    except (ValueError, concurrent.futures.TimeoutError) as exc:
        raise LabError(f"wire {src['name']} → {dst['name']}: {exc or 'timed out'}") from None
    if not capture.connections:
        raise LabError(f"wire {src['name']} → {dst['name']}: no connection reached the target within "
                       f"{seconds:g} s ({capture.requests_sent} requests sent)")
    return Wire(src["name"], dst["name"], bytes(capture.client_to_server), bytes(capture.server_to_client),
                list(capture.statuses))


# -- requests from the clients --------------------------------------------------------------------


def call(mesh: Mesh, from_: str, url: str, *, method: str = "GET",
         headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """One request from workload ``from_`` (through its sidecar, if it has one): (status, body).

    Status 0 means no HTTP answer at all: the connection was refused or reset (e.g. a STRICT
    sidecar refusing plaintext).
    """
    result = mesh.curl(from_, url, method=method, headers=dict(headers or {}), timeout=10.0)
    if result.status is None:
        return 0, result.error or "no answer"
    return int(result.status), result.text


def _verdict(status: int) -> str:
    if status == 0:
        return "refused (no HTTP answer)"
    if status == 403:
        return "403 denied"
    return str(status)


@dataclass
class Calls:
    """Answers to real requests, per (client, URL)."""

    answers: dict[tuple[str, str], list[int]]

    def statuses(self, client: str, url: str | None = None) -> list[int]:
        return [s for (c, u), got in self.answers.items() if c == client and url in (None, u) for s in got]

    def rows(self) -> list[dict[str, str]]:
        rows = []
        for (client, url), got in self.answers.items():
            counts: dict[str, int] = {}
            for status in got:
                counts[_verdict(status)] = counts.get(_verdict(status), 0) + 1
            rows.append({"from": client, "to": url,
                         "answers": ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items())})
        return rows

    def table(self) -> Table:
        return Table(self.rows(), ["from", "to", "answers"], title="real requests and their answers")

    def __str__(self) -> str:
        return str(self.table())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def exchange(mesh: Mesh, urls: Sequence[str] = ("http://reviews:9080/reviews/0",),
             clients: Sequence[str] = ("sleep", "legacy"), *, count: int = 8,
             interval: float = 0.4) -> Calls:
    """``count`` requests from each client to each URL, spread over ``count * interval`` seconds."""
    if not 1 <= count <= MAX_CALLS:
        raise LabError(f"count: expected 1..{MAX_CALLS}, got {count!r}")
    if not 0 <= interval <= 2:
        raise LabError(f"interval: expected 0..2 seconds, got {interval!r}")
    answers: dict[tuple[str, str], list[int]] = {(c, u): [] for c in clients for u in urls}
    for round_ in range(count):
        for client in clients:
            for url in urls:
                answers[(client, url)].append(call(mesh, client, url)[0])
        if round_ < count - 1:
            time.sleep(interval)
    return Calls(answers)


def access(mesh: Mesh, calls: Mapping[str, Iterable[str]]) -> Calls:
    """One request per (client, URL): ``{"sleep": ["http://details:9080/details/0"], ...}``."""
    return Calls({(client, url): [call(mesh, client, url)[0]]
                  for client, urls in calls.items() for url in urls})


# -- checks --------------------------------------------------------------------------------------


def peer_authentication_mode(mesh: Mesh, namespace: str = "default") -> str:
    """The namespace-wide PeerAuthentication mode (no selector), or "" when there is none."""
    rules = mesh.get("PeerAuthentication", namespace=namespace) or []
    for rule in rules if isinstance(rules, list) else [rules]:
        spec = rule.get("spec") or {}
        if not spec.get("selector"):
            return str((spec.get("mtls") or {}).get("mode") or "UNSET")
    return ""


def require_namespace_mtls(mesh: Mesh, mode: str, namespace: str = "default") -> None:
    actual = peer_authentication_mode(mesh, namespace)
    expect(actual == mode, f"namespace {namespace!r} has "
                           + (f"PeerAuthentication mode {actual}" if actual else "no PeerAuthentication")
                           + f"; the step wants mode {mode} for the whole namespace (no selector)")


def inbound_by_security(mesh: Mesh, service: str, window: float | None = None) -> dict[str, float]:
    """Requests ``service``'s sidecars answered 200, split into "mtls" and "plaintext" (telemetry)."""
    answer = mesh.telemetry(window or window_since_change(mesh), destination=service, reporter="destination")
    split = {"mtls": 0.0, "plaintext": 0.0}
    for edge in answer.get("edges", []):
        ok = float(edge.get("codes", {}).get("200", 0))
        split["mtls" if edge.get("mtls") else "plaintext"] += ok
    return split


def require_mtls_and_plaintext(mesh: Mesh, service: str, min_each: int = 3) -> dict[str, float]:
    """Since the last change, ``service`` answered both mTLS and plaintext requests (PERMISSIVE)."""
    split = inbound_by_security(mesh, service)
    expect(split["mtls"] >= min_each and split["plaintext"] >= min_each,
           f"since your last change {service} answered {split['mtls']:.0f} mTLS and {split['plaintext']:.0f} "
           f"plaintext requests (the step wants at least {min_each} of each): send traffic from both "
           "clients, e.g. security.exchange(mesh)")
    return split


def require_reaches(mesh: Mesh, from_: str, url: str, status: int = 200) -> None:
    got, body = call(mesh, from_, url)
    expect(got == status,
           f"{from_} → {url} answered {_verdict(got)} ({body[:80]!r}); the step wants {status}")


def _refused_count(mesh: Mesh, service: str) -> int:
    return sum(mtls_counters(mesh, w["name"]).get("plaintext_refused", 0)
               for w in mesh.workloads() if w.get("service") == service and w.get("admin_port"))


def require_refused(mesh: Mesh, from_: str, url: str, service: str) -> None:
    """``from_``'s plaintext request to ``url`` got no HTTP answer, and a sidecar of ``service``
    counted the refusal (its ``plaintext_refused`` counter went up)."""
    before = _refused_count(mesh, service)
    got, body = call(mesh, from_, url)
    expect(got == 0, f"{from_} → {url} was answered {_verdict(got)} ({body[:60]!r}); under STRICT a "
                     "plaintext client must be refused")
    after = _refused_count(mesh, service)
    expect(after > before, f"no sidecar of {service} counted a refused plaintext connection "
                           f"(plaintext_refused stayed {after}); the request failed for another reason")


def require_all_mtls(mesh: Mesh, min_requests: int = 10) -> None:
    """Since the last change, every hop between workloads carried mutual TLS, with traffic on it."""
    edges = mesh.telemetry(window_since_change(mesh), reporter="destination").get("edges", [])
    total = sum(float(e.get("requests", 0)) for e in edges)
    expect(total >= min_requests,
           f"{total:.0f} requests crossed the mesh since your last change (at least {min_requests} "
           "needed): send some, e.g. mesh.load(rps=10, duration=5).wait()")
    plain = sorted({f"{e['source_workload']} → {e['destination_service']}"
                    for e in edges if not e.get("mtls")})
    expect(not plain, f"these hops were not mutual TLS: {', '.join(plain)}")


def denials(mesh: Mesh, window: float | None = None) -> dict[str, float]:
    """403 answers per destination service, as the callees' sidecars counted them, over ``window``
    seconds or (by default) since the last config change.

    Unlike traffic shares, denials are counted from the change itself, without the scrape
    settling time: a 403 answered just before a change came from an older policy, which the
    labs' steps never rely on, and counting from the change keeps the checks quick."""
    answer = mesh.telemetry(window or window_since(mesh.last_change()), reporter="destination")
    counts: dict[str, float] = {}
    for edge in answer.get("edges", []):
        denied = float(edge.get("codes", {}).get("403", 0))
        if denied:
            service = edge.get("destination_service", "?")
            counts[service] = counts.get(service, 0.0) + denied
    return counts


def require_denied(mesh: Mesh, service: str, min_count: int = 1) -> None:
    got = denials(mesh)
    expect(got.get(service, 0.0) >= min_count,
           f"{service}'s sidecar answered {got.get(service, 0.0):.0f} requests with 403 since your last "
           f"change (denials by service: {_counts(got)}); the step wants at least {min_count}")


def require_no_denials(mesh: Mesh, services: Iterable[str]) -> None:
    got = denials(mesh)
    denied = {s: n for s, n in got.items() if s in set(services)}
    expect(not denied, f"still denied since your last change: {_counts(denied)} (403 RBAC: access denied)")


def _counts(counts: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items())) or "none"


def require_policy(mesh: Mesh, name: str, namespace: str = "default") -> dict[str, Any]:
    return dict(require_rule(mesh, "AuthorizationPolicy", name, namespace))


__all__ = [
    "DENIED_BODY",
    "Calls",
    "Certificate",
    "CheckFailed",
    "Rotation",
    "RotationWatch",
    "Wire",
    "access",
    "call",
    "certificate",
    "certificates",
    "connections",
    "denials",
    "exchange",
    "inbound_by_security",
    "mtls_counters",
    "peer_authentication_mode",
    "require_all_mtls",
    "require_denied",
    "require_mtls_and_plaintext",
    "require_namespace_mtls",
    "require_no_denials",
    "require_policy",
    "require_reaches",
    "require_refused",
    "require_rotation_without_errors",
    "rotate",
    "watch_rotation",
    "wire",
]
