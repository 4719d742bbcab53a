"""`connect()` and `Mesh`: the learner's handle on a running mesh (local, or any control plane URL).

`Mesh` wraps `meshkit.control.client.ControlClient` for config (apply/get/delete/analyze/history/
rollback), `meshkit.runtime.local.LocalMesh` for the local processes (status, deploy, scale, kill, restart),
`meshkit.runtime.curl` for one request from a workload (`curl`) and
`meshkit.runtime.load.LoadGenerator` for background traffic. Refusals become `LabError`, whose
messages name the resource and the field, and which a notebook shows without a traceback.
"""

from __future__ import annotations

import html
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import yaml

from meshkit.control.client import ApiError, ControlClient, ControlUnreachable
from meshkit.lab.display import BrowserPage, Findings, LabError, Rule, Table, show_errors_as_html
from meshkit.runtime import catalog
from meshkit.runtime.curl import CurlError, CurlResult
from meshkit.runtime.curl import curl as send_curl
from meshkit.runtime.egress_gate import mesh_egress_gate
from meshkit.runtime.load import LoadGenerator, parse_users
from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.manifests import check_local, touches_workloads
from meshkit.runtime.state import StateDir

if TYPE_CHECKING:
    from meshkit.lab.console import ConsolePage
    from meshkit.lab.steps import Lab

__all__ = ["MAX_LOAD_SECONDS", "SETTLE", "SYNC_WAIT", "ApplyResult", "LoadHandle", "Mesh", "PageVisit",
           "connect"]

Applyable = Any  # YAML text, a dict / Rule, a config model with to_dict(), or a list of those
MAX_LOAD_SECONDS = 600.0
SYNC_WAIT = 5.0  # seconds apply/delete/rollback wait for every sidecar to ACK
SETTLE = 1.5  # seconds after a change made elsewhere whose scrapes may still hold requests answered before it


