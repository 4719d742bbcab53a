"""``sh -c "SCRIPT"`` under `meshkit exec`: the shell shapes Istio's task pages run in a pod, never a shell.

Istio's "TCP Traffic Shifting" task runs ``kubectl exec "$SLEEP" -c sleep -- sh -c "(date; sleep 1) | nc
$INGRESS_HOST $TCP_INGRESS_PORT"``. This module reads such a script with `shlex` and runs it itself;
nothing here starts a process or hands a word to a real shell. What it understands:

- commands: ``date`` (the default format of ``date`` in the sleep image, always UTC:
  ``Mon Nov 12 23:24:57 UTC 2022``), ``sleep N`` (seconds, up to ``MAX_SLEEP_S``), ``echo [-n] WORDS``,
  ``nc HOST PORT`` and ``curl ...`` (the curl of `meshkit.runtime.exec_command`, handed in as a callback);
- ``A; B`` (and a newline), ``A && B``, ``A || B``, a group ``( ... )``, and one pipe ``LEFT | nc HOST PORT``.

``nc HOST PORT`` connects when the pipe starts (as both sides of a shell pipe start together), sends what
the left side writes as it writes it, keeps the connection open while the left side runs (the ``sleep 1``,
which gives the server time to answer), then half-closes and prints what comes back until the server closes
or ``NC_LINGER_S`` pass, as busybox ``nc`` in the sleep image does with a server that answers and closes.
HOST is an address of 127.0.0.0/8 or ``localhost`` (on the local mesh ``$INGRESS_HOST`` is 127.0.0.1, and
the ingress gateway's TCP servers listen on ``meshkit status``'s "TCP Gateway servers" port), or a name the
caller's ``resolve`` knows (a service of the mesh); any other host is an error. A loopback address is
reached straight from this process: on Istio, the sleep pod's sidecar passes a connection to the ingress
gateway's address through unchanged, so for the task's command the path is the same. A service name,
from a pod with a sidecar (``sidecar``: its outbound address), goes through that sidecar as the app's
own TCP does on Istio (iptables hands it to the sidecar): a ``CONNECT name:port`` tunnel, which the
sidecar routes by the mesh's ``tcp`` routes (weights, subsets), mTLS included. From a pod without one,
it resolves to one of its instances as kube-proxy would pick a pod.

Anything else (variables, command substitution, redirections, background jobs, other programs, a pipe
into anything but ``nc``) is a `ShellError` naming what is not supported and listing what is. Every
wait is bounded (``sleep`` up to ``MAX_SLEEP_S``, the connect ``NC_CONNECT_TIMEOUT_S``, the reading
``NC_LINGER_S`` after the half-close, the script to ``MAX_COMMANDS`` commands).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkit.runtime.curl_tls import TlsFailure, authority, open_tunnel

SUPPORTED = ("date", "sleep N", "echo [-n] WORDS", "nc HOST PORT", "curl ...", "A; B", "A && B", "A || B",
             "( ... )", "LEFT | nc HOST PORT")
OPERATORS = ("&&", "||", ";", "|", "(", ")")
PUNCTUATION = "();|&<>"
MAX_SLEEP_S = 30.0
MAX_COMMANDS = 32
NC_CONNECT_TIMEOUT_S = 5.0
NC_LINGER_S = 2.0
NC_MAX_BYTES = 1 << 20

Out = Callable[[str], None]
Resolve = Callable[[str, int], "tuple[str, int] | None"]
Curl = Callable[[list[str], Out], int]


class ShellError(ValueError):
    """The script cannot run here: what is wrong, and what is supported."""


def _supported() -> str:
    return "supported in sh -c: " + ", ".join(SUPPORTED)


# -- parsing ------------------------------------------------------------------------------------------


@dataclass
class Command:
    words: list[str]


@dataclass
class Group:
    body: Steps


@dataclass
class Pipe:
    left: Command | Group
    nc: Command


@dataclass
class Steps:
    """Steps joined by ``;`` / ``&&`` / ``||`` (the joiner before each step but the first)."""

    steps: list[tuple[str, Command | Group | Pipe]] = field(default_factory=list)


def tokens(script: str) -> list[str]:
    """The script's words and operators (``shlex``, POSIX quoting). A word made only of ``( ) ; | & < >``
    is read as operators, quoted or not."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=PUNCTUATION + "\n")
    lexer.whitespace = " \t\r"  # an unquoted newline separates commands, as ";"
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        raw = list(lexer)
    except ValueError as error:  # "No closing quotation", "No escaped character"
        raise ShellError(f"sh -c: cannot read the script: {error}") from None
    found: list[str] = []
    for word in raw:
        if not (word and all(ch in PUNCTUATION + "\n" for ch in word)):
            found.append(word)
            continue
        for op in _operators(word):
            if op != "\n":
                found.append(op)
            elif found and found[-1] not in ("(", ";", "&&", "||", "|"):  # a newline ends a command
                found.append(";")
    return found


