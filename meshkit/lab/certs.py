"""Workload certificates in the labs: read them from sidecars, rotate one now, watch the scheduled rotation.

`certificate(mesh, "reviews-v1-0")` is a sidecar's workload certificate as a readable table (its
admin ``/certs`` page); `certificates(mesh)` one row per sidecar; `rotate(mesh, instance)` renews
one now through the sidecar's admin ``POST /certs/rotate`` and shows old and new serial and
expiry; `watch_rotation(...)` is a bounded look at a scheduled rotation; and
`require_rotation_without_errors` is lab 06's check that a rotation under load lost nothing.
`meshkit.lab.security` re-exports all of it (the labs use ``security.rotate`` etc.).

It must not: reach into the sidecar's internals (it uses its admin HTTP pages), keep module-level
state, or wait unboundedly (every wait has a limit).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meshkit.lab.checks import expect, window_since
from meshkit.lab.display import LabError, Table
from meshkit.lab.mesh import Mesh
from meshkit.runtime.catalog import refers_to, workload_of

__all__ = [
    "ADMIN_TIMEOUT",
    "MAX_WATCH",
    "ROTATE_TIMEOUT",
    "Certificate",
    "Rotation",
    "RotationWatch",
    "admin_page",
    "certificate",
    "certificates",
    "instance_row",
    "mtls_counters",
    "require_rotation_without_errors",
    "rotate",
    "watch_rotation",
]

ADMIN_TIMEOUT = 5.0
ROTATE_TIMEOUT = 30.0  # the sidecar gives up on the CA after 10 s; this covers a loaded machine
MAX_WATCH = 60.0


# -- reading sidecars ---------------------------------------------------------------------------


def instance_row(mesh: Mesh, instance: str) -> dict[str, Any]:
    rows = mesh.workloads()
    # an instance (sleep-v1-0), a workload (sleep-v1: its first instance) or a service (sleep)
    found = next((w for w in rows if refers_to(instance, w)), None)
    if found is None:
        known = ", ".join(w["name"] for w in rows) or "none (is this a local mesh?)"
        raise LabError(f"instance {instance!r}: no such workload instance (known: {known})")
    return found


def admin_page(mesh: Mesh, instance: str, page: str) -> dict[str, Any]:
    row = instance_row(mesh, instance)
    if not row.get("admin_port"):
        raise LabError(f"instance {row['name']!r} has no sidecar (it runs outside the mesh), "
                       "so it has no workload certificate and no admin page")
    url = f"http://127.0.0.1:{row['admin_port']}{page}"
    try:
        with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise LabError(f"instance {row['name']!r}: its sidecar's admin page {page} did not answer ({exc})") \
            from None
    return answer


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Certificate:
    """One sidecar's workload certificate, as its admin ``/certs`` page describes it."""

    instance: str
    identity: str
    serial: str
    issuer: str
    not_before: str
    not_after: str
    seconds_left: float
    seconds_until_rotation: float
    rotate_at: str
    issued: int
    root_subject: str
    installed_at: str = ""  # when the sidecar started using it (ISO 8601, UTC)

    @property
    def lifetime(self) -> float:
        span = datetime.fromisoformat(self.not_after) - datetime.fromisoformat(self.not_before)
        return span.total_seconds()

    def rows(self) -> list[dict[str, str]]:
        namespace, account = _namespace_and_account(self.identity)
        return [
            {"field": "workload", "value": self.instance},
            {"field": "SPIFFE ID (URI SAN)", "value": self.identity},
            {"field": "namespace / service account", "value": f"{namespace} / {account}"},
            {"field": "subject", "value": "(empty: the identity is the SAN, as in Istio)"},
            {"field": "issuer", "value": self.issuer},
            {"field": "serial", "value": self.serial},
            {"field": "valid from", "value": _when(self.not_before)},
            {"field": "valid until",
             "value": f"{_when(self.not_after)} ({_duration(self.seconds_left)} left)"},
            {"field": "lifetime (TTL)", "value": _duration(self.lifetime)},
            {"field": "rotates at", "value": f"{_when(self.rotate_at)} (in "
                                             f"{_duration(self.seconds_until_rotation)}, half the lifetime)"},
            {"field": "certificates issued", "value": str(self.issued)},
            {"field": "trusted root", "value": self.root_subject},
        ]

    def table(self) -> Table:
        return Table(self.rows(), ["field", "value"], title=f"workload certificate of {self.instance}")

    def __str__(self) -> str:
        return str(self.table())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def _namespace_and_account(identity: str) -> tuple[str, str]:
    parts = identity.removeprefix("spiffe://").split("/")
    fields = dict(zip(parts[1::2], parts[2::2], strict=False))
    return fields.get("ns", "?"), fields.get("sa", "?")


