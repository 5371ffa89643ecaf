"""CurveZMQ key pairs in the standard ZeroMQ certificate format, and the allowlist.

``NAME.key`` holds the public key, ``NAME.key_secret`` both keys (mode 0600).
The allowlist is a folder of public certificates: one file per headset, the
file's stem is the headset name. Revoking a headset is deleting its file (and
calling :meth:`Allowlist.reload`).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BANNER = """#   ****  Generated on {now} by scrubin  ****
#   ZeroMQ CURVE {what} Certificate
#   {advice}

"""


@dataclass(frozen=True)
class KeyPair:
    """Z85-encoded (40 ASCII bytes) CURVE keys."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        msg = f"key name must be 1-64 of [A-Za-z0-9_.-] starting alphanumeric, got {name!r}"
        raise ValueError(msg)
    return name


def _cert_text(what: str, advice: str, public: bytes, secret: bytes | None) -> str:
    text = _BANNER.format(now=datetime.datetime.now().isoformat(timespec="seconds"), what=what, advice=advice)
    text += "metadata\ncurve\n"
    text += f'    public-key = "{public.decode("ascii")}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    return text


def write_keypair(directory: Path, name: str, pair: KeyPair | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret``; refuse to overwrite."""
    check_name(name)
    pair = pair or KeyPair.generate()
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            msg = f"refusing to overwrite an existing key file, got {str(path)!r}"
            raise FileExistsError(msg)
    # Create the secret file 0600 from the start: no window where others may read it.
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_cert_text("**Secret**", "DO NOT PROVIDE THIS FILE TO OTHER USERS.", pair.public, pair.secret))
    os.chmod(secret_path, 0o600)  # umask cannot widen it, but be explicit
    public_path.write_text(_cert_text("Public", "Share with the bridge operator for the allowlist.", pair.public, None))
    return public_path, secret_path


def load_keypair(secret_path: Path) -> KeyPair:
    """Load a ``.key_secret`` certificate."""
    public, secret = zmq.auth.load_certificate(secret_path)
    if secret is None:
        msg = f"certificate has no secret key, got {str(secret_path)!r}"
        raise ValueError(msg)
    return KeyPair(public, secret)


def load_public(path: Path) -> bytes:
    public, _ = zmq.auth.load_certificate(path)
    return public


class Allowlist:
    """Thread-safe map of authorised public key (Z85) -> headset name."""

    def __init__(self, keys: dict[str, bytes] | None = None, directory: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._static = {check_name(n): k for n, k in (keys or {}).items()}
        self._directory = directory
        self._by_key: dict[bytes, str] = {}
        self._revoked: dict[bytes, str] = {}  # removed since the last refresh()
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._bad_signature: tuple[tuple[str, int, int], ...] | None = None
        self.reload()

    def reload(self) -> None:
        """Read the folder (and the keys added in memory) now; ValueError or OSError on a
        bad key file, leaving the list as it was."""
        signature = self._folder_signature()
        entries = dict(self._static)
        if self._directory is not None:
            for path in sorted(self._directory.glob("*.key")):
                entries[check_name(path.stem)] = load_public(path)
        by_key: dict[bytes, str] = {}
        for name, key in entries.items():
            if len(key) != 40:
                msg = f"public key of {name!r} must be 40 Z85 chars, got {key!r}"
                raise ValueError(msg)
            by_key[key] = name
        with self._lock:
            self._revoked.update({k: n for k, n in self._by_key.items() if k not in by_key})
            self._by_key, self._signature = by_key, signature
        log.info("allowlist holds %d headset key(s)", len(by_key))

    def refresh(self) -> dict[bytes, str]:
        """Re-read the folder if a ``*.key`` file appeared, changed or went; return the keys
        revoked since the last call (key -> name). A file that cannot be read (half copied,
        not a key) keeps the previous list and is reported once, not at every call."""
        if self._directory is not None:
            signature = self._folder_signature()
            if signature != self._signature and signature != self._bad_signature:
                try:
                    self.reload()
                    self._bad_signature = None
                except (ValueError, OSError) as exc:
                    self._bad_signature = signature
                    log.warning("allowlist folder %s not reloaded, keeping the previous keys: %s", self._directory, exc)
        with self._lock:
            revoked, self._revoked = self._revoked, {}
        return revoked

    def _folder_signature(self) -> tuple[tuple[str, int, int], ...]:
        if self._directory is None:
            return ()
        out = []
        for path in sorted(self._directory.glob("*.key")):
            try:
                st = path.stat()
            except OSError:  # removed between the listing and the stat
                continue
            out.append((path.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def add(self, name: str, public: bytes) -> None:
        with self._lock:
            self._static[check_name(name)] = public
        self.reload()

    def remove(self, name: str) -> None:
        """Revoke a key added with :meth:`add` (delete the file for folder entries, then reload)."""
        with self._lock:
            if self._static.pop(name, None) is None:
                msg = f"no such key added in memory, got {name!r}"
                raise KeyError(msg)
        self.reload()

    def name_of(self, public_z85: bytes) -> str | None:
        with self._lock:
            return self._by_key.get(public_z85)

    # zmq.auth credentials-provider protocol
    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.name_of(key) is not None
        if not allowed:
            log.warning("ZAP denied unknown CURVE key %r (domain %r)", key, domain)
        return allowed
