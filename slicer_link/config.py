"""Settings of the OpenIGTLink link to 3D Slicer: off, loopback-only and read-only by default."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

DEFAULT_PORT = 18944  # OpenIGTLink's registered port, what Slicer's connector proposes
IGTL_DEVICE_NAME_BYTES = 20  # the header's device-name field
WireFrame = Literal["RAS", "LPS"]


@dataclass(frozen=True)
class SlicerLinkConfig:
    """How a session serves OpenIGTLink.

    ``wire_frame`` is the frame of model-side coordinates on the wire (meshes, annotation
    points, model landmarks, the model side of transforms). 3D Slicer's OpenIGTLinkIF puts
    POLYDATA and POINT coordinates straight into its RAS scene, so ``"RAS"`` (default) is
    what makes the meshes line up with a CT loaded into Slicer; ``"LPS"`` sends scrubin's
    own frame unchanged, for peers that expect DICOM LPS.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port (tests)
    accept_landmarks: bool = False
    accept_transform: bool = False
    wire_frame: WireFrame = "RAS"
    transform_device: str = "ModelToSensor"
    status_device: str = "ModelToSensorStatus"
    annotations_device: str = "Annotations"
    landmarks_sensor_device: str = "LandmarksSensor"
    landmarks_model_device: str = "LandmarksModel"
    seed_transform_device: str = "SeedModelToSensor"
    max_clients: int = 4
    max_incoming_bytes: int = 1 << 20  # we only take POINT / TRANSFORM / STRING: small
    max_landmarks: int = 64
    send_timeout_s: float = 10.0  # a peer that takes nothing for this long is dropped

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            msg = f"slicer host must be a non-empty str, got {self.host!r}"
            raise ValueError(msg)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            msg = f"slicer port must be an int in [0, 65535], got {self.port!r}"
            raise ValueError(msg)
        if self.wire_frame not in ("RAS", "LPS"):
            msg = f"slicer wire_frame must be 'RAS' or 'LPS', got {self.wire_frame!r}"
            raise ValueError(msg)
        for name in (
            "transform_device",
            "status_device",
            "annotations_device",
            "landmarks_sensor_device",
            "landmarks_model_device",
            "seed_transform_device",
        ):
            _check_device_name(getattr(self, name), name)
        names = [self.transform_device, self.seed_transform_device, self.landmarks_sensor_device]
        names += [self.landmarks_model_device, self.annotations_device, self.status_device]
        if len(set(names)) != len(names):
            msg = f"slicer device names must differ from each other, got {names!r}"
            raise ValueError(msg)
        for name in ("max_clients", "max_incoming_bytes", "max_landmarks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"slicer {name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        if not self.send_timeout_s > 0:
            msg = f"slicer send_timeout_s must be > 0, got {self.send_timeout_s!r}"
            raise ValueError(msg)

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect (the only safe setting: no TLS, no auth)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _check_device_name(value: object, field: str) -> None:
    if not isinstance(value, str) or not value or not value.isascii() or not value.isprintable():
        msg = f"slicer {field} must be a non-empty printable ASCII str, got {value!r}"
        raise ValueError(msg)
    if len(value) > IGTL_DEVICE_NAME_BYTES:
        msg = f"slicer {field} must fit OpenIGTLink's {IGTL_DEVICE_NAME_BYTES}-byte device name, got {value!r}"
        raise ValueError(msg)
