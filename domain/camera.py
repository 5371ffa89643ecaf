"""Pinhole camera intrinsics, shared by registration (depth) and the mentor (video).

Camera frame: OpenCV's, x right, y down, z forward, mm. Pixel (u, v) is the centre of
the pixel in column u, row v (the top-left pixel's centre is (0, 0)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# HoloLens 2 AHAT-like articulated-hand-tracking depth camera: 512x512, ~45 Hz, wide FOV.
AHAT_WIDTH = 512
AHAT_HEIGHT = 512
AHAT_FOCAL_PX = 256.0  # about 90 degrees field of view
AHAT_RATE_HZ = 45.0


@dataclass(frozen=True)
class PinholeIntrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def ahat(cls) -> PinholeIntrinsics:
        return cls(
            AHAT_WIDTH,
            AHAT_HEIGHT,
            AHAT_FOCAL_PX,
            AHAT_FOCAL_PX,
            (AHAT_WIDTH - 1) / 2,
            (AHAT_HEIGHT - 1) / 2,
        )

    def matrix(self) -> npt.NDArray[np.float64]:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])
