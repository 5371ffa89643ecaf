"""How far the tracker extrapolates the last velocity: a persistence learnt from the motion.

The tracker predicts each frame's pose from the last one and the last velocity (se(3),
per second). Constant velocity is right for a head that sweeps smoothly, and wrong for
one that jitters: there the last step says nothing about the next, and extrapolating
it doubles the prediction error. :class:`Persistence` is the least-squares coefficient
``a`` of the autoregression ``v_k = a v_(k-1)`` over recent frames (exponential
forgetting), clipped to [0, 1]: 1 for smooth motion (constant velocity), 0 for a random
walk (constant position), and in between for anything else. It is the best linear
one-step predictor of this kind, costs two running sums, and never moves the fitted
pose: only the start of the next fit and the jump check's reference.

A Kalman filter over the pose itself was tried and left out: at 45 Hz the pose changes
from frame to frame far more than the fit's noise (0.05 mm), so its gain stays near 1
(no gain on smooth motion) and any delay costs accuracy when the head jerks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registration.frames import F64

FORGET = 0.9  # weight of the past per frame: a memory of about ten frames
LEVER_MM = 100.0  # a rotation rate counts as the speed of a point this far away


@dataclass
class Persistence:
    """Running estimate of the velocity's persistence between frames (see module doc)."""

    s_xy: float = 0.0  # sum of <v_k, v_(k-1)>, forgotten at FORGET per frame
    s_xx: float = 0.0  # sum of <v_(k-1), v_(k-1)>

    @property
    def coefficient(self) -> float:
        """The share of the last velocity to extrapolate: 1 until the motion says less."""
        if self.s_xx <= 0.0:
            return 1.0
        return float(min(max(self.s_xy / self.s_xx, 0.0), 1.0))

    def observe(self, velocity: F64, previous: F64) -> None:
        """Add one pair of successive velocities (omega rad/s, v mm/s); rotation rates are
        weighted as the speed of a point at LEVER_MM."""
        w = np.array([LEVER_MM**2] * 3 + [1.0] * 3)
        self.s_xy = FORGET * self.s_xy + float(np.sum(w * velocity * previous))
        self.s_xx = FORGET * self.s_xx + float(np.sum(w * previous * previous))
