"""``scrubin serve`` and ``scrubin config dump``: the entry-point side of the service.

``serve`` prints one ``ready`` block (endpoints, allowlist folders, mentor links) once every
socket is bound, a status line per session every ``status_interval_s``, and stops cleanly
on Ctrl-C or SIGTERM (exit 0). Logs go to stderr; ``--json-logs`` makes them one JSON
object per line for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from scrubin.config import Settings, dump_toml, load_settings
from scrubin.invite_command import remove_mentor_url, write_mentor_url
from scrubin.runtime import tune_for_service
from scrubin.session_calibration import describe as describe_depth

console = Console(highlight=False, soft_wrap=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "t": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def use_json_logs() -> None:
    """Entry-point logging choice: every root handler writes JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())


def run_config_dump(config: Path | None) -> None:
    """Print the effective settings (the defaults when no file or environment is set)."""
    settings = load_settings(config) if config is not None else Settings()
    sys.stdout.write(dump_toml(settings))


def run_serve(config: Path | None, json_logs: bool) -> None:
    tune_for_service()
    if json_logs:
        use_json_logs()
    from scrubin.service import Service, stop_on_signals

    settings = load_settings(config)
    stop = threading.Event()
    with stop_on_signals(stop):
        service = Service(settings, progress=lambda m: console.print(m)).start()
        try:
            if service.mentor_url:  # scrubin invite reads the real address (the port may be 0)
                write_mentor_url(settings.state_dir, service.mentor_url)
            _ready(service)
            _watch(service, stop, settings.status_interval_s)
        finally:
            remove_mentor_url(settings.state_dir)
            service.stop()
    console.print("stopped: sockets closed, audit logs closed")


def _ready(service: Any) -> None:
    lines = []
    for name, session in service.sessions.items():
        if not session.model_ready.wait(120.0):  # its mentor room opens with the model
            lines.append(f"session {name}: patient model not loaded yet (see the log); its mentor page follows it")
        keys = session.keys.allowlist_dir
        lines.append(f"session {name}: pub {session.bridge.pub_endpoint} ctl {session.bridge.ctl_endpoint}")
        lines.append(f"  server public key: {session.keys.server.public.decode()}")
        if keys is not None:
            lines.append(
                f"  headset allowlist: {keys} (copy each headset's NAME.key here; scrubin keys new NAME makes a pair)"
            )
        url, token = service.mentor_link(name, "mentor", "mentor")
        lines.append(f"  mentor: {url}" if url else f"  mentor token (no mentor page in this build): {token}")
        if url:
            lines.append(f"  more links: scrubin invite {name} --role mentor|observer [--name NAME] [--ttl SECONDS]")
    lines.append("ready")
    console.print("\n".join(lines))
    sys.stdout.flush()


def _watch(service: Any, stop: threading.Event, interval_s: float) -> None:
    next_at = time.monotonic() + interval_s
    while not stop.wait(max(0.0, min(0.5, next_at - time.monotonic()))):
        if time.monotonic() < next_at:
            continue
        next_at += interval_s
        for session in service.sessions.values():
            s = session.status()
            model = "model loaded" if s.model_loaded else "loading model"
            console.print(
                f"{s.name}: {s.status} | {model} | frames {s.frames} skipped {s.skipped} | "
                f"headsets {s.headsets} | video {s.video_frames} | predicted TRE {s.predicted_tre_mm:.2f} mm"
                + (f" | {depth}" if (depth := describe_depth(s.depth_calibration)) else "")
            )
