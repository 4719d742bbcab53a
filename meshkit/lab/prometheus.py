"""A real Prometheus scraping the mesh's sidecars, where the `prometheus` binary is installed.

`Prometheus(mesh).start()` writes a config into the mesh's state dir (``run/prometheus/``) whose
targets are the ones the control plane scrapes (``/api/v1/telemetry/targets``, through Prometheus's
file-based discovery, so `refresh_targets()` follows a mesh that grew), starts ``prometheus`` on a
free 127.0.0.1 port with its database there, and waits, bounded, until every sidecar has been
scraped once. `query(promql)` runs an instant query over Prometheus's HTTP API; `stop()` ends it.
The process also gets SIGTERM if the Python process that started it dies, so a crashed kernel
leaves no Prometheus behind.

`available()` says whether a binary exists (``$MESHKIT_PROMETHEUS`` or ``prometheus`` on PATH) and
`INSTALL_HINT` how to get one. Nothing here is needed for the rest of meshkit.lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from meshkit.lab.display import LabError, ShownAsTable, Table
from meshkit.lab.mesh import Mesh
from meshkit.runtime.processes import dying_with_parent

__all__ = [
    "BINARY_ENV",
    "HTTP_TIMEOUT",
    "INSTALL_HINT",
    "START_TIMEOUT",
    "Prometheus",
    "QueryResult",
    "available",
    "config",
    "find_binary",
    "target_groups",
]

BINARY_ENV = "MESHKIT_PROMETHEUS"
INSTALL_HINT = (
    "Prometheus is not installed here. On Debian/Ubuntu: `sudo apt-get install prometheus` (then "
    "`sudo systemctl disable --now prometheus` to keep its own service off); elsewhere download it "
    "from https://prometheus.io/download/ and put `prometheus` on your PATH, or set "
    f"{BINARY_ENV}=/path/to/prometheus. Then run this cell again."
)
START_TIMEOUT = 30.0
HTTP_TIMEOUT = 5.0


def find_binary() -> str | None:
    """The prometheus executable: ``$MESHKIT_PROMETHEUS``, else ``prometheus`` on PATH, else None."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("prometheus")


def available() -> bool:
    return find_binary() is not None


