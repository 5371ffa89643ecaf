"""Mentor-page tokens: per session and role, expiring, signed with the session's secret.

A token is ``base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims))``. It names
the session and the role (``mentor`` may annotate, ``observer`` may only watch) and expires;
verification is constant-time and every refusal says why in one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Final, Literal

Role = Literal["mentor", "observer"]
ROLES: Final = ("mentor", "observer")
DEFAULT_TTL_S: Final = 8 * 3600  # a long operation, not a week
MAX_TOKEN_CHARS: Final = 2048


class TokenError(Exception):
    """A token was refused; the message says why (never echoing the secret)."""


@dataclass(frozen=True)
class Claims:
    session: str
    role: Role
    name: str
    expires_at: float
    nonce: str

    @property
    def may_annotate(self) -> bool:
        return self.role == "mentor"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def issue(
    secret: bytes, session: str, role: Role, name: str, ttl_s: float = DEFAULT_TTL_S, now: float | None = None
) -> str:
    if role not in ROLES:
        msg = f"role must be one of {', '.join(ROLES)}, got {role!r}"
        raise TokenError(msg)
    if ttl_s <= 0:
        msg = f"token lifetime must be positive, got {ttl_s!r} s"
        raise TokenError(msg)
    claims = {
        "s": session,
        "r": role,
        "n": name,
        "exp": round((time.time() if now is None else now) + ttl_s, 3),
        "nonce": secrets.token_hex(8),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


def verify(secret: bytes, token: str | None, session: str, now: float | None = None) -> Claims:
    """The token's claims if it is authentic, for this session, and not expired."""
    if not token:
        raise TokenError("missing token")
    # Tokens are base64url text: anything else (non-ASCII, lone surrogates from JSON) is malformed.
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1 or not token.isascii():
        raise TokenError("malformed token")
    body, signature = token.split(".")
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise TokenError("invalid token signature")
    try:
        raw = json.loads(_unb64(body))
        claims = Claims(str(raw["s"]), raw["r"], str(raw["n"]), float(raw["exp"]), str(raw["nonce"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenError("malformed token claims") from None
    if claims.role not in ROLES:
        msg = f"token role must be one of {', '.join(ROLES)}, got {claims.role!r}"
        raise TokenError(msg)
    if claims.session != session:
        msg = f"token is for another session ({claims.session!r}, not {session!r})"
        raise TokenError(msg)
    if (time.time() if now is None else now) >= claims.expires_at:
        raise TokenError("token expired")
    return claims
