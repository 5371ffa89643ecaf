"""registration: register the patient model to the operating field and track it.

Public API: :class:`SurfaceModel`, :func:`initial_alignment`, :class:`Tracker`,
:class:`Estimate`, :class:`Status`, :class:`DepthFrame`, :class:`PinholeIntrinsics`;
frame kinds :class:`SurfaceTrace` (tracked pointer) and :class:`CameraPoints`; the
navigation workflow :func:`register_trace` (landmarks + surface trace, or markerless)
with its :class:`NavigationResult`; depth-bias calibration :class:`DepthCalibration`,
:func:`estimate_depth_calibration` from :class:`CalibrationView` frames. Open3D is
imported lazily by the modules that need it.
"""

from __future__ import annotations

from registration.calibration import CalibrationView, DepthCalibration, estimate_depth_calibration
from registration.depth import DepthFrame, PinholeIntrinsics
from registration.estimate import Estimate, Status
from registration.frame_kinds import CHECKS, CameraPoints, FrameKind, SurfaceTrace
from registration.initial_alignment import AlignmentConfig, initial_alignment
from registration.model import SurfaceModel
from registration.navigation import NavigationConfig, NavigationResult, register_trace
from registration.tracker import Tracker, TrackerConfig

__all__ = [
    "CHECKS",
    "AlignmentConfig",
    "CalibrationView",
    "CameraPoints",
    "DepthCalibration",
    "DepthFrame",
    "Estimate",
    "FrameKind",
    "NavigationConfig",
    "NavigationResult",
    "PinholeIntrinsics",
    "Status",
    "SurfaceModel",
    "SurfaceTrace",
    "Tracker",
    "TrackerConfig",
    "estimate_depth_calibration",
    "initial_alignment",
    "register_trace",
]
