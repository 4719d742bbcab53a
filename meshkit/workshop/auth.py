"""Secrets of a workshop: the instructor token, attendee tokens and the join code.

Tokens are random (``secrets``), sent as ``Authorization: Bearer <token>`` and compared in constant
time (`hmac.compare_digest`). The server keeps attendee tokens only as SHA-256 digests; the
instructor token is kept as is in the instructor's own state dir so ``serve`` can print it again
after a restart. The join code is short and unambiguous enough to read off a projector.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

INSTRUCTOR_PREFIX = "mki_"
ATTENDEE_PREFIX = "mka_"
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L
_CODE_LENGTH = 6


def new_instructor_token() -> str:
    return INSTRUCTOR_PREFIX + secrets.token_urlsafe(24)


def new_attendee_token() -> str:
    return ATTENDEE_PREFIX + secrets.token_urlsafe(24)


def new_attendee_id() -> str:
    return "a-" + secrets.token_hex(6)


def new_join_code() -> str:
    """Six characters, shown as ``ABC-234``."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    return f"{raw[:3]}-{raw[3:]}"


def normalize_code(code: str) -> str:
    """What a person typed (``abc234``, ``ABC 234``) in the canonical ``ABC-234`` form."""
    raw = "".join(ch for ch in code.upper() if ch.isalnum())
    return f"{raw[:3]}-{raw[3:]}" if len(raw) == _CODE_LENGTH else raw


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is stored and looked up by."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets (time does not depend on where they differ)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None
