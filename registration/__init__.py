"""registration: register the patient model to the operating field and track it.

Public API: :class:`SurfaceModel`, :func:`initial_alignment`, :class:`Tracker`,
:class:`Estimate`, :class:`Status`, :class:`DepthFrame`, :class:`PinholeIntrinsics`.
Open3D is imported lazily by the modules that need it.
"""

from __future__ import annotations

from registration.depth import DepthFrame, PinholeIntrinsics
from registration.estimate import Estimate, Status
from registration.initial_alignment import AlignmentConfig, initial_alignment
from registration.model import SurfaceModel
from registration.tracker import Tracker, TrackerConfig

__all__ = [
    "AlignmentConfig",
    "DepthFrame",
    "Estimate",
    "PinholeIntrinsics",
    "Status",
    "SurfaceModel",
    "Tracker",
    "TrackerConfig",
    "initial_alignment",
]
