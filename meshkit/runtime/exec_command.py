"""`kubectl exec POD -- COMMAND` for the local mesh: the commands Istio's tasks run inside pods.

Istio's task pages run a handful of programs in pods, and a learner copies those lines. ``meshkit
exec TARGET [-c CONTAINER] -- COMMAND...`` takes the words after ``--`` unchanged and runs:

- ``curl [-s] [-S] [-i] [-I] [-v] [-L] [-k] [-o FILE] [-D FILE] [-w FORMAT] [-H H] [-X M] [-d D]
  [-m S] [--connect-timeout S] [--cacert FILE] [--max-redirs N]
  [--haproxy-protocol] [--haproxy-clientip IP] URL`` from the app container (the mTLS-migration loop's
  ``curl -s URL -s -o /dev/null -w "%{http_code}\\n"``, the egress tasks' ``curl -sSL -o /dev/null
  -D - http://edition.cnn.com/politics`` and ``curl -sI https://www.google.com``), sent as that app
  sends, ``https://`` through a CONNECT tunnel (`meshkit.runtime.curl`); ``-L`` follows redirects
  as curl does, printing each hop's headers with ``-i``/``-D -``. Like curl, an HTTP error is exit
  0, and a connection that gets no answer prints ``000`` for ``%{http_code}`` and exits 7
  (refused), 28 (timed out), 35 (TLS handshake failed, as when the mesh blocks an HTTPS host), 60
  (certificate not trusted) or 56 (reset, CONNECT refused by the proxy); from a pod without a sidecar,
  a connection its NetworkPolicy egress drops waits ``--connect-timeout`` (2 s without it) and exits
  28 (`meshkit.runtime.egress_gate`); ``-o`` and ``-D`` to a
  file write nothing (the file would be in the pod);
- ``fortio curl [-quiet] URL`` and ``fortio load [-c N] [-qps Q] [-n N | -t D] [-H H] [-loglevel L]
  [-quiet] URL`` from a fortio pod (`meshkit.runtime.fortio`), the circuit-breaking task;
- ``pilot-agent request GET stats`` (or ``curl localhost:15000/stats``) in the ``istio-proxy``
  container: the sidecar's admin page, Envoy's text stats for ``| grep pending``;
- ``curl [-sS] [-v] [-k] [--resolve HOST:PORT:127.0.0.1] URL`` to the pod's own ports in the
  ``istio-proxy`` container (`meshkit.runtime.pod_loopback`): "Ingress Gateway without TLS
  Termination"'s check of nginx from inside its pod, curl's ``-v`` lines on stderr;
- ``sh -c "SCRIPT"`` for the shell shapes the tasks use (`meshkit.runtime.mini_shell`, never a real
  shell): the TCP traffic-shifting task's ``(date; sleep 1) | nc $INGRESS_HOST $TCP_INGRESS_PORT``,
  ``date``, ``sleep N``, ``echo``, ``nc HOST PORT``, and ``curl ...`` as above.

`execute` returns the exit status and prints through ``out``; an unsupported program or flag is an
`ExecError` naming it and listing what is supported (never silently ignored).

It must not run anything on the host: nothing here starts a process.
"""

from __future__ import annotations

import random
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from meshkit.runtime import pod_loopback
from meshkit.runtime.curl import CurlError, CurlResult, curl, find_source, service_of
from meshkit.runtime.egress_gate import EgressGate
from meshkit.runtime.fortio import LoadSpec, run_load
from meshkit.runtime.mini_shell import Shell, ShellError
from meshkit.runtime.state import StateDir

SUPPORTED = ("curl ... URL", "fortio curl URL", "fortio load [-c -qps -n -t -H] URL",
             "pilot-agent request GET stats (-c istio-proxy)",
             "curl -v -k --resolve HOST:PORT:127.0.0.1 URL (-c istio-proxy: the pod's own ports)",
             'sh -c "(date; sleep 1) | nc HOST PORT" (date, sleep, echo, nc, curl)')
SIDECAR_CONTAINERS = frozenset({"istio-proxy", "meshkit-proxy"})
# curl's exit codes for what happened to a request with no HTTP answer, by the words of its error
# (`meshkit.runtime.curl` and `curl_tls` write them): the first match wins, 56 when none does
CURL_EXIT = (("SSL certificate problem", 60), ("SSL: no alternative certificate", 60), ("SSL_connect", 35),
             ("SSL connect error", 35), ("refused", 7), ("timed out", 28), ("CONNECT", 56), ("reset", 56),
             ("HTTP/0.9", 1))
