"""Regexes as Istio judges them: RE2 (the engine Envoy uses), via the ``google-re2`` binding.

`re2_error` says why RE2 refuses a pattern (``(?!...)`` lookarounds, backreferences, repetition
over 1000, bad syntax), exactly as istiod's validation does; `sidecar_error` says why meshkit's
sidecar, which matches with Python's ``re`` (it may load nothing but the standard library, uvloop
and httptools), cannot evaluate a pattern RE2 accepts (``\\pL`` classes, for instance).

Must not: match anything (this is validation only), log (RE2's own error logging is turned off).
"""

from __future__ import annotations

import functools
import re

import re2


@functools.cache
def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refusal to stderr through absl
    return options


def re2_error(pattern: str) -> str | None:
    """None when RE2 compiles ``pattern``, else RE2's reason (``invalid perl operator: (?!``)."""
    try:
        re2.compile(pattern, _options())
    except re2.error as error:
        reason = error.args[0] if error.args else str(error)
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return None


def sidecar_error(pattern: str) -> str | None:
    """None when Python's ``re`` (the sidecar's engine) compiles ``pattern``, else its reason."""
    try:
        re.compile(pattern)
    except re.error as error:
        return str(error)
    return None
