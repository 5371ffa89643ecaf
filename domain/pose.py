"""A pose update and its status, as the registration loop hands it to every consumer
(headsets, mentor page, Slicer). Units: mm, nanoseconds on the server's monotonic clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from domain.transforms import Mat4, as_transform

STATUSES: tuple[str, ...] = ("tracking", "degraded", "lost")
LIVE_STATUSES: tuple[str, ...] = ("tracking", "degraded")

Status = Literal["tracking", "degraded", "lost"]


class PoseEstimate(Protocol):
    """What a consumer reads of a registration result (registration.Estimate has it)."""

    @property
    def T_sensor_model(self) -> Any: ...
    @property
    def status(self) -> Any: ...  # a status name, or a str-valued enum of one
    @property
    def fitness(self) -> float: ...
    @property
    def rmse_mm(self) -> float: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def timestamp_ns(self) -> int | None: ...


def status_name(status: object) -> str:
    """The plain name of a status given as a str or a str-valued enum."""
    return str(getattr(status, "value", status))


def check_status(status: str) -> Status:
    if status not in STATUSES:
        msg = f"status must be one of {STATUSES}, got {status!r}"
        raise ValueError(msg)
    return status  # type: ignore[return-value]


@dataclass(frozen=True)
class PoseUpdate:
    """One registration result, as the registration loop hands it over.

    ``timestamp_ns`` is the capture time of the depth frame the pose was
    computed from, on the *server's* monotonic clock (time.monotonic_ns).
    """

    T_sensor_model: Mat4
    status: Status
    fitness: float
    rmse_mm: float
    timestamp_ns: int  # None is accepted (and stored as 0) only when status is lost
    seq: int
    sensor: str = ""  # which headset's depth sensor, "" when not a headset
    sensor_frame_seq: int = -1  # seq of that headset's depth frame, -1 unknown

    def __post_init__(self) -> None:
        # A str-valued Enum (registration's Status) becomes its plain value.
        object.__setattr__(self, "status", check_status(str(getattr(self.status, "value", self.status))))
        object.__setattr__(self, "T_sensor_model", as_transform(self.T_sensor_model, "T_sensor_model"))
        for name in ("fitness", "rmse_mm"):
            value = getattr(self, name)
            # Non-finite is allowed (a lost estimate has rmse inf); it travels as null.
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                msg = f"{name} must be a number, got {value!r}"
                raise ValueError(msg)
            object.__setattr__(self, name, float(value))
        if not isinstance(self.seq, int) or self.seq < 0:
            msg = f"seq must be a non-negative int, got {self.seq!r}"
            raise ValueError(msg)
        if self.timestamp_ns is None and self.status == "lost":
            object.__setattr__(self, "timestamp_ns", 0)  # nothing to age-check on a lost pose
        if not isinstance(self.timestamp_ns, int) or self.timestamp_ns < 0:
            msg = f"timestamp_ns must be a non-negative int (None only when lost), got {self.timestamp_ns!r}"
            raise ValueError(msg)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], seq: int | None = None) -> PoseUpdate:
        """Build from a plain dict; ``seq`` fills in when the dict has none."""
        keys = ("T_sensor_model", "status", "fitness", "rmse_mm", "timestamp_ns")
        missing = [k for k in keys if k not in data] + (["seq"] if "seq" not in data and seq is None else [])
        if missing:
            msg = f"pose update lacks {missing!r}, got keys {sorted(data)!r}"
            raise ValueError(msg)
        extra = {k: data[k] for k in ("sensor", "sensor_frame_seq") if k in data}
        seq_value: Any = data.get("seq", seq)  # validated in __post_init__
        return cls(**{k: data[k] for k in keys}, seq=seq_value, **extra)

    @classmethod
    def from_estimate(cls, estimate: object, seq: int, sensor: str = "", sensor_frame_seq: int = -1) -> PoseUpdate:
        """Duck-typed: anything with T_sensor_model, status, fitness, rmse_mm, timestamp_ns."""
        fields = ("T_sensor_model", "status", "fitness", "rmse_mm", "timestamp_ns")
        missing = [f for f in fields if not hasattr(estimate, f)]
        if missing:
            msg = f"estimate lacks {missing!r}, got {type(estimate).__name__!r}"
            raise ValueError(msg)
        data = {f: getattr(estimate, f) for f in fields}
        return cls(**data, seq=seq, sensor=sensor, sensor_frame_seq=sensor_frame_seq)