TOO_MANY_REDIRECTS = 47
EGRESS_KEY = "_egress"  # execute's ``egress``, carried on the source row to the curl it runs
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRS = 50  # curl's default --max-redirs
# options taking a value, and the flags meshkit accepts and ignores (they change nothing here)
_CURL_VALUE = {"-o", "--output", "-w", "--write-out", "-H", "--header", "-X", "--request", "-d", "--data",
               "--data-raw", "-m", "--max-time", "--connect-timeout", "--resolve", "-u", "--user",
               "-D", "--dump-header", "--cacert", "--max-redirs", "--haproxy-clientip"}
_CURL_FLAGS = {"-s", "--silent", "-S", "--show-error", "-i", "--include", "-I", "--head", "-v", "--verbose",
               "-L", "--location", "-f", "--fail", "-k", "--insecure", "--http1.1", "-4", "-q",
               "--haproxy-protocol"}


class ExecError(ValueError):
    """The command cannot run on the local mesh: what, and what can."""


@dataclass
class CurlCall:
    url: str = ""
    method: str = "GET"
    headers: list[str] = field(default_factory=list)
    data: str | None = None
    include: bool = False
    head: bool = False
    silent: bool = False
    show_error: bool = False
    fail: bool = False
    output: str | None = None
    write_out: str | None = None
    timeout: float = 30.0
    connect_timeout: float | None = None  # --connect-timeout (a connection NetworkPolicy drops)
    location: bool = False  # -L
    max_redirs: int = MAX_REDIRS
    dump_header: str | None = None  # -D FILE ("-": stdout)
    insecure: bool = False  # -k
    cacert: str | None = None
    custom_method: bool = False  # -X given: kept across redirects, as curl keeps it
    haproxy_protocol: bool = False  # --haproxy-protocol: a PROXY protocol v1 line first
    haproxy_clientip: str | None = None  # --haproxy-clientip: its source address (curl >= 8.2)
    verbose: bool = False  # -v: headers (app container); curl's own lines (proxy container)
    resolve: list[str] = field(default_factory=list)  # --resolve HOST:PORT:ADDRESS (the proxy container's)


def parse_curl(argv: list[str]) -> CurlCall:
    """curl's command line, the flags Istio's tasks use (combined short flags such as ``-sS`` too)."""
    call = CurlCall()
    words = list(argv)
    while words:
        word = words.pop(0)
        if word.startswith("-") and not word.startswith("--") and len(word) > 2:
            words[:0] = _split_short(word)  # -sSL -> -s -S -L; -D- -> -D -; -so FILE -> -s -o FILE
            continue
        if word in _CURL_VALUE:
            if not words:
                raise ExecError(f"curl: option {word} needs a value")
            _curl_option(call, word, words.pop(0))
        elif word in _CURL_FLAGS:
            _curl_flag(call, word)
        elif word.startswith("-"):
            raise ExecError(f"curl: option {word} is not supported here (supported: "
                            f"{', '.join(sorted(_CURL_VALUE | _CURL_FLAGS))})")
        elif call.url:
            raise ExecError(f"curl: one URL only (got {call.url!r} and {word!r})")
        else:
            call.url = word if "://" in word else f"http://{word}"
    if not call.url:
        raise ExecError("curl: no URL given")
    return call


def _split_short(word: str) -> list[str]:
    """Combined short options: letters until one that takes a value, which takes the rest of the word."""
    split = []
    for at, letter in enumerate(word[1:], start=1):
        split.append(f"-{letter}")
        if f"-{letter}" in _CURL_VALUE:
            if word[at + 1:]:
                split.append(word[at + 1:])
            break
    return split


