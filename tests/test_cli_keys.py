"""``scrubin keys new``: a CurveZMQ key pair a headset and the server can use."""

from __future__ import annotations

import stat
from pathlib import Path

import zmq.auth
from imaging_fixtures import run_cli


def test_keys_new_writes_a_usable_pair(tmp_path: Path) -> None:
    result = run_cli("keys", "new", "headset-1", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "headset-1.key", tmp_path / "headset-1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pub_only, no_secret = zmq.auth.load_certificate(str(public))
    pub, sec = zmq.auth.load_certificate(str(secret))
    assert pub_only == pub and no_secret is None and sec is not None and len(pub) == 40
    again = run_cli("keys", "new", "headset-1", "--dir", str(tmp_path))
    assert again.returncode == 2 and "error:" in again.stderr  # never overwrites a key
