"""meshkit's demo JWT issuer: one signing key per MESHKIT_HOME, its public JWKS, and minted tokens.

Istio's JWT tasks fetch keys and tokens from github.com; with no internet, `meshkit jwt issue`
mints tokens with this key and the control plane serves the public keys at
``/.well-known/jwks.json`` (with Istio's own sample key, so Istio's sample tokens verify against
the same URL). The private key is an EC P-256 JWK in ``<control dir>/jwt/demo-key.json`` (0600, its
directory 0700), made once, atomically, by whichever process needs it first.

Uses the JOSE library (``joserfc``); it must not be imported by the sidecar (it is control-plane
and CLI code). Teaching material only: anyone who can read MESHKIT_HOME can mint tokens.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

KEY_DIR = "jwt"
KEY_FILE = "demo-key.json"
DEFAULT_ISSUER = "testing@secure.istio.io"  # Istio's tasks' issuer: their YAML keeps it
DEFAULT_SUBJECT = "testing@secure.istio.io"
JWKS_PATH = "/.well-known/jwks.json"
ISTIO_SAMPLE_JWKS_PATH = "/.well-known/istio-samples/jwks.json"


class DemoKeyError(ValueError):
    """The demo key file exists but cannot be used; the message names the file."""


def istio_sample_jwks() -> dict[str, Any]:
    """Istio's ``security/tools/jwt/samples/jwks.json`` (Apache-2.0; see istio_samples/README.md)."""
    text = resources.files("meshkit.control").joinpath("istio_samples/jwks.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def key_path(control_dir: Path | str) -> Path:
    return Path(control_dir) / KEY_DIR / KEY_FILE


def load_or_create_key(control_dir: Path | str) -> ECKey:
    """The demo key of this control dir, generated on first use (0600; concurrent first uses agree)."""
    path = key_path(control_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        key = ECKey.generate_key("P-256", auto_kid=True)
        temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(key.as_dict(private=True), out)
        try:
            os.link(temporary, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    try:
        return ECKey.import_key(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise DemoKeyError(f"{path}: not a usable EC private key in JWK form ({exc})") from None


def public_jwks(control_dir: Path | str) -> dict[str, Any]:
    """The JWKS served at ``/.well-known/jwks.json``: the demo key, then Istio's sample key."""
    key = load_or_create_key(control_dir)
    demo = {**key.as_dict(private=False), "alg": "ES256", "use": "sig"}
    return {"keys": [demo, *istio_sample_jwks()["keys"]]}


def issue(
    control_dir: Path | str, claims: dict[str, Any], *, expires_s: float | None = 3600.0,
    issuer: str = DEFAULT_ISSUER, subject: str = DEFAULT_SUBJECT, now: float | None = None,
) -> str:
    """A token signed by the demo key: ``iss``, ``sub``, ``iat``, ``exp`` (unless None), then ``claims``."""
    key = load_or_create_key(control_dir)
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {"iss": issuer, "sub": subject, "iat": issued}
    if expires_s is not None:
        body["exp"] = issued + int(expires_s)
    body.update(claims)
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "JWT"}, body, key, algorithms=["ES256"])


def parse_claims(pairs: list[str]) -> dict[str, Any]:
    """``["groups=group1,group2", "foo=bar", 'extra={"a":1}']`` -> claims.

    ``k=v`` is a string; a value with commas is a list of strings (``groups``/``scope`` as in
    Istio's samples); a value that parses as JSON object/array/number/bool is taken as JSON.
    """
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f'--claims {pair!r}: expected NAME=VALUE (e.g. "groups=group1,group2")')
        parsed: Any = value
        if value[:1] in ("{", "[") or value in ("true", "false") or value.lstrip("-").isdigit():
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        elif "," in value:
            parsed = [item for item in value.split(",") if item]
        claims[name] = parsed
    return claims