def _curl_option(call: CurlCall, option: str, value: str) -> None:
    if option in ("-o", "--output"):
        call.output = value
    elif option in ("-w", "--write-out"):
        call.write_out = value
    elif option in ("-H", "--header"):
        call.headers.append(value)
    elif option in ("-X", "--request"):
        call.method, call.custom_method = value.upper(), True
    elif option in ("-d", "--data", "--data-raw"):
        call.data = value
        if call.method == "GET":
            call.method = "POST"
    elif option == "--haproxy-clientip":
        call.haproxy_clientip = value
    elif option in ("-m", "--max-time", "--connect-timeout"):
        try:
            seconds = float(value)
        except ValueError:
            raise ExecError(f"curl: {option} expects seconds, got {value!r}") from None
        if option == "--connect-timeout":
            call.connect_timeout = seconds
        else:
            call.timeout = seconds
    elif option in ("-D", "--dump-header"):
        call.dump_header = value
    elif option == "--cacert":
        call.cacert = value
    elif option == "--resolve":
        call.resolve.append(value)
    elif option == "--max-redirs":
        try:
            call.max_redirs = int(value)
        except ValueError:
            raise ExecError(f"curl: --max-redirs expects a number, got {value!r}") from None


def _curl_flag(call: CurlCall, flag: str) -> None:
    if flag in ("-s", "--silent"):
        call.silent = True
    elif flag in ("-S", "--show-error"):
        call.show_error = True
    elif flag in ("-i", "--include"):
        call.include = True
    elif flag in ("-v", "--verbose"):
        call.verbose = True
    elif flag in ("-I", "--head"):
        call.head, call.include, call.method = True, True, "HEAD"
    elif flag in ("-f", "--fail"):
        call.fail = True
    elif flag in ("-L", "--location"):
        call.location = True
    elif flag in ("-k", "--insecure"):
        call.insecure = True
    elif flag == "--haproxy-protocol":
        call.haproxy_protocol = True


def _write_out(template: str, result: CurlResult, redirects: int = 0) -> str:
    code = f"{result.status:03d}" if result.status is not None else "000"
    text = template.replace("\\n", "\n").replace("\\t", "\t")
    text = text.replace("%{http_code}", code).replace("%{response_code}", code)
    text = text.replace("%{url_effective}", result.url).replace("%{num_redirects}", str(redirects))
    return text.replace("%{time_total}", f"{result.seconds:.6f}")


def curl_exit(error: str | None) -> int:
    """curl's exit code for a request that got no HTTP answer, from the words of its ``error``."""
    return next((code for word, code in CURL_EXIT if word in (error or "")), 56)


def next_hop(call: CurlCall, result: CurlResult) -> CurlCall | None:
    """The request ``-L`` sends after ``result`` (a redirect with a Location), or None: not a redirect.

    As curl: a relative Location resolves against the URL asked; 303 turns the request into a GET
    (but HEAD), 301 and 302 turn a POST into a GET (the body dropped), 307 and 308 keep both; a
    method given with ``-X`` is kept on every hop; a custom Host, Authorization or Cookie header is
    not sent to another host.
    """
    location = result.header("location")
    if result.status not in REDIRECTS or not location:
        return None
    url = urljoin(call.url, location.strip())
    method, data = call.method, call.data
    to_get = (result.status == 303 and method != "HEAD") or (result.status in (301, 302) and method == "POST")
    if to_get and not call.custom_method:
        method, data = "GET", None
    headers = call.headers
    if urlsplit(url).hostname != urlsplit(call.url).hostname:
        private = ("host", "authorization", "cookie")
        headers = [h for h in headers if h.partition(":")[0].strip().lower() not in private]
    return replace(call, url=url, method=method, data=data, headers=headers)


def _head(result: CurlResult) -> str:
    return result.status_line + "\n" + "".join(f"{k}: {v}\n" for k, v in result.headers) + "\n"