def certificate(mesh: Mesh, instance: str) -> Certificate:
    """The workload certificate ``instance``'s sidecar uses now (LabError if it has none yet)."""
    doc = admin_page(mesh, instance, "/certs")
    name = instance_row(mesh, instance)["name"]
    if not doc.get("ready") or not doc.get("chain"):
        why = doc.get("reason") or doc.get("last_error") or "no certificate yet"
        raise LabError(f"instance {name!r}: no workload certificate ({why})")
    leaf = doc["chain"][0]
    root = (doc.get("root") or [{}])[0]
    identity = leaf.get("spiffe_id") or doc.get("identity") or ""
    return Certificate(name, identity, leaf["serial"], leaf["issuer"], leaf["not_before"],
                       leaf["not_after"], float(leaf["seconds_left"]),
                       float(doc.get("seconds_until_rotation", 0.0)), doc.get("rotate_at", leaf["not_after"]),
                       int(doc.get("certificates_issued", 0)), root.get("subject", "?"),
                       doc.get("installed_at", ""))


def certificates(mesh: Mesh) -> Table:
    """Every sidecar's certificate, one row each: identity, serial, time left, next rotation."""
    rows = []
    for w in mesh.workloads():
        if not w.get("admin_port"):
            rows.append({"instance": w["name"], "SPIFFE ID": "(no sidecar: no identity)", "serial": "-",
                         "expires in": "-", "rotates in": "-"})
            continue
        cert = certificate(mesh, w["name"])
        rows.append({"instance": cert.instance, "SPIFFE ID": cert.identity, "serial": cert.serial[:12] + "…",
                     "expires in": _duration(cert.seconds_left),
                     "rotates in": _duration(cert.seconds_until_rotation)})
    return Table(rows, ["instance", "SPIFFE ID", "serial", "expires in", "rotates in"],
                 title="workload certificates (one per sidecar)")


def mtls_counters(mesh: Mesh, instance: str) -> dict[str, int]:
    """The inbound connection counters of ``instance``'s sidecar (mtls_accepted, plaintext_refused...)."""
    counters = admin_page(mesh, instance, "/stats").get("mtls") or {}
    return {str(k): int(v) for k, v in counters.items()}


# -- rotation -----------------------------------------------------------------------------------


@dataclass
class RotationWatch:
    """What a bounded watch of one sidecar's certificate saw (serials in order, traffic meanwhile)."""

    instance: str
    serials: list[str]
    watched: float
    next_rotation: float
    lifetime: float
    statuses: list[int]

    @property
    def rotated(self) -> bool:
        return len(self.serials) > 1

    def __str__(self) -> str:
        ok = sum(1 for s in self.statuses if s == 200)
        traffic = f"; meanwhile {ok}/{len(self.statuses)} page visits answered 200" if self.statuses else ""
        if self.rotated:
            chain = " → ".join(s[:12] + "…" for s in self.serials)
            return (f"{self.instance}: certificate rotated {len(self.serials) - 1} time(s) in "
                    f"{self.watched:.0f} s (serials {chain}){traffic}")
        due = (f"the next rotation is due in {_duration(self.next_rotation)}, at half of the certificate's "
               f"{_duration(self.lifetime)} lifetime")
        if not self.statuses:  # returned at once: the rotation lies beyond the watch
            return (f"{self.instance}: {due} — later than this watch, so there is nothing to wait for "
                    "(`meshkit up --cert-ttl 30s` starts a mesh whose certificates rotate every 15 s)")
        return f"{self.instance}: no rotation during the {self.watched:.0f} s watched; {due}{traffic}"

    __repr__ = __str__


@dataclass
class Rotation:
    """One on-demand rotation: the certificate before and after (from the sidecar's answer)."""

    instance: str
    identity: str
    old: dict[str, str]
    new: dict[str, str]
    seconds: float

    @property
    def rotated(self) -> bool:
        return self.old.get("serial") != self.new.get("serial")

    def rows(self) -> list[dict[str, str]]:
        rows = [{"": "serial", "before": self.old["serial"], "after": self.new["serial"]}]
        for key, title in (("not_before", "valid from"), ("not_after", "valid until"),
                           ("rotate_at", "next scheduled rotation")):
            if key in self.old and key in self.new:
                rows.append({"": title, "before": _when(self.old[key]), "after": _when(self.new[key])})
        return rows

    def table(self) -> Table:
        title = f"{self.instance} ({self.identity}): new key and certificate in {self.seconds:.2f} s"
        return Table(self.rows(), ["", "before", "after"], title=title)

    def __str__(self) -> str:
        return str(self.table())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def rotate(mesh: Mesh, instance: str) -> Rotation:
    """Renew ``instance``'s workload certificate now (its sidecar's admin ``POST /certs/rotate``).

    The sidecar makes a new key, has the CA sign it, checks the answer and switches: new
    connections get the new certificate, open ones finish on the old one. LabError when the
    instance has no sidecar, or the sidecar refused (no mTLS, CA unreachable: the old
    certificate then keeps serving, and the message says so).
    """
    row = instance_row(mesh, instance)
    if not row.get("admin_port"):
        raise LabError(f"instance {row['name']!r} has no sidecar (it runs outside the mesh), "
                       "so it has no workload certificate to rotate")
    url = f"http://127.0.0.1:{row['admin_port']}/certs/rotate"
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=ROTATE_TIMEOUT) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        try:
            reason = json.loads(body).get("error") or body
        except (ValueError, AttributeError):
            reason = body
        raise LabError(f"instance {row['name']!r}: rotation refused (HTTP {error.code}): {reason.strip()}") \
            from None
    except (OSError, ValueError) as exc:
        raise LabError(f"instance {row['name']!r}: its sidecar's admin endpoint /certs/rotate did not "
                       f"answer ({exc})") from None
    return Rotation(row["name"], str(doc.get("identity", "")), dict(doc["old"]), dict(doc["new"]),
                    float(doc.get("seconds", 0.0)))