def target_groups(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control plane's scrape targets as Prometheus file-discovery groups (one per sidecar)."""
    groups = []
    for t in targets:
        url = urllib.parse.urlsplit(str(t.get("url", "")))
        if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
            raise LabError(f"prometheus: scrape target {t.get('name')!r} has no usable url "
                           f"({t.get('url')!r})")
        groups.append({"targets": [f"{url.hostname}:{url.port}"],
                       "labels": {"__metrics_path__": url.path or "/metrics", "__scheme__": url.scheme,
                                  "meshkit_target": str(t.get("name"))}})
    return groups


def config(targets_file: Path, scrape_interval: str = "1s") -> dict[str, Any]:
    """The prometheus.yml: one job, ``meshkit-sidecars``, its targets read from ``targets_file``."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{
            "job_name": "meshkit-sidecars",
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        }],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QueryResult(ShownAsTable):
    """An instant query's answer: one row per series (its labels and value)."""

    def __init__(self, promql: str, data: dict[str, Any]) -> None:
        self.promql = promql
        self.type = str(data.get("resultType", ""))
        result = data.get("result", [])
        self.rows: list[dict[str, Any]]
        if self.type == "vector":
            self.rows = [{"labels": dict(r.get("metric", {})), "value": float(r["value"][1])} for r in result]
        elif self.type == "scalar":
            self.rows = [{"labels": {}, "value": float(result[1])}]
        else:  # a matrix (range selector without a function) or a string: show it raw
            self.rows = [{"labels": dict(r.get("metric", {})), "value": float("nan")} for r in result]

    def __len__(self) -> int:
        return len(self.rows)

    def by(self, label: str) -> dict[str, float]:
        """Values keyed by one label (``destination_workload``)."""
        return {str(r["labels"].get(label, "")): r["value"] for r in self.rows}

    def total(self) -> float:
        return sum(r["value"] for r in self.rows if r["value"] == r["value"])

    def table(self) -> Table:
        names: list[str] = []
        for r in self.rows:
            names += [k for k in r["labels"] if k not in names]
        rows = [{**{n: r["labels"].get(n, "") for n in names}, "value": f"{r['value']:.3g}"}
                for r in self.rows]
        return Table(rows, [*names, "value"], title=f"{self.promql}  ({len(self.rows)} series)")


class Prometheus:
    """One Prometheus process scraping ``mesh``'s sidecars; use as a context manager or start()/stop()."""

    def __init__(self, mesh: Mesh, *, scrape_interval: str = "1s", directory: Path | None = None) -> None:
        self.mesh = mesh
        self.scrape_interval = scrape_interval
        self.directory = directory or mesh.state_dir.run_dir / "prometheus"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "prometheus.log"

    @property
    def targets_file(self) -> Path:
        return self.directory / "targets.json"

    def refresh_targets(self) -> int:
        """Write the control plane's current scrape targets for Prometheus to pick up; how many."""
        groups = target_groups(self.mesh.scrape_targets())
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file
        return len(groups)

    def start(self, timeout: float = START_TIMEOUT, *, scraped: bool = True) -> Prometheus:
        """Start and wait (at most ``timeout`` s) until it answers and, with ``scraped``, until every
        sidecar was scraped once (Prometheus hands new targets to its scrapers every 5 s, so that
        takes about 6 s; `wait_scraped()` waits for it later)."""
        binary = find_binary()
        if binary is None:
            raise LabError(INSTALL_HINT)
        if self.running():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        count = self.refresh_targets()
        config_file = self.directory / "prometheus.yml"
        settings = config(self.targets_file, self.scrape_interval)
        config_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.port = _free_port()
        argv = [binary, f"--config.file={config_file}", f"--storage.tsdb.path={self.directory / 'data'}",
                "--storage.tsdb.retention.time=1h", f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn"]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(dying_with_parent(argv),
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        (self.directory / "pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        try:
            self._wait(deadline, lambda: self._get("/-/ready") is not None, "to answer /-/ready")
            if scraped:
                self._wait(deadline, lambda: self._scraped() >= count, f"to scrape all {count} sidecars once")
        except LabError:
            self.stop()
            raise
        return self

    def wait_scraped(self, timeout: float = START_TIMEOUT) -> int:
        """Wait (at most ``timeout`` s) until every current target was scraped successfully; how many were."""
        count = len(json.loads(self.targets_file.read_text()))
        self._wait(time.monotonic() + timeout, lambda: self._scraped() >= count,
                   f"to scrape all {count} sidecars once")
        return self._scraped()

    def _wait(self, deadline: float, done: Any, what: str) -> None:
        while not done():
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"prometheus exited (code {self.process.returncode}) before it was ready; "
                               f"its log: {self.log_file}\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"prometheus did not manage {what} in time; its log: {self.log_file}")
            time.sleep(0.2)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _stop_stale(self) -> None:
        """End a Prometheus an earlier run left on this directory (a kernel killed without stop())."""
        pid_file = self.directory / "pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.directory).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)

    def _get(self, path: str) -> Any:
        """JSON (or True for a plain 200) from Prometheus, None when it does not answer (yet)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=HTTP_TIMEOUT) as resp:
                body = resp.read()
        except (OSError, urllib.error.URLError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return True

    def _scraped(self) -> int:
        answer = self._get("/api/v1/targets?state=active")
        if not isinstance(answer, dict):
            return 0
        return sum(1 for t in answer.get("data", {}).get("activeTargets", []) if t.get("health") == "up")

    def targets(self) -> Table:
        """What Prometheus scrapes and how the last scrape went (its /targets page)."""
        answer = self._get("/api/v1/targets?state=active")
        active = answer.get("data", {}).get("activeTargets", []) if isinstance(answer, dict) else []
        rows = [{"target": t.get("labels", {}).get("meshkit_target"), "url": t.get("scrapeUrl"),
                 "health": t.get("health"), "error": t.get("lastError") or ""} for t in active]
        return Table(sorted(rows, key=lambda r: str(r["target"])), ["target", "url", "health", "error"],
                     title=f"Prometheus {self.url} targets")

    def query(self, promql: str) -> QueryResult:
        """Run an instant PromQL query; a bad query is a LabError with Prometheus's own message."""
        if not self.running():
            raise LabError("prometheus is not running: start it with prom = Prometheus(mesh).start()")
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except ValueError:
                answer = {"status": "error", "error": f"HTTP {exc.code}"}
        except OSError as exc:
            raise LabError(f"prometheus did not answer the query {promql!r}: {exc}") from None
        if answer.get("status") != "success":
            raise LabError(f"PromQL {promql!r} was refused: {answer.get('error', answer)}")
        return QueryResult(promql, answer.get("data", {}))

    def wait_for(self, promql: str, *, at_least: float = 0.0, timeout: float = 10.0) -> QueryResult:
        """Query until the result's total exceeds ``at_least`` (at most ``timeout`` s); the last answer."""
        deadline = time.monotonic() + timeout
        result = self.query(promql)
        while result.total() <= at_least and time.monotonic() < deadline:
            time.sleep(0.5)
            result = self.query(promql)
        return result

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Prometheus flushes and exits), SIGKILL after ``timeout`` s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        (self.directory / "pid").unlink(missing_ok=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.url}" if self.running() else "stopped"
        return f"Prometheus({state}, config {self.directory / 'prometheus.yml'})"