def run_curl(result_of: Callable[[CurlCall], CurlResult], call: CurlCall, out: Callable[[str], None]) -> int:
    """curl: send ``call`` (and, with ``-L``, its redirects), print as curl prints; the exit code."""
    show_head = call.include or call.verbose or call.dump_header == "-"  # -D FILE: in the pod, not shown
    current, redirects = call, 0
    result = result_of(current)
    while call.location and (following := next_hop(current, result)) is not None:
        if show_head:
            out(_head(result))  # each hop's headers; a followed redirect's body is not shown
        if 0 <= call.max_redirs <= redirects:
            if call.write_out is not None:
                out(_write_out(call.write_out, result, redirects))
            if not call.silent or call.show_error:
                out(f"curl: ({TOO_MANY_REDIRECTS}) Maximum ({call.max_redirs}) redirects followed\n")
            return TOO_MANY_REDIRECTS
        current, redirects = following, redirects + 1
        result = result_of(current)
    failed = call.fail and result.status is not None and result.status >= 400
    if show_head and result.status is not None and not failed:
        out(_head(result))
    if result.status is not None and not call.head and call.output is None and not failed:
        out(result.text)  # -o FILE: a file in the pod
    if call.write_out is not None:
        out(_write_out(call.write_out, result, redirects))
    if result.status is None:
        if not call.silent or call.show_error:
            out(f"curl: ({curl_exit(result.error)}) {result.error}\n")
        return curl_exit(result.error)
    if failed:
        if not call.silent or call.show_error:
            out(f"curl: (22) The requested URL returned error: {result.status}\n")
        return 22
    return 0


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def parse_fortio_load(argv: list[str]) -> LoadSpec:
    options: dict[str, Any] = {}
    headers: list[tuple[str, str]] = []
    url = ""
    words = list(argv)
    while words:
        word = words.pop(0)
        name = word.lstrip("-")
        if word.startswith("-") and name in ("c", "qps", "n", "t", "H", "loglevel", "timeout", "p", "r"):
            if not words:
                raise ExecError(f"fortio load: {word} needs a value")
            value = words.pop(0)
            if name == "H":
                key, sep, val = value.partition(":")
                if not sep:
                    raise ExecError(f"fortio load: -H expects 'Name: value', got {value!r}")
                headers.append((key.strip(), val.strip()))
            else:
                options[name] = value
        elif word.startswith("-") and name in ("quiet", "a", "json", "allow-initial-errors"):
            continue
        elif word.startswith("-"):
            raise ExecError(f"fortio load: flag {word} is not supported here (supported: -c -qps -n -t -H "
                            "-loglevel -quiet)")
        else:
            url = word if "://" in word else f"http://{word}"
    if not url:
        raise ExecError("fortio load: no URL given")
    try:
        spec = LoadSpec(url, connections=int(options.get("c", 4)), qps=float(options.get("qps", 8)),
                        calls=int(options["n"]) if "n" in options else None,
                        seconds=_seconds(options.get("t", "5s")), headers=tuple(headers))
        spec.check()
    except ValueError as error:
        raise ExecError(f"fortio load: {error}") from None
    return spec


