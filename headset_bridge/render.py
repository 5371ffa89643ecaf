"""What the headset would show: the overlay over its camera frame, as a PNG.

Pinhole projection of the model's vertices and the annotations (both LPS mm)
through ``T_camera_model``; when the pose is not live the overlay is not drawn
at all and the frame says why (the same rule a real headset follows).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from headset_bridge.client import PoseView
from headset_bridge.messages import Annotation, Mat4

Intrinsics = tuple[float, float, float, float]  # fx, fy, cx, cy (pixels)


def project(points_mm: npt.ArrayLike, T_camera_model: Mat4, intrinsics: Intrinsics) -> npt.NDArray[np.float64]:
    """(N, 3) model mm -> (M, 2) pixels of the points in front of the camera (z > 1 mm)."""
    p = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    cam = p @ T_camera_model[:3, :3].T + T_camera_model[:3, 3]
    cam = cam[cam[:, 2] > 1.0]
    fx, fy, cx, cy = intrinsics
    return np.column_stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy])


def _background(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if image.ndim == 2:  # depth or grey: normalise for display
        img = image.astype(np.float64)
        valid = img[img > 0]
        hi = float(np.percentile(valid, 99)) if valid.size else 1.0
        return np.clip(img / max(hi, 1e-9), 0, 1)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    msg = f"image must be (H, W) or (H, W, 3), got shape {image.shape!r}"
    raise ValueError(msg)


def render_png(
    path: Path,
    image: npt.NDArray[Any],
    intrinsics: Intrinsics,
    view: PoseView,
    model_points_mm: npt.ArrayLike | None = None,
    annotations: Iterable[Annotation] = (),
    T_camera_sensor: Mat4 | None = None,
    max_points: int = 20_000,
) -> Path:
    """Write the headset's view to ``path``; the overlay only if ``view.live``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape[:2]
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(_background(image), cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    if view.live and view.T_sensor_model is not None:
        T = view.T_sensor_model if T_camera_sensor is None else T_camera_sensor @ view.T_sensor_model
        _draw_overlay(ax, T, intrinsics, model_points_mm, annotations, max_points)
        colour, label = ("orange", f"DEGRADED  rmse {view.rmse_mm:.1f} mm") if view.flagged else ("lime", "TRACKING")
    else:
        colour, label = "red", f"OVERLAY HIDDEN: {view.reason or view.status}"
    ax.text(
        8,
        8,
        f"{label}   pose #{view.seq}",
        color=colour,
        fontsize=10,
        va="top",
        family="monospace",
        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": colour},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_overlay(
    ax: Any, T: Mat4, k: Intrinsics, model: npt.ArrayLike | None, annotations: Iterable[Annotation], max_points: int
) -> None:
    if model is not None:
        pts = np.asarray(model, dtype=np.float64).reshape(-1, 3)
        if len(pts) > max_points:  # evenly thinned, deterministic
            pts = pts[:: len(pts) // max_points + 1]
        uv = project(pts, T, k)
        ax.scatter(uv[:, 0], uv[:, 1], s=0.5, c="cyan", alpha=0.5, linewidths=0)
    for ann in annotations:
        uv = project(ann.points_mm, T, k)
        if len(uv) == 0:
            continue
        if ann.kind == "stroke" and len(uv) > 1:
            ax.plot(uv[:, 0], uv[:, 1], color=ann.color, lw=2)
        else:
            ax.scatter(uv[:, 0], uv[:, 1], s=30, c=ann.color, marker="x")
        if ann.text:
            ax.text(uv[0, 0] + 4, uv[0, 1] - 4, ann.text, color=ann.color, fontsize=8)
