"""Request-path normalization as Istio configures Envoy (``meshConfig.pathNormalization``).

The listener normalizes the request target ONCE, as the head arrives; the authorization
filter judges that path and the same string is forwarded upstream, so no policy can be
dodged with a spelling the app resolves differently (``/ratings/%2e%2e`` is ``/``).

Modes (Istio's ``ProxyConfig``/``MeshConfig.pathNormalization.normalization``, default BASE):

- ``NONE``: forwarded as received (Istio warns this lets policies be bypassed);
- ``BASE``: Envoy's ``normalize_path``: ``\\`` -> ``/``, %-escapes of unreserved characters
  decoded (others upper-cased), RFC 3986 dot segments resolved;
- ``MERGE_SLASHES``: BASE, then ``//`` -> ``/`` (Envoy's ``merge_slashes``);
- ``DECODE_AND_MERGE_SLASHES``: ``%2F``/``%5C`` decoded first (Envoy's
  ``path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`` without the redirect), then
  MERGE_SLASHES.

In every mode but NONE a path with an invalid escape (``%`` not followed by two hex
digits) or an escaped NUL (``%00``) is refused: ``normalize`` returns None and the
listener answers 400. The query string is kept as sent; a fragment is dropped. This module
must stay allocation-free for the common already-normal path (two substring scans).
"""

from __future__ import annotations

import re

NONE = "NONE"
BASE = "BASE"
MERGE_SLASHES = "MERGE_SLASHES"
DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"
MODES = (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
DEFAULT_MODE = BASE  # Istio's default since 1.8

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")
_ESCAPED_SLASH = re.compile(r"%(2[Ff]|5[Cc])")
_MULTI_SLASH = re.compile(r"//+")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def check_mode(mode: object, where: str) -> str:
    """``mode`` if it is one of MODES (None -> the default); else ValueError naming ``where``."""
    if mode is None:
        return DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"{where}: unknown path normalization {mode!r} (expected one of {', '.join(MODES)})")
    return str(mode)


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else match[0].upper()


def _decode_slash(match: re.Match[str]) -> str:
    return "/" if match[1] in ("2F", "2f") else "\\"


def resolve_dots(path: str) -> str:
    """RFC 3986 dot-segment removal: ``/a/./b/../c`` -> ``/a/c`` (a trailing ``..`` keeps its slash)."""
    segments = path.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if index == last:
                out.append("")
            continue
        out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def normalize_only_path(path: str, mode: str) -> str | None:
    """The path part (no query) normalized under ``mode``; None when it must be refused."""
    if mode == NONE:
        return path
    if "%" in path:
        if _BAD_ESCAPE.search(path) is not None:
            return None
        if mode == DECODE_AND_MERGE_SLASHES:
            path = _ESCAPED_SLASH.sub(_decode_slash, path)
        path = _ESCAPE.sub(_decode_unreserved, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "/." in path or not path.startswith("/"):
        path = resolve_dots(path)
    if mode != BASE and "//" in path:
        path = _MULTI_SLASH.sub("/", path)
    return path


def normalize(target: str, mode: str) -> str | None:
    """The origin-form request target normalized under ``mode`` (query kept, fragment dropped).

    Returns ``target`` itself when nothing changes, None when the path must get a 400.
    """
    if mode == NONE:
        return target
    hash_at = target.find("#")
    if hash_at != -1:
        target = target[:hash_at] or "/"
    cut = target.find("?")
    path = target if cut == -1 else target[:cut]
    if (
        path.startswith("/")
        and "%" not in path
        and "\\" not in path
        and "/." not in path
        and (mode == BASE or "//" not in path)
    ):
        return target  # already normal: the common case
    normal = normalize_only_path(path, mode)
    if normal is None:
        return None
    return normal if cut == -1 else normal + target[cut:]
