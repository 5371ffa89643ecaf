"""De-identified study keys: a keyed pseudonym, stable per site, never the DICOM UID itself.

A plain hash of a UID could be recomputed by anyone holding the UID; an HMAC with a site
secret cannot. The secret comes from ``SCRUBIN_DEID_KEY`` or a key file created once under
the user's data folder (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

DEID_KEY_ENV = "SCRUBIN_DEID_KEY"
_KEY_FILE = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "scrubin" / "deid.key"


def _site_key() -> bytes:
    env = os.environ.get(DEID_KEY_ENV)
    if env:
        return env.encode()
    try:
        return _KEY_FILE.read_bytes()
    except FileNotFoundError:
        _KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return _KEY_FILE.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key


def pseudonym(value: str, prefix: str) -> str:
    """``prefix-<16 hex>``: an HMAC-SHA256 of ``value`` under the site key."""
    digest = hmac.new(_site_key(), value.encode(), hashlib.sha256).hexdigest()[:16]
    return f"{prefix}-{digest}"