def _seconds(text: str) -> float:
    found = _DURATION.match(text.strip())
    if found is None:
        raise ValueError(f"-t: expected a duration such as 10s, got {text!r}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[found.group(2) or "s"]
    return float(found.group(1)) * unit


def execute(state: StateDir, workloads: list[dict[str, Any]], target: str, argv: list[str], *,
            out: Callable[[str], None], container: str | None = None,
            egress: EgressGate | None = None, err: Callable[[str], None] | None = None) -> int:
    """Run ``argv`` as if in ``target``'s pod (``container`` as ``-c``); the exit status. ``egress``: the
    mesh's NetworkPolicies, for the connections a pod without a sidecar opens itself (`egress_gate`).
    ``err``: what the command writes to stderr (curl -v's lines in the proxy container); ``out`` when
    not given."""
    if egress is not None:
        workloads = [{**row, EGRESS_KEY: egress} for row in workloads]
    target = target.split("/", 1)[1] if target.split("/", 1)[0] in ("deploy", "deployment", "pod") else target
    try:
        row = find_source(workloads, target)
    except CurlError as error:
        raise ExecError(f"{target}: {error.message}") from None
    if not argv:
        raise ExecError(f"no command given (after --); supported: {'; '.join(SUPPORTED)}")
    program, args = argv[0].rsplit("/", 1)[-1], argv[1:]
    if container in SIDECAR_CONTAINERS and program == "curl" and not _admin_url(args):
        try:
            return pod_loopback.run(row, parse_curl(args), state.root, out=out, err=err or out)
        except pod_loopback.PodCurlError as error:
            raise ExecError(str(error)) from None
    if container in SIDECAR_CONTAINERS or program == "pilot-agent":
        return _sidecar_admin(row, program, args, out)
    if program == "curl":
        return run_curl(lambda call: _send(state, workloads, row, call), parse_curl(args), out)
    if program == "fortio" and args[:1] == ["curl"]:
        call = parse_curl([word for word in args[1:] if word not in ("-quiet", "--quiet")])
        call.include = True
        return run_curl(lambda c: _send(state, workloads, row, c), call, out)
    if program in ("sh", "ash", "bash"):
        return _shell(state, workloads, row, [program, *args], out=out)
    if program == "fortio" and args[:1] == ["load"]:
        spec = parse_fortio_load(args[1:])
        proxy = urlsplit(row["outbound_proxy"] or "")
        if not row["outbound_proxy"] or proxy.hostname is None or proxy.port is None:
            raise ExecError(f"{row['name']} has no sidecar: fortio load here runs through one")
        for line in run_load((proxy.hostname, proxy.port), spec).report():
            out(line + "\n")
        return 0
    raise ExecError(f"{program!r} does not run on the local mesh; supported: {'; '.join(SUPPORTED)}")


def _shell(state: StateDir, workloads: list[dict[str, Any]], row: dict[str, Any], argv: list[str], *,
           out: Callable[[str], None]) -> int:
    """``sh -c SCRIPT``: the script run by `mini_shell.Shell`, its curl by `run_curl` from ``row``."""
    program, args = argv[0], argv[1:]
    if len(args) != 2 or args[0] != "-c":
        raise ExecError(f"{program}: only `{program} -c SCRIPT` (one script, no other arguments) runs here")

    def curl_in_shell(argv: list[str], write: Callable[[str], None]) -> int:
        return run_curl(lambda call: _send(state, workloads, row, call), parse_curl(argv), write)

    proxy = urlsplit(row.get("outbound_proxy") or "")
    sidecar = (proxy.hostname, proxy.port) if proxy.hostname is not None and proxy.port is not None else None
    shell = Shell(out=out, curl=curl_in_shell, resolve=lambda host, port: _mesh_address(workloads, row, host),
                  sidecar=sidecar)
    try:
        return shell.run(args[1])
    except ShellError as error:
        raise ExecError(str(error)) from None


def _mesh_address(workloads: list[dict[str, Any]], row: dict[str, Any], host: str) -> tuple[str, int] | None:
    """Where ``nc`` reaches a service name from ``row``'s pod (Kubernetes DNS: a short name in its
    namespace, ``svc.ns``): one running instance, as kube-proxy picks a pod; its sidecar's inbound port,
    or its app port when it has none. None: no such service runs."""
    service, namespace = service_of(host, str(row.get("namespace") or "default"))
    found = [w for w in workloads if w["service"] == service and w["healthy"]
             and str(w.get("namespace") or "default") == namespace]
    if not found:
        return None
    chosen = random.choice(found)
    return "127.0.0.1", int(chosen["inbound_port"] or chosen["app_port"])


def _send(state: StateDir, workloads: list[dict[str, Any]], row: dict[str, Any],
          call: CurlCall) -> CurlResult:
    try:
        return curl(state, workloads, row["name"], call.url, method=call.method, headers=call.headers,
                    body=call.data, timeout=call.timeout, insecure=call.insecure, cacert=call.cacert,
                    haproxy_protocol=call.haproxy_protocol, haproxy_clientip=call.haproxy_clientip,
                    egress=row.get(EGRESS_KEY), connect_timeout=call.connect_timeout)
    except CurlError as error:
        raise ExecError(f"curl: {error.message}") from None


def _admin_url(args: list[str]) -> bool:
    """Whether a curl in the proxy container asks Envoy's admin port (``curl localhost:15000/stats``)."""
    url = next((a for a in reversed(args) if not a.startswith("-")), "")
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.port == pod_loopback.ADMIN_PORT and (parts.hostname or "") in pod_loopback.LOOPBACK


def _sidecar_admin(row: dict[str, Any], program: str, args: list[str], out: Callable[[str], None]) -> int:
    """``pilot-agent request GET stats`` / ``curl localhost:15000/PATH``: the sidecar's admin page."""
    if program == "pilot-agent" and len(args) >= 3 and args[0] == "request" and args[1].upper() == "GET":
        path = "/" + args[2].lstrip("/")
    elif program == "curl" and args:
        path = urlsplit(args[-1] if "://" in args[-1] else f"http://{args[-1]}").path or "/"
    else:
        raise ExecError("in the sidecar container: pilot-agent request GET PATH, or "
                        "curl localhost:15000/PATH")
    if not row["admin_port"]:
        raise ExecError(f"{row['name']} has no sidecar")
    if path == "/stats":
        path = "/stats?format=text"  # Envoy's default form of /stats is text
    with urllib.request.urlopen(f"http://127.0.0.1:{row['admin_port']}{path}", timeout=10) as answer:
        out(answer.read().decode("utf-8", errors="replace"))
    return 0
