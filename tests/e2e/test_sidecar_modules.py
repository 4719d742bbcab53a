"""What a sidecar of the local mesh loads stays within an explicit list (issue 19: RSS per sidecar).

Every module a Python process imports stays in its memory for good, and RSS per sidecar is one of
the data plane's targets (≤ 30 MiB at Istio's load point, benchmarks/README.md). So the sidecars
are started exactly as ``meshkit up`` starts them (mTLS with a CA, access log, metrics, tracing to
the control plane's collector) with ``PYTHONPROFILEIMPORTTIME=1``, which makes CPython write one
line per import to the process's stderr (the sidecar's log file) for its whole life: the imports
at start and the lazy ones (the TLS modules, the certificate helper's client, the idna codec).
Traffic then runs the paths a learner's mesh runs: requests over mTLS with sampled traces, the
admin pages the console and ``meshkit top`` scrape; then every sidecar's log is read.

A module outside the lists fails the test, naming it and the sidecar: add it here only when the
sidecar really needs it (and say why), otherwise import it lazily where it is used. The first
test proves the reader sees the imports at all.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.mesh import RunningMesh, start_mesh
from tests.security.e2e_support import admin, through

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|(\s*)(\S+)$")

# Top-level standard-library modules (and C parts) a sidecar may load: what asyncio, ssl, uvloop,
# httptools and the sidecar's own code need. Not here, on purpose: tempfile/shutil/bz2/lzma (the
# key is loaded from a memfd, tls.contexts), _strptime/calendar (certificate times are parsed by
# hand, tls.verify).
STDLIB = frozenset((
    "_abc", "abc", "argparse", "array", "_ast", "ast", "_asyncio", "asyncio", "atexit", "base64",
    "binascii", "bisect", "_bisect", "builtins", "_codecs", "codecs", "_collections", "collections",
    "_collections_abc", "_compat_pickle", "concurrent", "contextlib", "_contextvars", "contextvars", "copy",
    "copyreg", "dataclasses", "datetime", "_datetime", "dis", "_distutils_hack", "encodings", "enum",
    "errno", "fcntl", "fnmatch", "_frozen_importlib", "_frozen_importlib_external", "_functools",
    "functools", "__future__", "gc", "genericpath", "gettext", "_heapq", "heapq", "http", "_imp",
    "importlib", "inspect", "io", "_io", "ipaddress", "itertools", "json", "_json", "keyword", "linecache",
    "_locale", "locale", "logging", "marshal", "math", "msvcrt", "nt", "ntpath", "_opcode", "opcode",
    "_operator", "operator", "org", "os", "pathlib", "posix", "posixpath", "_posixsubprocess", "queue",
    "_queue", "_random", "random", "re", "reprlib", "runpy", "select", "selectors", "_sha512", "_signal",
    "signal", "site", "_sitebuiltins", "sitecustomize", "socket", "_socket", "_sre", "ssl", "_ssl", "_stat",
    "stat", "_string", "string", "stringprep", "_struct", "struct", "subprocess", "sys", "textwrap",
    "_thread", "threading", "time", "token", "tokenize", "traceback", "types", "typing", "_typing",
    "unicodedata", "urllib", "warnings", "_warnings", "weakref", "_weakref", "_weakrefset", "_winapi",
    "zipimport", "zlib",
))
THIRD_PARTY = frozenset({"uvloop", "httptools"})  # the sidecar's only dependencies (docs/proxy.md)
# meshkit itself: the package and the sidecar's modules (the editable install's finder too)
MESHKIT_PROXY = frozenset({"meshkit", "meshkit.proxy"})  # and meshkit.proxy.*, but:
MESHKIT_NOT_IN_A_SIDECAR = ("meshkit.proxy.schema",  # types only (the snapshot's TypedDicts)
                            "meshkit.proxy.tls.x509", "meshkit.proxy.tls.csr_helper")  # cryptography
NEVER = ("pydantic", "aiohttp", "yaml", "typer", "rich", "click", "cryptography", "joserfc", "re2",
         "meshkit.config", "meshkit.control", "meshkit.runtime", "meshkit.cli", "meshkit.lab",
         "tempfile", "shutil", "bz2", "lzma", "_strptime", "calendar", "meshkit.proxy.schema")


def allowed(module: str) -> bool:
    top = module.split(".", maxsplit=1)[0]
    if top.startswith("__editable__"):
        return True
    if top == "meshkit":
        if module in MESHKIT_PROXY:
            return True
        return module.startswith("meshkit.proxy.") and not module.startswith(MESHKIT_NOT_IN_A_SIDECAR)
    return top in STDLIB or top in THIRD_PARTY


def imported(log: Path) -> set[str]:
    """The modules a process's ``-X importtime`` lines name."""
    found = set()
    for line in log.read_text(errors="replace").splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            found.add(match.group(2))
    return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    home = tmp_path_factory.mktemp("modules")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the sidecars inherit it (launch.sidecar_env)
        with start_mesh(home, ["httpbin", "clients"], {"httpbin-v2": 0}) as running:
            patch.delenv("PYTHONPROFILEIMPORTTIME")
            yield running


def sidecar_logs(mesh: RunningMesh) -> dict[str, Path]:
    logs = {w["name"]: mesh.home / "logs" / f"{w['name']}.sidecar.log"
            for w in mesh.status["workloads"] if w.get("sidecar_pid")}
    logs["ingressgateway"] = mesh.home / "logs" / "ingressgateway.log"
    return logs


def drive(mesh: RunningMesh) -> None:
    """mTLS requests with sampled traces through sleep's sidecar, and the admin pages scraped."""
    for i in range(50):
        status, _ = through(mesh, "sleep-v1-0", f"http://httpbin.default:8000/bytes/1024?i={i}")
        assert status == 200
    proxy = mesh.workload("sleep-v1-0")["outbound_proxy"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    request = urllib.request.Request("http://httpbin.default:8000/get",
                                     headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    with opener.open(request, timeout=10) as answer:
        assert answer.status == 200
    for name in ("sleep-v1-0", "httpbin-v1-0"):
        assert "istio_requests_total" in admin(mesh, name, "/stats/prometheus")
        assert admin(mesh, name, "/certs")["mtls"] is True
    gateway = urlsplit(mesh.ingress)
    try:  # the gateway's chain runs whatever it answers (no route for httpbin here: 404)
        with urllib.request.urlopen(f"{gateway.scheme}://{gateway.netloc}/status/200", timeout=10) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        assert error.code in (404, 503), error


def test_the_reader_sees_what_a_sidecar_imports(mesh: RunningMesh) -> None:
    drive(mesh)
    for name, log in sidecar_logs(mesh).items():
        modules = imported(log)
        assert {"asyncio", "ssl", "uvloop", "httptools", "meshkit.proxy.main",
                "meshkit.proxy.listener"} <= modules, f"{name}: no import lines in {log}"
        assert "meshkit.proxy.tls.sidecar" in modules, f"{name}: not an mTLS sidecar"


def test_a_sidecar_loads_only_the_listed_modules(mesh: RunningMesh) -> None:
    drive(mesh)
    for name, log in sidecar_logs(mesh).items():
        modules = imported(log)
        never = sorted(m for m in modules if m.split(".", maxsplit=1)[0] in NEVER or m.startswith(NEVER))
        assert never == [], f"{name}'s sidecar loaded {never}"
        unlisted = sorted(m for m in modules if not allowed(m))
        assert unlisted == [], f"{name}'s sidecar loaded modules outside the list: {unlisted}"