def _operators(run: str) -> list[str]:
    ops = []
    while run:
        for op in ("&&", "||", ";", "|", "(", ")", "\n"):
            if run.startswith(op):
                ops.append(op)
                run = run[len(op):]
                break
        else:
            names = {"<": "redirections (<)", ">": "redirections (>)", "&": "background jobs (&)"}
            what = names.get(run[0], run)
            raise ShellError(f"sh -c: {what} are not supported; {_supported()}")
    return ops


def parse(script: str) -> Steps:
    """The script as steps; ShellError for anything outside the shapes this module runs."""
    words = tokens(script)
    for word in words:
        if "$" in word or "`" in word:
            raise ShellError(f"sh -c: {word!r}: variables and command substitution are not supported (the "
                             f"shell you type in expands $VAR inside double quotes first); {_supported()}")
    parser = _Parser(words)
    body = parser.sequence()
    if parser.at < len(words):
        raise ShellError(f"sh -c: unexpected {words[parser.at]!r}; {_supported()}")
    if not body.steps:
        raise ShellError(f"sh -c: empty script; {_supported()}")
    count = _count(body)
    if count > MAX_COMMANDS:
        raise ShellError(f"sh -c: {count} commands; at most {MAX_COMMANDS} run here")
    return body


class _Parser:
    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.at = 0

    def peek(self) -> str | None:
        return self.words[self.at] if self.at < len(self.words) else None

    def sequence(self, closing: str | None = None) -> Steps:
        body = Steps()
        joiner = ";"
        while True:
            token = self.peek()
            if token is None or token == closing:
                return body
            if token in ("&&", "||", "|", ";", ")"):
                raise ShellError(f"sh -c: unexpected {token!r}; {_supported()}")
            body.steps.append((joiner, self.pipeline()))
            token = self.peek()
            if token in (";", "&&", "||"):
                joiner = token
                self.at += 1
                if token != ";" and self.peek() in (None, closing, ";"):
                    raise ShellError(f"sh -c: {token!r} needs a command after it")
            elif token is not None and token != closing:
                raise ShellError(f"sh -c: unexpected {token!r}; {_supported()}")

    def pipeline(self) -> Command | Group | Pipe:
        left = self.element()
        if self.peek() != "|":
            return left
        self.at += 1
        right = self.element()
        if not isinstance(right, Command) or right.words[0] != "nc":
            shown = " ".join(right.words) if isinstance(right, Command) else "( ... )"
            raise ShellError(f"sh -c: a pipe into {shown!r} is not supported: only LEFT | nc HOST PORT; "
                             f"{_supported()}")
        if self.peek() == "|":
            raise ShellError(f"sh -c: one pipe only (LEFT | nc HOST PORT); {_supported()}")
        if isinstance(left, Command) and left.words[0] == "nc":
            raise ShellError("sh -c: nc | nc is not supported")
        return Pipe(left, right)

    def element(self) -> Command | Group:
        token = self.peek()
        if token == "(":
            self.at += 1
            body = self.sequence(closing=")")
            if self.peek() != ")":
                raise ShellError("sh -c: '(' without its ')'")
            self.at += 1
            if not body.steps:
                raise ShellError("sh -c: empty ( )")
            return Group(body)
        words = []
        while (token := self.peek()) is not None and token not in OPERATORS:
            words.append(token)
            self.at += 1
        if not words:
            raise ShellError(f"sh -c: a command is missing before {token!r}" if token else
                             "sh -c: a command is missing at the end")
        _check_command(words)
        return Command(words)


def _check_command(words: list[str]) -> None:
    program, args = words[0].rsplit("/", 1)[-1], words[1:]
    if program == "date":
        if args:
            raise ShellError(f"sh -c: date {' '.join(args)}: only plain `date` is supported")
    elif program == "sleep":
        if len(args) != 1:
            raise ShellError("sh -c: sleep takes one number of seconds (sleep 1)")
        _seconds(args[0])
    elif program == "nc":
        _nc_target(args)
    elif program not in ("echo", "curl"):
        raise ShellError(f"sh -c: {program!r} does not run here; {_supported()}")
    words[0] = program


def _seconds(text: str) -> float:
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        raise ShellError(f"sh -c: sleep {text}: expected seconds such as 1 or 0.5") from None
    if not 0 <= seconds <= MAX_SLEEP_S:
        raise ShellError(f"sh -c: sleep {text}: 0 to {MAX_SLEEP_S:.0f} seconds here")
    return seconds


def _nc_target(args: list[str]) -> tuple[str, int]:
    if len(args) != 2 or args[0].startswith("-"):
        raise ShellError(f"sh -c: nc {' '.join(args)}: only `nc HOST PORT` is supported (no options)")
    host, port = args
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ShellError(f"sh -c: nc {host} {port}: the port must be a number 1-65535")
    return host, int(port)


