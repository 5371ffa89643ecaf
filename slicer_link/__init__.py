"""slicer_link: OpenIGTLink interop with 3D Slicer (OpenIGTLinkIF) for a theatre session.

Public API: :class:`SlicerLinkConfig`, :class:`SlicerLink`, :class:`LandmarkList`,
:class:`SeedTransform`, :func:`landmark_pairs`. pyigtl provides the wire format.
"""

from __future__ import annotations

from slicer_link.config import SlicerLinkConfig
from slicer_link.convert import LandmarkList, SeedTransform, landmark_pairs
from slicer_link.server import SlicerLink

__all__ = ["LandmarkList", "SeedTransform", "SlicerLink", "SlicerLinkConfig", "landmark_pairs"]