def watch_rotation(mesh: Mesh, instance: str, *, seconds: float = 20.0,
                   visit_every: float = 1.0) -> RotationWatch:
    """Watch ``instance``'s certificate for up to ``seconds`` while visiting the product page.

    Returns at once when the next rotation is due later than the watch would last (nothing to
    see), and shortly after the first rotation otherwise.
    """
    if not 0 < seconds <= MAX_WATCH:
        raise LabError(f"seconds: expected (0, {MAX_WATCH:g}], got {seconds!r}")
    first = certificate(mesh, instance)
    serials = [first.serial]
    statuses: list[int] = []
    began = time.monotonic()
    if first.seconds_until_rotation <= seconds:
        deadline = began + seconds
        while time.monotonic() < deadline:
            statuses.append(mesh.visit(timeout=5.0).status)
            serial = certificate(mesh, instance).serial
            if serial != serials[-1]:
                serials.append(serial)
                break
            time.sleep(visit_every)
    return RotationWatch(first.instance, serials, time.monotonic() - began,
                         certificate(mesh, instance).seconds_until_rotation, first.lifetime, statuses)


# -- the check --------------------------------------------------------------------------------


def require_rotation_without_errors(mesh: Mesh, instance: str, before: str, service: str,
                                    min_requests: int = 10) -> Certificate:
    """``instance``'s certificate is no longer serial ``before``, and since it was installed
    ``service`` got at least ``min_requests`` requests, none failed (no 5xx, no answer-less
    failure, no response flag such as UF or URX, as the callers' sidecars saw them), some
    reached ``instance``'s workload, and every hop into ``service`` was mutual TLS."""
    cert = certificate(mesh, instance)
    expect(cert.serial != before,
           f"{cert.instance} still uses the certificate with serial {before[:16]}…: rotate it while "
           f"traffic flows, e.g. security.rotate(mesh, {cert.instance!r}) during a mesh.load(...)")
    installed = datetime.fromisoformat(cert.installed_at).timestamp() if cert.installed_at else time.time()
    window = window_since(installed)
    calls = mesh.telemetry(window, destination=service, reporter="source").get("edges", [])
    total = sum(float(e.get("requests", 0)) for e in calls)
    expect(total >= min_requests,
           f"{service} got {total:.0f} requests since {cert.instance}'s rotation {window:.0f} s ago "
           f"(at least {min_requests} needed): rotate while a load runs, e.g. "
           "load = mesh.load(rps=10, duration=8), then security.rotate(...), then load.wait()")
    failed = []
    for e in calls:
        bad = {code: n for code, n in e.get("codes", {}).items() if code.startswith("5") or code == "0"}
        if bad or e.get("flags"):
            failed.append(f"{e.get('source_workload')} → {service}-{e.get('destination_version')}: "
                          f"{_counts({**bad, **e.get('flags', {})})}")
    expect(not failed, "requests failed since the rotation (status or response flag, and how many): "
                       + "; ".join(failed))
    served = mesh.telemetry(window, destination=service, reporter="destination").get("edges", [])
    workload = workload_of(cert.instance)
    reached = sum(float(e.get("requests", 0)) for e in served if e.get("destination_workload") == workload)
    expect(reached > 0, f"no request reached {workload} since its rotation ({total:.0f} went to other "
                        f"versions of {service}): send more traffic")
    plain = sorted({f"{e['source_workload']} → {e.get('destination_workload')}" for e in served
                    if not e.get("mtls")})
    expect(not plain, f"since the rotation these hops into {service} were not mutual TLS: {', '.join(plain)}")
    return cert


def _counts(counts: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items())) or "none"