def _count(body: Steps) -> int:
    total = 0
    for _, step in body.steps:
        if isinstance(step, Group):
            total += _count(step.body)
        elif isinstance(step, Pipe):
            total += 1 + (_count(step.left.body) if isinstance(step.left, Group) else 1)
        else:
            total += 1
    return total


# -- running ------------------------------------------------------------------------------------------


def busybox_date(now: float | None = None) -> str:
    """``date``'s default output in the sleep image, in UTC: ``Mon Nov 12 23:24:57 UTC 2022``."""
    return time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime(time.time() if now is None else now))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


@dataclass
class Shell:
    """Runs parsed scripts: ``out`` prints, ``curl`` runs a curl command line, ``resolve`` maps a mesh
    name and port to a loopback address (None: not a name of the mesh)."""

    out: Out
    curl: Curl
    resolve: Resolve = lambda _host, _port: None
    sidecar: tuple[str, int] | None = None  # the pod's sidecar (its outbound listener), if it has one
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.time

    def run(self, script: str) -> int:
        return self._sequence(parse(script), self.out)

    def _sequence(self, body: Steps, out: Out) -> int:
        status = 0
        for joiner, step in body.steps:
            if (joiner == "&&" and status != 0) or (joiner == "||" and status == 0):
                continue
            status = self._step(step, out)
        return status

    def _step(self, step: Command | Group | Pipe, out: Out) -> int:
        if isinstance(step, Group):
            return self._sequence(step.body, out)
        if isinstance(step, Pipe):
            return self._pipe(step)
        return self._command(step.words, out)

    def _command(self, words: list[str], out: Out) -> int:
        program, args = words[0], words[1:]
        if program == "date":
            out(busybox_date(self.now()) + "\n")
            return 0
        if program == "sleep":
            self.sleep(_seconds(args[0]))
            return 0
        if program == "echo":
            newline = args[:1] != ["-n"]
            out(" ".join(args if newline else args[1:]) + ("\n" if newline else ""))
            return 0
        if program == "curl":
            return self.curl(args, out)
        return self._nc(args, lambda _send: 0)  # nc alone: nothing to send

    def _pipe(self, pipe: Pipe) -> int:
        def left(send: Out) -> int:
            return self._step(pipe.left, send)

        return self._nc(pipe.nc.words[1:], left)

    def _address(self, host: str, port: int) -> tuple[str, int]:
        if is_loopback(host):
            return ("127.0.0.1" if host == "localhost" else host), port
        found = self.resolve(host, port)
        if found is None:
            raise ShellError(f"sh -c: nc {host} {port}: {host!r} is neither a loopback address (127.0.0.0/8, "
                             "localhost; $INGRESS_HOST is 127.0.0.1 here) nor a service of the mesh")
        return found

    def _nc(self, args: list[str], left: Callable[[Out], int]) -> int:
        host, port = _nc_target(args)
        address = self._address(host, port)
        through = self.sidecar if self.sidecar is not None and not is_loopback(host) else None
        try:
            sock = socket.create_connection(through or address, timeout=NC_CONNECT_TIMEOUT_S)
        except OSError as error:
            self.out(f"nc: can't connect to remote host ({address[0]}): {error.strerror or error}\n")
            return 1
        if through is not None:
            try:
                open_tunnel(sock, authority(host, port))
            except (TlsFailure, OSError):  # the sidecar refused the tunnel: as a refused connect
                sock.close()
                self.out(f"nc: can't connect to remote host ({host}): Connection refused\n")
                return 1
        with sock:
            reader = _Reader(sock, self.out)
            reader.start()

            def send(text: str) -> None:
                if text:
                    with contextlib.suppress(OSError):  # the server went away; what it sent still prints
                        sock.sendall(text.encode())

            try:
                left(send)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                reader.join(NC_LINGER_S)
                reader.stop.set()
                reader.join(NC_CONNECT_TIMEOUT_S)
        return 0


class _Reader(threading.Thread):
    """Prints what the server sends, as it comes, until it closes (or ``stop``, or NC_MAX_BYTES)."""

    def __init__(self, sock: socket.socket, out: Out) -> None:
        super().__init__(daemon=True)
        self.sock, self.out = sock, out
        self.stop = threading.Event()

    def run(self) -> None:
        received = 0
        pending = b""
        while not self.stop.is_set() and received < NC_MAX_BYTES:
            try:
                readable, _, _ = select.select([self.sock], [], [], 0.1)
                if not readable:
                    continue
                chunk = self.sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += len(chunk)
            pending += chunk
            text, _, pending = pending.rpartition(b"\n")  # whole lines as they come
            if text:
                self.out(text.decode(errors="replace") + "\n")
        if pending:
            self.out(pending.decode(errors="replace"))