def _documents(value: Applyable) -> list[dict[str, Any]]:
    """Everything `apply` accepts, as a list of plain resource dicts; LabError for what it is not."""
    if isinstance(value, list | tuple):
        return [doc for item in value for doc in _documents(item)]
    if isinstance(value, str):
        try:
            docs = [d for d in yaml.safe_load_all(value) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the text"
            raise LabError(f"The YAML does not parse at {where}: {getattr(exc, 'problem', exc)}") from None
        if not docs:
            raise LabError("The YAML holds no resources (only empty documents).")
        return _documents(docs)
    if isinstance(value, dict):
        return [dict(value)]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return [to_dict()]
    raise LabError(f"Cannot apply a {type(value).__name__}: pass YAML text, a rule (dict) or a list of them.")


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return str(doc.get("kind")), str(meta.get("namespace", "default")), str(meta.get("name"))


def _finding(message: Any) -> str:
    """One message of an apply's answer: ``error [MK0101] (resource field) text [IST0101]`` (an Error
    Istio's API server accepts, applied and reported) or ``warning [...] ...``."""
    if not isinstance(message, dict):
        return f"warning: {message}"
    where = " ".join(part for part in (message.get("resource"), message.get("field")) if part)
    istio = f" [{message['istio']}]" if message.get("istio") else ""
    return (f"{str(message.get('severity', 'Warning')).lower()} [{message.get('code', '')}] "
            f"({where}) {message.get('message', '')}{istio}")


class ApplyResult:
    """What `Mesh.apply` did: the new revision and one line per resource."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.revision = int(answer.get("revision", 0))
        self.changed = bool(answer.get("changed", False))
        self.results = list(answer.get("results", []))
        self.warnings = list(answer.get("warnings", []))

    def __str__(self) -> str:
        lines = [f"{r['resource']} {r['action']}" for r in self.results]
        lines.append(f"revision {self.revision}" + ("" if self.changed else " (nothing changed)"))
        lines += [_finding(w) for w in self.warnings]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "<br>".join(f"✔ {html.escape(line)}" for line in str(self).splitlines())


class LoadHandle:
    """Background traffic through the ingress; `stop()` ends it early and returns its summary."""

    def __init__(self, generator: LoadGenerator, on_end: Callable[[], object] | None = None) -> None:
        self.generator = generator
        self._on_end = on_end  # once, when stopped or waited for: the sample that ends the count

    def running(self) -> bool:
        return self.generator.running()

    def stop(self) -> dict[str, Any]:
        summary = self.generator.stop()
        end, self._on_end = self._on_end, None
        if end is not None:
            end()
        return summary

    def wait(self, timeout: float = MAX_LOAD_SECONDS) -> dict[str, Any]:
        """Block until the load has run its duration (bounded by ``timeout``), then its summary."""
        deadline = time.monotonic() + timeout
        while self.generator.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.stop()

    @property
    def stats(self) -> dict[str, Any]:
        return self.generator.stats

    def __str__(self) -> str:
        s = self.stats
        state = "running" if self.running() else "stopped"
        return (f"load {state}: {s['completed']} requests, {s['rps']} req/s, codes {s['codes']}, "
                f"errors {s['error_rate']:.1%}, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")

    __repr__ = __str__


class PageVisit:
    """One real request through the ingress: status, time taken and the page's text."""

    NOTICE_MARKERS = ("unavailable", "Sorry", "error")

    def __init__(self, path: str, user: str | None, status: int, seconds: float, text: str) -> None:
        self.path = path
        self.user = user
        self.status = status
        self.seconds = seconds
        self.text = text

    def says(self, words: str) -> bool:
        return words in self.text

    def notices(self) -> list[str]:
        """The page's error notices (Bookinfo's "Sorry, ... unavailable" lines), tags stripped."""
        body = re.sub(r"(?is)<(style|script)\b.*?</\1>", " ", self.text)
        parts = (part.strip() for part in re.split(r"<[^>]+>", body))
        found = [p for p in parts if p and any(m in p for m in self.NOTICE_MARKERS)]
        return list(dict.fromkeys(found))[:5]

    def __str__(self) -> str:
        who = f" as {self.user}" if self.user else ""
        found = "; ".join(self.notices()) or "no error notices on the page"
        return f"GET {self.path}{who}: HTTP {self.status} in {self.seconds:.2f} s — {found}"

    __repr__ = __str__


class Mesh:
    """A running mesh: its control plane (always) and its local processes (when started here)."""

    def __init__(self, control_url: str, *, ingress_url: str | None = None,
                 local: LocalMesh | None = None, client: ControlClient | None = None,
                 cluster: str | None = None) -> None:
        self.control_url = control_url.rstrip("/")
        self.ingress_url = ingress_url.rstrip("/") if ingress_url else None
        self.local = local
        # on Kubernetes (``cluster`` names the context) the client is a meshkit.k8s ClusterClient:
        # the same calls, config through the Kubernetes API, reads through the API server's proxy
        if client is None:
            token = local.admin_token() if local is not None else None
            client = ControlClient(self.control_url, timeout=15.0, token=token)
        self.client = client
        self.cluster = cluster
        self._loads: list[LoadHandle] = []
        self._since: tuple[float, float] | None = None  # (change time, the scrape after it took effect)
        self._open_labs: list[weakref.ref[Lab]] = []  # the labs opened on this mesh (re-checked on reset)

    @property
    def state_dir(self) -> StateDir:
        return self.local.state if self.local is not None else StateDir.open()

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except ApiError as exc:
            if exc.messages:
                problems = f"{len(exc.messages)} problem" + ("s" if len(exc.messages) > 1 else "")
                raise LabError(f"{what} was refused ({problems}):", exc.messages) from None
            raise LabError(f"{what} was refused: {exc.error}") from None
        except ControlUnreachable as exc:
            raise LabError(f"{what} failed: {exc}. Is the mesh running? Try meshkit.lab.connect().") from None

    # -- config ---------------------------------------------------------------------------------

    def apply(self, rules: Applyable, *, wait: float = SYNC_WAIT) -> ApplyResult:
        """Apply Istio resources; the whole change is refused (and nothing changes) on any error.

        Returns once every sidecar has ACKed the new config (at most ``wait`` seconds).
        """
        documents = _documents(rules)
        if self.local is not None and touches_workloads(documents):
            try:
                check_local(documents)
            except MeshError as exc:
                raise LabError(str(exc)) from None
        result = ApplyResult(self._call("apply", "apply", documents))
        if result.changed:
            self._run_workloads(documents)
        if wait > 0 and result.changed:
            self.wait_synced(wait)
            self._took_effect()
        return result

    def _run_workloads(self, documents: list[dict[str, Any]]) -> None:
        """On the local mesh, start/stop instances as the Deployments now in the store say."""
        if self.local is None or not touches_workloads(documents):
            return
        try:
            self.local.reconcile()
        except MeshError as exc:
            raise LabError(f"the config was applied, but the local mesh could not run it: {exc}") from None

    def delete(self, rules: Applyable | None = None, *, kind: str | None = None, name: str | None = None,
               namespace: str = "default") -> ApplyResult:
        """Delete the given resources, or one by ``kind`` and ``name``."""
        if rules is not None:
            documents = _documents(rules)
            result = ApplyResult(self._call("delete", "delete_documents", documents))
            self._run_workloads(documents)
            self.wait_synced(SYNC_WAIT)
            self._took_effect()
            return result
        if not kind or not name:
            raise LabError("delete needs the rules to delete, or kind= and name= "
                           "(e.g. kind='VirtualService').")
        result = ApplyResult(self._call(f"delete {kind}/{namespace}/{name}", "delete", kind, name, namespace))
        self.wait_synced(SYNC_WAIT)
        self._took_effect()
        return result

    def get(self, kind: str | None = None, name: str | None = None,
            namespace: str | None = None) -> Rule | list[Rule] | None:
        """One resource (None when absent) when ``name`` is given, otherwise a list."""
        if name is not None:
            if kind is None:
                raise LabError("get: a name needs a kind, e.g. get('VirtualService', 'reviews').")
            try:
                answer = self.client.get(kind, name, namespace or "default")
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise LabError(f"get {kind}/{name} was refused: {exc.error}", exc.messages) from None
            except ControlUnreachable as exc:
                raise LabError(f"get failed: {exc}") from None
            items = answer.get("items", [answer]) if isinstance(answer, dict) else []
            return Rule(items[0]["resource"]) if items and "resource" in items[0] else None
        answer = self._call("get", "get", kind, None, namespace)
        return [Rule(item["resource"]) for item in answer.get("items", [])]

    def analyze(self, rules: Applyable | None = None) -> Findings:
        """Check the stored config (or ``rules`` against it, without applying them)."""
        docs = _documents(rules) if rules is not None else None
        subject = "these rules" if docs else "the mesh's config"
        try:
            answer = self.client.analyze(docs)
        except ApiError as exc:  # the rules did not even load: those messages are the findings
            return Findings(exc.messages or [{"severity": "Error", "message": exc.error}], subject)
        except ControlUnreachable as exc:
            raise LabError(f"analyze failed: {exc}") from None
        return Findings(list(answer.get("messages", [])), subject)

    def history(self) -> Table:
        answer = self._call("history", "history")
        rows = [{"revision": r["revision"], "when": time.strftime("%H:%M:%S", time.localtime(r["timestamp"])),
                 "change": r["summary"]} for r in answer.get("revisions", [])]
        return Table(rows, ["revision", "when", "change"], title=f"current revision {answer.get('revision')}")

    def revision(self) -> int:
        return int(self._call("history", "history").get("revision", 0))

    def last_change(self) -> float:
        """Wall-clock time of the latest config revision (0 when there is none)."""
        revisions = self._call("history", "history").get("revisions", [])
        return float(revisions[-1]["timestamp"]) if revisions else 0.0

    def counting_since(self) -> float:
        """Wall-clock time from which requests count as traffic under the current config: the
        control plane's scrape taken right after the latest change took effect, when this `Mesh`
        made the change (every request answered before it is out, every later one in); else the
        change's time plus `SETTLE` (a change from the CLI or another notebook)."""
        changed = self.last_change()
        if self._since is not None and self._since[0] == changed:
            return self._since[1]
        return changed + SETTLE

    def _took_effect(self) -> None:
        """A change of this Mesh was ACKed by every proxy: sample the counters now (`counting_since`)."""
        scraped = self._scrape_now()
        self._since = (self.last_change(), scraped) if scraped else None

    def _scrape_now(self) -> float | None:
        """Ask the control plane for a scrape round now (POST telemetry/scrape); its time, or None
        from a control plane without it."""
        try:
            answer = self.client.request("POST", "telemetry/scrape")
        except (ApiError, ControlUnreachable, OSError):
            return None
        at = answer.get("scraped_at") if isinstance(answer, dict) else None
        return float(at) if at else None

    def rollback(self, revision: int) -> ApplyResult:
        """Make the config what it was at ``revision`` again (as a new revision)."""
        result = ApplyResult(self._call(f"rollback to {revision}", "rollback", revision))
        self.wait_synced(SYNC_WAIT)
        self._took_effect()
        return result

    def reset(self, *, recheck: bool = True) -> ApplyResult:
        """Back to the baseline `meshkit up`/`deploy` applies for the running app sets (Bookinfo's
        DestinationRules and ingress route; httpbin's subsets when it runs): every other resource
        is deleted. Then every lab opened on this mesh re-checks its recorded steps (progress is
        state: a step whose rule the reset removed shows as regressed); ``recheck=False`` is for a
        lab's own clean-up between sections, where the steps done so far stay done."""
        answer = self._reset_config()
        if recheck:
            for ref in list(self._open_labs):
                lab = ref()
                if lab is None:
                    self._open_labs.remove(ref)
                else:
                    lab.recheck()
        return answer

    def _lab_opened(self, lab: Lab) -> None:
        """``lab`` was opened on this mesh: `reset` re-checks it (held weakly; a re-opened lab replaces
        the older object of the same name)."""
        self._open_labs = [r for r in self._open_labs if (old := r()) is not None and old.name != lab.name]
        self._open_labs.append(weakref.ref(lab))

    def _reset_config(self) -> ApplyResult:
        record = self.local.record() if self.local is not None else None
        app_sets = record.apps if record is not None else ["bookinfo"]
        baseline = [doc for app_set in app_sets for doc in catalog.default_config(app_set)]
        keep = {_key(d) for d in baseline}
        extra = [r for r in self.get() or [] if isinstance(r, dict) and _key(r) not in keep]
        if extra:
            self.delete(extra)
        if not baseline:  # app sets with no default config (clients)
            return ApplyResult({"revision": self.revision(), "changed": bool(extra)})
        return self.apply(baseline)

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """True once every connected proxy has ACKed the latest config (bounded by ``timeout``)."""
        answer = self._call("proxy-status", "proxy_status", timeout)
        rows = answer.get("proxies", []) if isinstance(answer, dict) else answer
        return all(row.get("status") == "SYNCED" for row in rows if row.get("connected", True))

    # -- processes and traffic --------------------------------------------------------------------

    def status(self) -> Table:
        if self.local is None:
            answer = self._call("proxy-status", "proxy_status")
            rows = answer.get("proxies", []) if isinstance(answer, dict) else answer
            return Table(rows, ["id", "status", "version"], title=f"proxies of {self.control_url}")
        rows = self.local.status()["workloads"]
        return Table(rows, ["name", "service", "version", "healthy", "pid", "inbound_port"],
                     title=f"control plane {self.control_url}, ingress {self.ingress_url}")

    def workloads(self) -> list[dict[str, Any]]:
        return list(self.local.status()["workloads"]) if self.local is not None else []

    def _local(self) -> LocalMesh:
        if self.local is None and self.cluster is not None:
            raise LabError(f"this works on the local mesh only; on Kubernetes ({self.cluster}) use kubectl: "
                           "`kubectl delete pod POD` (its Deployment starts a new one), "
                           "`kubectl scale deployment/NAME --replicas=N`, `kubectl apply -f` for new "
                           "workloads, `kubectl exec POD -- curl URL` for a request from a pod")
        if self.local is None:
            raise LabError("this works on the local mesh only (connect() without a URL)")
        return self.local

    def kill(self, instance: str) -> None:
        """Kill one instance's app (like a crashing pod); its sidecar stays."""
        try:
            self._local().kill(instance)
        except MeshError as exc:
            raise LabError(str(exc)) from None

    def restart(self, instance: str) -> None:
        """Start an instance's app again, and its sidecar too if that died (new certificate)."""
        try:
            self._local().restart(instance)
        except MeshError as exc:
            raise LabError(str(exc)) from None

    def deploy(self, *apps: str) -> Table:
        """Add app sets to the running mesh, e.g. ``mesh.deploy("clients")`` (sleep + legacy)."""
        try:
            self._local().deploy(list(apps))
        except (MeshError, ValueError) as exc:
            raise LabError(f"deploy {', '.join(apps)}: {exc}") from None
        return self.status()

    def scale(self, workload: str, replicas: int) -> Table:
        """Run ``replicas`` instances of ``workload``, e.g. ``mesh.scale("reviews-v1", 2)``."""
        try:
            self._local().scale(workload, replicas)
        except (MeshError, ValueError) as exc:
            raise LabError(str(exc)) from None
        return self.status()

    def curl(self, from_: str, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
             body: str | bytes | None = None, timeout: float = 30.0, insecure: bool = False,
             cacert: str | None = None) -> CurlResult:
        """One request from workload ``from_`` (``"sleep"``, ``"legacy"``), like `kubectl exec sleep -- curl`.

        Never raises for an HTTP error or a refused connection: look at ``.status``, ``.error``, ``.flags``.
        ``https://`` URLs are the app's own TLS through a CONNECT tunnel of its sidecar; ``insecure``
        (curl's ``-k``) and ``cacert`` (``--cacert``) as curl's.
        """
        local = self._local()
        try:
            return send_curl(local.state, local.status()["workloads"], from_, url, method=method,
                             headers=headers, body=body, timeout=timeout, insecure=insecure, cacert=cacert,
                             egress=mesh_egress_gate(local))  # NetworkPolicy, for a source without a sidecar
        except CurlError as exc:
            field = "from_" if exc.field == "from" else exc.field
            raise LabError(f"curl {field}: {exc.message}") from None

    def load(self, rps: float = 10.0, users: dict[str, float] | str | None = None, duration: float = 30.0,
             path: str = "/productpage") -> LoadHandle:
        """Send ``rps`` requests a second through the ingress for ``duration`` seconds, in the background.

        ``users`` gives signed-in users' shares, ``{"jason": 0.3}`` or ``"jason:30%"``.
        """
        if self.ingress_url is None:
            raise LabError("load needs the ingress URL: connect(url, ingress=...) or the local mesh")
        if not 0 < duration <= MAX_LOAD_SECONDS:
            raise LabError(f"load: duration must be in (0, {MAX_LOAD_SECONDS:.0f}] seconds, got {duration}")
        try:
            shares = parse_users(users) if isinstance(users, str) else dict(users or {})
            generator = LoadGenerator(self.ingress_url + path, rps=rps, duration=duration, users=shares,
                                      timeout=15.0)
        except ValueError as exc:
            raise LabError(f"load: {exc}") from None
        handle = LoadHandle(generator.start(), on_end=self._scrape_now)
        self._loads = [h for h in self._loads if h.running()] + [handle]
        return handle

    def page(self, path: str = "/productpage") -> BrowserPage:
        """The ingress's ``path`` as a browser shows it, in the notebook (an iframe through JupyterLab's
        jupyter-server-proxy): refresh it and watch the stars change as the routes say."""
        if self.ingress_url is None:
            raise LabError("page needs the ingress URL: connect(url, ingress=...) or the local mesh")
        port = urllib.parse.urlsplit(self.ingress_url).port
        if port is None:
            raise LabError(f"page: the ingress URL {self.ingress_url} names no port")
        return BrowserPage(port, path)

    def console(self, *, height: int = 760) -> ConsolePage:
        """The web console (`meshkit dashboard`) in the notebook: an iframe through Jupyter's
        jupyter-server-proxy, so it works on Binder and JupyterHub too (docs/console.md)."""
        from meshkit.lab.console import ConsolePage  # noqa: PLC0415

        if self.cluster is not None:
            raise LabError(f"console: {self.cluster} serves its console in the cluster; run "
                           "`kubectl -n meshkit-system port-forward svc/meshkit-control 15010` and "
                           "connect('http://127.0.0.1:15010')")
        return ConsolePage(self.control_url, getattr(self.client, "token", None), height=height)

    def visit(self, path: str = "/productpage", *, user: str | None = None,
              timeout: float = 30.0) -> PageVisit:
        """One request through the ingress (signed in as ``user``), timed; never raises on HTTP errors."""
        if self.ingress_url is None:
            raise LabError("visit needs the ingress URL: connect(url, ingress=...) or the local mesh")
        headers = {"Cookie": f"user={user}"} if user else {}
        request = urllib.request.Request(self.ingress_url + path, headers=headers)
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status, text = resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            raise LabError(f"visit {path}: no answer from the ingress {self.ingress_url} ({exc})") from None
        return PageVisit(path, user, status, time.monotonic() - began, text)

    def loading(self) -> bool:
        return any(h.running() for h in self._loads)

    def loads(self) -> Iterator[LoadHandle]:
        return iter(list(self._loads))

    def stop_loads(self) -> None:
        for handle in self._loads:
            handle.stop()

    # -- telemetry ----------------------------------------------------------------------------------

    def telemetry(self, window: float = 60.0, **query: Any) -> dict[str, Any]:
        return dict(self._call("telemetry", "request", "GET", "telemetry", query={"window": window, **query}))

    def graph(self, window: float = 60.0) -> dict[str, Any]:
        return dict(self._call("telemetry graph", "request", "GET", "telemetry/graph",
                               query={"window": window}))

    def series(self, destination: str, window: float = 60.0, step: float = 1.0) -> dict[str, Any]:
        return dict(self._call("telemetry series", "request", "GET", "telemetry/series",
                               query={"window": window, "step": step, "destination": destination}))

    def scrape_targets(self) -> list[dict[str, Any]]:
        """The sidecars' metrics endpoints the control plane scrapes: ``{"name", "url", "error"}`` rows."""
        answer = self._call("telemetry targets", "request", "GET", "telemetry/targets")
        return list(answer.get("targets", [])) if isinstance(answer, dict) else []

    # -- traces -------------------------------------------------------------------------------------

    def traces(self, service: str | None = None, *, errors: bool = False, min_duration: str | None = None,
               request_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Summaries of recent traces (newest first), as ``meshkit traces`` lists them."""
        answer = self._call("traces", "traces", service, errors=errors, min_duration=min_duration,
                            request_id=request_id, limit=limit)
        return list(answer.get("traces", [])) if isinstance(answer, dict) else []

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans (Zipkin v2 JSON) of one trace, by trace id or x-request-id."""
        answer = self._call(f"trace {trace_id}", "request", "GET", f"traces/{trace_id}")
        return list(answer.get("spans", [])) if isinstance(answer, dict) else []

    def explain(self, request_id: str) -> dict[str, Any]:
        """Every hop of one traced request (x-request-id or trace id): rule, subset, fault, attempts,
        timeout, response flags in words, time; as ``meshkit explain`` prints it (docs/tracing.md)."""
        return dict(self._call(f"explain {request_id}", "request", "GET", f"traces/{request_id}/explain"))

    def __repr__(self) -> str:
        return f"Mesh(control={self.control_url}, ingress={self.ingress_url})"


def connect(url: str | None = None, *, ingress: str | None = None, start: bool = True) -> Mesh:
    """The running local mesh ($MESHKIT_HOME), started if needed; or the control plane at ``url``.

    ``url`` may also name a cluster: ``"kind"`` (the context of `meshkit kind up`, kind-meshkit),
    ``"kind:<cluster>"``, ``"k8s"`` (the current kubeconfig context) or ``"k8s:<context>"``. The
    Mesh then applies config through the Kubernetes API and reads telemetry and proxy status from
    the control plane through the API server's service proxy (docs/kubernetes.md).
    """
    show_errors_as_html()
    from meshkit.k8s.targets import ClusterTargetError, cluster_client, is_cluster_target  # noqa: PLC0415

    if is_cluster_target(url):
        try:
            client = cluster_client(str(url))
        except ClusterTargetError as exc:
            raise LabError(f"connect({url!r}): {exc}") from None
        mesh = Mesh(client.url, ingress_url=ingress, client=client, cluster=client.label)
        mesh.revision()  # fails now, with a clear message, if the control plane does not answer
        return mesh
    if url is not None:
        mesh = Mesh(url, ingress_url=ingress)
        mesh.revision()  # fails now, with a clear message, if nothing answers there
        return mesh
    local = LocalMesh(StateDir.open())
    if not local.running():
        if not start:
            raise LabError("no local mesh is running; start one with `meshkit up` or connect(start=True)")
        try:
            local.up(base_port=int(os.environ["MESHKIT_PORT_BASE"]) if "MESHKIT_PORT_BASE" in os.environ
                     else None)
        except MeshError as exc:
            raise LabError(f"the local mesh did not start: {exc}") from None
    status = local.status()
    return Mesh(str(status["control"]), ingress_url=ingress or status["ingress"], local=local)
