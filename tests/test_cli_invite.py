"""``scrubin invite``: a link from a separate process that works against a running ``scrubin serve``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mentor_fixtures import post
from test_serve import _lines, _wait_line, tiny_model

from mentor.tokens import verify
from scrubin.config import load_settings
from scrubin.invite_command import InviteError, make_invite

REPO = Path(__file__).resolve().parents[1]
SESSION = "or-i"


def _config(tmp: Path, model: Path) -> Path:
    config = tmp / "serve.toml"
    config.write_text(
        f'state_dir = "{tmp / "state"}"\nstatus_interval_s = 60\n[mentor]\nport = 0\n'
        f'[[sessions]]\nname = "{SESSION}"\nmodel = "{model}"\npub_port = 0\nctl_port = 0\n'
    )
    return config


def _invite(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scrubin.cli", "invite", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_invite_prints_links_that_a_running_serve_accepts(tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_model(tmp_path / "model"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scrubin.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        seen = _wait_line(lines, "ready", 60.0)
        assert any(f"scrubin invite {SESSION} --role" in line for line in seen)
        url_file = tmp_path / "state" / "mentor.url"
        base = url_file.read_text().strip()
        observer = _invite(config, SESSION, "--role", "observer", "--name", "dr-o", "--ttl", "120")
        mentor = _invite(config, SESSION, "--role", "mentor")
        assert observer.returncode == 0 and mentor.returncode == 0, observer.stderr + mentor.stderr
        for done, role, name in ((observer, "observer", "dr-o"), (mentor, "mentor", "mentor")):
            link = done.stdout.strip()
            assert link.startswith(f"{base}/s/{SESSION}#token=") and "\n" not in link
            assert f"{role} link for '{name}' in session '{SESSION}', valid until" in done.stderr
            page, _, token = link.partition("#token=")
            with urllib.request.urlopen(page, timeout=10) as r:  # the page, without the fragment
                assert r.status == 200
            status, reply = post(f"{base}/s/{SESSION}/config", {}, token)  # the running serve accepts it
            assert status == 200 and (reply["role"], reply["name"]) == (role, name)
        _, _, token = observer.stdout.strip().partition("#token=")
        secret = (tmp_path / "state" / "keys" / SESSION / "token.secret").read_bytes()
        claims = verify(secret, token, SESSION)
        assert 100 < claims.expires_at - time.time() <= 120
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not url_file.exists()  # a stopped serve leaves no address behind


def test_invite_refuses_with_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "no-model")
    unknown = _invite(config, "or-x", "--role", "mentor")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "no session 'or-x' in the configuration (sessions: or-i)" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    never_served = _invite(config, SESSION, "--role", "observer")
    assert never_served.returncode == 2 and "has no token secret at" in never_served.stderr
    assert "Traceback" not in never_served.stderr


def test_invite_checks_role_ttl_url_and_the_secret_file(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, tmp_path / "m"))
    keys = tmp_path / "state" / "keys" / SESSION
    keys.mkdir(parents=True)
    secret = keys / "token.secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    with pytest.raises(InviteError, match="--role must be one of mentor, observer, got 'admin'"):
        make_invite(settings, SESSION, "admin", None, None, "http://h:1")
    with pytest.raises(InviteError, match="--ttl must be a positive number of seconds, got -5"):
        make_invite(settings, SESSION, "mentor", None, -5.0, "http://h:1")
    with pytest.raises(InviteError, match="no running mentor page recorded"):
        make_invite(settings, SESSION, "mentor", None, None, None)  # port 0 and no serve running
    link, _ = make_invite(settings, SESSION, "mentor", "dr-x", None, "https://mentor.example/")
    assert link.startswith(f"https://mentor.example/s/{SESSION}#token=")
    assert verify(secret.read_bytes(), link.partition("#token=")[2], SESSION).name == "dr-x"
    secret.chmod(0o644)
    with pytest.raises(InviteError, match="is readable by others"):
        make_invite(settings, SESSION, "mentor", None, None, "http://h:1")
