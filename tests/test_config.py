"""Service settings: defaults < TOML < SCRUBIN_* environment; one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from imaging_fixtures import run_cli

from scrubin.config import ConfigError, Settings, dump_toml, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scrubin.toml"
    path.write_text(text)
    return path


def test_defaults_round_trip_through_toml(tmp_path: Path) -> None:
    defaults = Settings()
    assert load_settings(_write(tmp_path, dump_toml(defaults))) == defaults
    assert defaults.host == "127.0.0.1" and defaults.mentor.host == "127.0.0.1"  # loopback by default


def test_config_dump_cli_prints_loadable_defaults(tmp_path: Path) -> None:
    result = run_cli("config", "dump")
    assert result.returncode == 0, result.stderr
    assert "[[sessions]]" in result.stdout and "[sessions.registration]" in result.stdout
    assert load_settings(_write(tmp_path, result.stdout)) == Settings()


def test_a_changed_file_round_trips(tmp_path: Path) -> None:
    text = """
state_dir = "/srv/scrubin"
[mentor]
port = 9000
[[sessions]]
name = "or-1"
pub_port = 6000
ctl_port = 6001
[sessions.registration]
init = "seed"
seed_T_world_model = [[1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
[[sessions]]
name = "or-2"
pub_port = 6002
ctl_port = 6003
"""
    settings = load_settings(_write(tmp_path, text))
    assert [s.name for s in settings.sessions] == ["or-1", "or-2"]
    assert settings.sessions[0].registration.seed_T_world_model is not None
    again = load_settings(_write(tmp_path, dump_toml(settings)))
    assert again == settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mentor]\nport = 70000\n", "mentor.port: Input should be less than or equal to 65535, got 70000"),
        ('[[sessions]]\nname = "bad name"\n', "sessions.0.name: String should match pattern"),
        ("bogus = 1\n", "bogus: Extra inputs are not permitted, got 1"),
        ('[[sessions]]\nname = "a"\n[sessions.registration]\ninit = "seed"\n', "needs seed_T_world_model"),
        (
            '[[sessions]]\nname = "a"\n[sessions.registration]\nseed_T_world_model = [[1, 0], [0, 1]]\n',
            "sessions.0.registration.seed_T_world_model: must be a 4x4 matrix",
        ),
        ('[[sessions]]\nname = "a"\npub_port = 7000\nctl_port = 7000\n', "pub_port and ctl_port must differ"),
        ('[[sessions]]\nname = "a"\n[[sessions]]\nname = "a"\npub_port = 1\nctl_port = 2\n', "got 'a' twice"),
        ('[[sessions]]\nname = "a"\npub_port = 8470\nctl_port = 1\n', "got 8470 twice"),
        ("sessions = []\n", "sessions: List should have at least 1 item"),
        ("[mentor\n", "not valid TOML"),
    ],
)
def test_bad_values_give_one_line_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"config {path}: ")
    assert expected in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_settings(tmp_path / "nope.toml")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "[mentor]\nport = 9000\n")
    monkeypatch.setenv("SCRUBIN_MENTOR__PORT", "9100")
    monkeypatch.setenv("SCRUBIN_SESSIONS", '[{"name": "env-1", "pub_port": 6100, "ctl_port": 6101}]')
    settings = load_settings(path)
    assert settings.mentor.port == 9100
    assert [s.name for s in settings.sessions] == ["env-1"]


def test_bad_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRUBIN_STATUS_INTERVAL_S", "-1")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert "status_interval_s: Input should be greater than 0, got '-1'" in str(err.value)
    assert "SCRUBIN_* environment" in str(err.value)


def test_serve_refuses_a_bad_file_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[sessions]]\nname = 'x'\npub_port = -5\n")
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: config ") and "sessions.0.pub_port" in lines[0] and "-5" in lines[0]
