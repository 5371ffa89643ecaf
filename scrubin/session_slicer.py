"""A theatre session's OpenIGTLink link to 3D Slicer (``slicer_link``), wired in one place.

The session tells it what happens (model loaded, pose published, annotations changed) and
asks it once per depth frame for a seed that Slicer sent. Seeds come two ways, each only
when the session's settings allow it (``slicer_link`` refuses and audits otherwise):

* a ``SeedModelToSensor`` transform, used as ``T_sensor_model`` of the next depth frame;
* a ``LandmarksSensor`` point list (positions in the sensor frame of the next depth frame)
  paired by name with ``LandmarksModel`` from Slicer or, failing that, with the model's own
  fiducials: a paired-point alignment whose FRE goes to the audit log.

Either way the tracker restarts from the seed and its confidence checks decide the status:
a seed is a starting point, never a pose shown as tracking on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scrubin.audit import AuditLog
from scrubin.config import SlicerSettings
from scrubin.session import SYSTEM_ACTOR

if TYPE_CHECKING:
    from headset_bridge.messages import Annotation
    from registration import Estimate, SurfaceModel
    from registration.frames import F64
    from slicer_link.convert import LandmarkList, SeedTransform

log = logging.getLogger(__name__)


class SessionSlicer:
    """Start with :meth:`start`; every other method is cheap and thread-safe."""

    def __init__(self, settings: SlicerSettings, host: str, audit: AuditLog) -> None:
        from slicer_link import SlicerLink, SlicerLinkConfig

        config = SlicerLinkConfig(
            enabled=True,
            host=host,
            port=settings.port,
            accept_landmarks=settings.accept_landmarks,
            accept_transform=settings.accept_transform,
            wire_frame=settings.wire_frame,
        )
        self.link = SlicerLink(config, audit, on_landmarks=self._on_landmarks, on_transform=self._on_transform)
        self._audit = audit
        self._lock = threading.Lock()
        self._model: SurfaceModel | None = None
        self._model_landmarks: LandmarkList | None = None
        self._seed: tuple[F64, str] | None = None

    def start(self) -> None:
        self.link.start()
        log.info("OpenIGTLink for 3D Slicer on port %s", self.link.port)

    def stop(self) -> None:
        self.link.stop()

    # -- what the session tells the link ----------------------------------------
    def model_loaded(self, model_dir: Path, model: SurfaceModel) -> None:
        with self._lock:
            self._model = model
        try:
            self.link.publish_meshes(model_dir)
        except ValueError as exc:  # Slicer then lacks the meshes; guidance must go on regardless
            log.error("OpenIGTLink: meshes not published: %s", exc)
            self._audit.append(*SYSTEM_ACTOR, "slicer meshes refused", reason=str(exc)[:200])

    def estimate(self, estimate: Estimate) -> None:
        self.link.publish_estimate(estimate)

    def annotations(self, current: Sequence[Annotation]) -> None:
        self.link.publish_annotations(current)

    def take_seed(self) -> tuple[F64, str] | None:
        """The newest seed from Slicer (``T_sensor_model``, how it was made), once."""
        with self._lock:
            seed, self._seed = self._seed, None
        return seed

    # -- what Slicer sends (slicer_link calls these only when allowed) -----------
    def _on_transform(self, seed: SeedTransform) -> None:
        with self._lock:
            self._seed = (seed.T_sensor_model, f"Slicer transform {seed.device}")

    def _on_landmarks(self, landmarks: LandmarkList) -> None:
        if landmarks.frame == "model":
            with self._lock:
                self._model_landmarks = landmarks
            return
        with self._lock:
            model, model_marks = self._model, self._model_landmarks
        if model is None:
            self._audit.append(*SYSTEM_ACTOR, "slicer landmarks ignored", reason="no patient model loaded yet")
            return
        self._align(model, landmarks, model_marks)

    def _align(self, model: SurfaceModel, sensor: LandmarkList, model_marks: LandmarkList | None) -> None:
        import numpy as np

        from registration import initial_alignment
        from slicer_link.convert import landmark_pairs

        known = model_marks or {m.name: m.position_mm for m in model.fiducials + model.targets}
        try:
            X, Y = landmark_pairs(sensor, known)
            est = initial_alignment(model, np.empty((0, 3)), landmarks=(X, Y))
        except ValueError as exc:
            self._audit.append(*SYSTEM_ACTOR, "slicer landmarks refused", reason=str(exc)[:200])
            return
        self._audit.append(
            *SYSTEM_ACTOR,
            "slicer landmarks aligned",
            pairs=len(X),
            fre_mm=round(est.rmse_mm, 3),
            status=str(est.status),
        )
        with self._lock:
            self._seed = (est.T_sensor_model, f"Slicer landmarks ({len(X)} pairs, FRE {est.rmse_mm:.2f} mm)")
