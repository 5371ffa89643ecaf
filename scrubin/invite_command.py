"""``scrubin invite``: a mentor or observer link for a session of a running ``scrubin serve``.

The link's token is signed with the session's token secret, which ``scrubin serve`` keeps in
``STATE_DIR/keys/SESSION/token.secret`` (0600, created on its first start, reused after a
restart), so a link made here verifies in the running server without talking to it. The
page's address comes from ``STATE_DIR/mentor.url``, which ``scrubin serve`` writes once its
mentor page listens (it knows the real port, also when the configured one is 0), or from
``--url`` (a public name in front of the server). The invitation is not written to the
session's audit log: the running server is that log's only writer (its hash chain lives in
its memory); the server audits the join, with the link's name and role, when it is used.
"""

from __future__ import annotations

import math
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path

from scrubin.config import Settings, load_settings

MENTOR_URL_FILE = "mentor.url"


class InviteError(Exception):
    """No link can be made; the message names the session, the file or the value."""


def mentor_url_path(state_dir: Path) -> Path:
    return state_dir / MENTOR_URL_FILE


def write_mentor_url(state_dir: Path, url: str) -> None:
    """Record the running mentor page's address for ``scrubin invite`` (not a secret)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = mentor_url_path(state_dir).with_suffix(".tmp")
    tmp.write_text(url + "\n")
    tmp.replace(mentor_url_path(state_dir))


def remove_mentor_url(state_dir: Path) -> None:
    mentor_url_path(state_dir).unlink(missing_ok=True)


def token_secret(state_dir: Path, session: str) -> bytes:
    path = state_dir / "keys" / session / "token.secret"
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        msg = f"session {session!r} has no token secret at {path}: start `scrubin serve` with this configuration once"
        raise InviteError(msg) from None
    except OSError as exc:
        msg = f"cannot read the token secret {path}: {exc.strerror}"
        raise InviteError(msg) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        msg = f"token secret {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it"
        raise InviteError(msg)
    if len(data) < 32:
        msg = f"token secret {path} must hold at least 32 bytes, got {len(data)}"
        raise InviteError(msg)
    return data


def base_url(settings: Settings, override: str | None) -> str:
    if override is not None:
        if not override.startswith(("http://", "https://")):
            msg = f"--url must start with http:// or https://, got {override!r}"
            raise InviteError(msg)
        return override.rstrip("/")
    recorded = mentor_url_path(settings.state_dir)
    if recorded.is_file():
        return recorded.read_text().strip()
    if settings.mentor.port:
        return f"http://{settings.mentor.host}:{settings.mentor.port}"
    msg = f"no running mentor page recorded in {recorded} and the configured port is 0: start `scrubin serve` or give --url"
    raise InviteError(msg)


def make_invite(
    settings: Settings, session: str, role: str, name: str | None, ttl_s: float | None, url: str | None
) -> tuple[str, float]:
    """(link, expiry as a Unix time) for one person."""
    from mentor.tokens import ROLES, TokenError, issue, verify

    names = [s.name for s in settings.sessions]
    if session not in names:
        msg = f"no session {session!r} in the configuration (sessions: {', '.join(names)})"
        raise InviteError(msg)
    if role not in ROLES:
        msg = f"--role must be one of {', '.join(ROLES)}, got {role!r}"
        raise InviteError(msg)
    ttl = settings.mentor.token_ttl_s if ttl_s is None else ttl_s
    if not math.isfinite(ttl) or ttl <= 0:
        msg = f"--ttl must be a positive number of seconds, got {ttl!r}"
        raise InviteError(msg)
    secret = token_secret(settings.state_dir, session)
    try:
        token = issue(secret, session, role, name or role, ttl_s=ttl)  # type: ignore[arg-type]
        claims = verify(secret, token, session)
    except TokenError as exc:
        raise InviteError(str(exc)) from None
    return f"{base_url(settings, url)}/s/{session}#token={token}", claims.expires_at


def run_invite(
    config: Path | None, session: str, role: str, name: str | None, ttl_s: float | None, url: str | None
) -> None:
    settings = load_settings(config)
    link, expires_at = make_invite(settings, session, role, name, ttl_s, url)
    until = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    # The link alone on stdout (scripts take it from there); the note on stderr.
    sys.stdout.write(link + "\n")
    sys.stdout.flush()
    who = name or role
    sys.stderr.write(f"{role} link for {who!r} in session {session!r}, valid until {until}; send it privately\n")
