"""The theatre service: N isolated sessions, the mentor web server, clean shutdown.

``start`` binds everything or nothing: when one session cannot listen (a second instance
on the same ports, say) the sessions already up are stopped again and one
:class:`ServiceError` line says which session and which ports. ``stop`` ends the loops,
closes every socket and peer connection and closes the audit logs (each row is already
durable when written; closing checkpoints the WAL into the main file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from scrubin.audit import AuditLog, audit_path
from scrubin.config import PHANTOM, Settings
from scrubin.session import SessionError, SessionKeys, TheatreSession

log = logging.getLogger(__name__)

PHANTOM_FOLDER = "phantom-model"


class ServiceError(Exception):
    """The service cannot start; one line naming the session or part and the cause."""


# ------------------------------------------------------------------ phantom cache
def ensure_phantom(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The built-in SYNTHETIC phantom model under ``cache_dir``, prepared once and reused
    while its manifest matches this version and every file's hash."""
    from imaging.prepare import PrepareOptions, prepare_phantom

    folder = cache_dir / PHANTOM_FOLDER
    if phantom_matches(folder):
        log.info("phantom model reused from %s", folder)
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(f"preparing the SYNTHETIC phantom model in {folder} (once)")
    prepare_phantom(folder, PrepareOptions(), progress=None)
    return folder


def phantom_matches(folder: Path) -> bool:
    from imaging import __version__
    from imaging.phantom import SYNTHETIC_STUDY_ID

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        expected = (manifest["study_id"], manifest["generator"], manifest["synthetic"])
        if expected != (SYNTHETIC_STUDY_ID, f"scrubin {__version__}", True):
            return False
        return all(_file_matches(folder / name, entry) for name, entry in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _file_matches(path: Path, entry: dict[str, Any]) -> bool:
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return bool(digest.hexdigest() == entry["sha256"])


def resolve_model(value: str, cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    if value == PHANTOM:
        return ensure_phantom(cache_dir, progress)
    folder = Path(value)
    if not (folder / "manifest.json").is_file():
        msg = f"model {value!r}: not a patient-model folder (no manifest.json; make one with scrubin prepare)"
        raise ServiceError(msg)
    return folder


# ------------------------------------------------------------------ service
class Service:
    """Runs the configured sessions. ``keys`` replaces the on-disk keys of a session
    (demo and tests); otherwise each session keeps its own under ``state_dir/keys``."""

    def __init__(
        self,
        settings: Settings,
        keys: dict[str, SessionKeys] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions: dict[str, TheatreSession] = {}
        self.mentor_url: str | None = None
        self._keys = keys or {}
        self._progress = progress
        self._mentor: Any = None
        self._audits: list[AuditLog] = []

    def start(self) -> Service:
        try:
            self._start_mentor()
            for cfg in self.settings.sessions:
                self.sessions[cfg.name] = self._start_session(cfg)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_session(self, cfg: Any) -> TheatreSession:
        model = resolve_model(cfg.model, self.settings.cache_dir, self._progress)
        state = self.settings.state_dir
        keys = self._keys.get(cfg.name) or SessionKeys.load_or_create(state / "keys" / cfg.name)
        audit = AuditLog(audit_path(state / "audit", cfg.name))
        self._audits.append(audit)
        session = TheatreSession(
            cfg,
            model_dir=model,
            keys=keys,
            audit=audit,
            host=self.settings.host,
            token_ttl_s=self.settings.mentor.token_ttl_s,
            # Annotations survive a restart of the service: headsets resume from the same log.
            annotation_store=state / "annotations" / f"{cfg.name}.sqlite" if cfg.persist_annotations else None,
        )
        try:
            return session.start(self._mentor)
        except SessionError as exc:
            raise ServiceError(str(exc)) from None

    def _start_mentor(self) -> None:
        cfg = self.settings.mentor
        if not cfg.enabled:
            return
        try:
            from mentor.config import MentorConfig
            from mentor.server import MentorServer  # being written in parallel
        except ImportError as exc:
            log.warning("mentor page not available (%s): sessions run without it", exc)
            return
        server = MentorServer(MentorConfig(host=cfg.host, port=cfg.port))
        try:
            self.mentor_url = server.start()
        except (OSError, RuntimeError) as exc:
            cause = exc.__cause__ or exc
            reason = getattr(cause, "strerror", None) or str(cause)
            msg = f"mentor page: cannot listen on {cfg.host}:{cfg.port} ({reason})"
            raise ServiceError(msg) from None
        self._mentor = server

    def mentor_link(self, session: str, role: Any = "mentor", name: str = "mentor") -> tuple[str | None, str]:
        """(URL or None when the mentor page is not running, token) for one session."""
        token = self.sessions[session].issue_token(role, name)
        url = None if self._mentor is None else str(self._mentor.url_for(session, token))
        return url, token

    def stop(self) -> None:
        """Idempotent: loops, bridge sockets, mentor peer connections, audit logs."""
        for session in self.sessions.values():
            try:
                session.stop()
            except Exception:
                log.exception("session %s did not stop cleanly", session.name)
        if self._mentor is not None:
            try:
                self._mentor.stop()
            except Exception:
                log.exception("mentor server did not stop cleanly")
            self._mentor = None
        for audit in self._audits:
            audit.close()
        self._audits = []

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """Set ``event`` on SIGINT or SIGTERM (main thread only); restore the old handlers."""
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
