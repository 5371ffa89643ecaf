"""Service configuration: defaults < TOML file < ``SCRUBIN_*`` environment variables.

Nested fields use ``__`` in the environment (``SCRUBIN_MENTOR__PORT=8471``); lists such as
``sessions`` take JSON (``SCRUBIN_SESSIONS='[{"name": "or-2"}]'``). Every problem becomes one
:class:`ConfigError` line naming the field and quoting the value. ``dump_toml`` writes the
settings back as TOML (``scrubin config dump`` prints the defaults), and reading that text
gives the same settings again.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "SCRUBIN_"
PHANTOM = "phantom"  # the ``model`` value that means the built-in SYNTHETIC phantom
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ConfigError(Exception):
    """The configuration is unusable; the message is one line naming the field."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scrubin"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RegistrationSettings(_Strict):
    mesh: str = "skin"  # the model's mesh that the depth camera sees
    target: str = "lesion"  # landmark where TRE is predicted and reported
    init: Literal["markerless", "seed"] = "markerless"
    # Seed pose of the patient model in the headset's world (4x4, mm), for ``init = "seed"``.
    seed_T_world_model: list[list[float]] | None = None
    init_stride: int = Field(default=2, ge=1, le=8)  # depth pixels used for the first alignment
    # The surgeon looks at the head: keep points within this radius of a point this far
    # behind the surface at the image centre (drapes, table, room drop out).
    init_crop_radius_mm: float = Field(default=120.0, gt=0)
    init_crop_depth_mm: float = Field(default=60.0, ge=0)
    reinit_after_lost: int = Field(default=10, ge=1)  # consecutive lost frames before re-initialising
    sensor_headset: str | None = None  # whose depth frames to register (default: first to send)
    # Per-headset depth-bias correction (registration.calibration), a file per headset key
    # next to the session's keys: "off" ignores it; "apply" (default) applies a stored one,
    # which someone put there on purpose; "learn" also estimates it from the headset's own
    # trusted frames of several viewpoints - opt-in, because a wrong scale learned
    # silently would shift every overlay. Learned values must pass the estimator's checks.
    depth_calibration: Literal["off", "apply", "learn"] = "apply"
    depth_calibration_min_views: int = Field(default=6, ge=3, le=12)  # distinct trusted viewpoints
    depth_calibration_max_scale_error: float = Field(default=0.05, gt=0, le=0.05)  # |scale - 1| allowed

    @field_validator("seed_T_world_model")
    @classmethod
    def _four_by_four(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is None:
            return None
        if len(value) != 4 or any(len(row) != 4 for row in value):
            msg = f"must be a 4x4 matrix (4 rows of 4 numbers), got {value!r}"
            raise ValueError(msg)
        if not all(math.isfinite(v) for row in value for v in row):
            msg = f"must be finite, got {value!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _seed_given(self) -> RegistrationSettings:
        if self.init == "seed" and self.seed_T_world_model is None:
            msg = "init = 'seed' needs seed_T_world_model (4x4), got None"
            raise ValueError(msg)
        return self


class SlicerSettings(_Strict):
    """OpenIGTLink for 3D Slicer (``slicer_link``); off unless enabled. Unencrypted and
    unauthenticated: it binds the service host (127.0.0.1 by default) - tunnel over SSH."""

    enabled: bool = False
    port: int = Field(default=18944, ge=0, le=65535)  # 0 = ephemeral
    accept_landmarks: bool = False  # landmark point lists from Slicer seed a paired-point alignment
    accept_transform: bool = False  # a SeedModelToSensor transform from Slicer seeds the tracker
    wire_frame: Literal["RAS", "LPS"] = "RAS"  # model-side coordinates on the wire (Slicer's scene is RAS)


class SessionSettings(_Strict):
    name: str = Field(default="theatre-1", pattern=_NAME_PATTERN)
    model: str = PHANTOM  # a patient-model folder (``scrubin prepare``), or "phantom"
    pub_port: int = Field(default=5570, ge=0, le=65535)  # 0 = ephemeral
    ctl_port: int = Field(default=5571, ge=0, le=65535)
    video: bool = True  # relay headset video to the mentor room
    # Keep the annotation log in state_dir/annotations/<name>.sqlite so a restarted
    # service resumes the same epoch: headsets replay what they missed, nothing is lost.
    persist_annotations: bool = True
    # Per-frame records kept for status and reports (~1 kB each): 18,000 is 5 min at 60 Hz.
    history_frames: int = Field(default=18_000, ge=100)
    # Headset video camera (width, height, fx, fy, cx, cy in pixels), assumed to sit where
    # the depth camera is; the default is the demo's simulated camera.
    video_intrinsics: list[float] = Field(default_factory=lambda: [640.0, 480.0, 256.0, 256.0, 319.5, 239.5])
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    slicer: SlicerSettings = Field(default_factory=SlicerSettings)

    @field_validator("video_intrinsics")
    @classmethod
    def _intrinsics(cls, value: list[float]) -> list[float]:
        if len(value) != 6 or not all(math.isfinite(v) and v >= 0 for v in value) or min(value[:4]) <= 0:
            msg = f"must be [width, height, fx, fy, cx, cy] with positive sizes and focal lengths, got {value!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> SessionSettings:
        if self.pub_port and self.pub_port == self.ctl_port:
            msg = f"pub_port and ctl_port must differ, got {self.pub_port} for both"
            raise ValueError(msg)
        return self


class MentorSettings(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    token_ttl_s: float = Field(default=8 * 3600.0, gt=0)


class Settings(BaseSettings):
    """Everything ``scrubin serve`` needs. Loopback only unless ``host`` says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    host: str = "127.0.0.1"
    # Keys, token secrets and audit logs, one sub-folder per session.
    state_dir: Path = Path("scrubin-state")
    cache_dir: Path = Field(default_factory=default_cache_dir)  # the prepared phantom
    status_interval_s: float = Field(default=5.0, gt=0)
    mentor: MentorSettings = Field(default_factory=MentorSettings)
    sessions: list[SessionSettings] = Field(default_factory=lambda: [SessionSettings()], min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values: the environment overrides it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        names = [s.name for s in self.sessions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            msg = f"session names must be unique, got {dup[0]!r} twice"
            raise ValueError(msg)
        ports = [p for s in self.sessions for p in (s.pub_port, s.ctl_port) if p]
        if self.mentor.enabled and self.mentor.port:
            ports.append(self.mentor.port)
        clash = sorted({p for p in ports if ports.count(p) > 1})
        if clash:
            msg = f"every port must be used once (sessions and mentor), got {clash[0]} twice"
            raise ValueError(msg)
        return self


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file at ``path``, then the environment, then ``overrides``."""
    where = f"config {path}" if path is not None else f"config ({ENV_PREFIX}* environment)"
    data = _read_toml(path) if path is not None else {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc)}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"config {path}: no such file"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"config {path}: unreadable ({exc})"
        raise ConfigError(msg) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"config {path}: not valid TOML ({exc})"
        raise ConfigError(msg) from None


def describe(exc: ValidationError) -> str:
    """One line: every failing field by its dotted path, what is wrong, the value given."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        message = str(err["msg"]).removeprefix("Value error, ")
        if "got " in message:
            parts.append(f"{loc}: {message}")
        else:
            parts.append(f"{loc}: {message}, got {err.get('input')!r:.80}")
    return "; ".join(parts)


# ------------------------------------------------------------------ TOML out
def dump_toml(settings: Settings) -> str:
    """The settings as TOML text that ``load_settings`` reads back to equal settings."""
    lines = ["# scrubin serve configuration (defaults < this file < SCRUBIN_* environment)"]
    _table(settings.model_dump(mode="json"), [], lines)
    return "\n".join(lines) + "\n"


def _table(data: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v) and v is not None}
    for key, value in scalars.items():
        lines.append(f"{key} = {_value(value)}")
    for key, value in data.items():
        if _is_table(value):
            lines += ["", f"[{'.'.join([*prefix, key])}]"]
            _table(value, [*prefix, key], lines)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{'.'.join([*prefix, key])}]]"]
                _table(item, [*prefix, key], lines)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    msg = f"cannot write {type(value).__name__} to TOML, got {value!r}"
    raise TypeError(msg)
