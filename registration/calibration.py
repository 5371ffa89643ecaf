"""Depth-bias calibration of a time-of-flight depth camera (HoloLens 2 AHAT-class).

Such a sensor reports the *range* of each pixel (distance from the camera centre along its
ray) with a bias that grows with the range. The correction is affine in the range:

    r_true = scale * r_measured + offset_mm

so it moves every point along its own ray, about the camera centre. A rigid registration
of one frame absorbs most of a scale error (a scale about any centre is a similarity),
which is why a single frame tells little about it: its similarity fit trades scale for
pose. What a scale error cannot hide is *disagreement between viewpoints*: frames of one
static patient from several places of the headset's world, each shifted along its own
rays, fit one rigid model pose only with the right correction. The estimator here fits
that: one ``T_world_model`` shared by all views, the views placed by the headset's own
camera poses, and the correction, by robust (Tukey) point-to-plane Gauss-Newton against
the model surface.

Scale only by default: on the real HoloLens 2 scans (bench/bench_depth_calibration.py) an
offset alone fits held-out views as well as a scale within their 0.35-0.65 m ranges, and
the two together are not separable there (the halves of the data disagree); a ToF bias
grows with range, so the scale is the model. ``fit_offset`` is for data spanning more range.

Units: mm. Depth images hold z (along the optical axis), which is the range times the
cosine of the pixel's angle to the axis: a scale applies to z unchanged, an offset as
``offset_mm * cos``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from registration.depth import DepthFrame, ray_cosines
from registration.frames import F64, as_transform, invert, se3_exp, transform_points
from registration.icp import _tukey_weights
from registration.model import SurfaceModel
from registration.thinning import every_kth

log = logging.getLogger(__name__)

# What a stored or learned correction may be: the AHAT's known bias is 5-8 mm at arm's
# length (~1-2 %); anything beyond these is a damaged file or a wrong fit, never a sensor.
MAX_SCALE_ERROR = 0.05
MAX_OFFSET_MM = 20.0


@dataclass(frozen=True)
class DepthCalibration:
    """``r_true = scale * r_measured + offset_mm`` along every ray of one depth camera."""

    scale: float = 1.0
    offset_mm: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset_mm)):
            msg = f"depth calibration needs a finite positive scale and finite offset, got scale={self.scale!r}, offset_mm={self.offset_mm!r}"
            raise ValueError(msg)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.offset_mm == 0.0

    def corrected_range(self, range_mm: F64) -> F64:
        out: F64 = self.scale * range_mm + self.offset_mm
        return out

    def apply_to_points(self, points_mm: F64, camera_centre_mm: F64 | None = None) -> F64:
        """(N, 3) measured points moved along their rays from ``camera_centre_mm`` (the
        origin when None, i.e. points in the sensor frame)."""
        P = np.asarray(points_mm, dtype=np.float64)
        c = np.zeros(3) if camera_centre_mm is None else np.asarray(camera_centre_mm, dtype=np.float64)
        d = P - c
        r = np.linalg.norm(d, axis=1)
        # Points at the centre itself have no ray: they stay where they are.
        gain = np.divide(self.corrected_range(r), r, out=np.ones_like(r), where=r > 0)
        out: F64 = c + d * gain[:, None]
        return out

    def apply_to_depth(self, frame: DepthFrame) -> DepthFrame:
        """The frame with corrected depth. A pure scale only rescales ``depth_unit_mm``
        (free, exact); an offset converts to float32 mm, adding ``offset * cos`` to every
        valid pixel (invalid ones - NaN, zero, negative - stay invalid)."""
        if self.is_identity:
            return frame
        if self.offset_mm == 0.0:
            return replace(frame, depth_unit_mm=frame.depth_unit_mm * self.scale)
        z = np.asarray(frame.depth, dtype=np.float64) * frame.depth_unit_mm
        valid = np.isfinite(z) & (z > 0)
        out = np.where(valid, self.scale * z + self.offset_mm * ray_cosines(frame.intrinsics), z)
        return replace(frame, depth=out.astype(np.float32), depth_unit_mm=1.0)

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "offset_mm": self.offset_mm}

    @classmethod
    def from_dict(cls, data: object, where: str | None = None) -> DepthCalibration:
        """A stored correction, checked: one ``ValueError`` line (prefixed by ``where``)
        naming the bad field when it is missing, not a number, or beyond what a sensor
        bias can be (``check_bounds``)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(data, dict):
            msg = f"{prefix}expected an object with 'scale' and 'offset_mm', got {type(data).__name__}"
            raise ValueError(msg)
        values = {}
        for name in ("scale", "offset_mm"):
            v = data.get(name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                msg = f"{prefix}field {name!r} must be a finite number, got {v!r}"
                raise ValueError(msg)
            values[name] = float(v)
        check_bounds(values["scale"], values["offset_mm"], where)
        return cls(values["scale"], values["offset_mm"])


def check_bounds(
    scale: float, offset_mm: float, where: str | None = None, max_scale_error: float = MAX_SCALE_ERROR
) -> None:
    """Raise one ``ValueError`` line when a correction is beyond a plausible sensor bias."""
    prefix = f"{where}: " if where else ""
    if not abs(scale - 1.0) <= max_scale_error:
        msg = f"{prefix}scale {scale!r} is more than {max_scale_error:.0%} from 1"
        raise ValueError(msg)
    if not abs(offset_mm) <= MAX_OFFSET_MM:
        msg = f"{prefix}offset_mm {offset_mm!r} is beyond +-{MAX_OFFSET_MM:g} mm"
        raise ValueError(msg)


# ------------------------------------------------------------------ estimation
@dataclass(frozen=True)
class CalibrationView:
    """One trusted frame: its measured points in the sensor frame (mm, camera centre at
    the origin), the headset's pose of that camera in its world (``T_world_sensor``) and
    the frame's trusted registration (``T_sensor_model``, status tracking)."""

    points_sensor: F64
    T_world_sensor: F64
    T_sensor_model: F64


@dataclass(frozen=True)
class CalibrationConfig:
    fit_scale: bool = True  # False: the pose alone (the uncorrected model, for comparison)
    fit_offset: bool = False  # scale only unless the views span enough range to separate them
    points_per_view: int = 1500
    iterations: int = 40
    max_corr_mm: float = 10.0  # correspondence gate, shrinking to ...
    min_corr_mm: float = 3.0
    min_views: int = 4
    min_view_spread_deg: float = 20.0  # largest angle between two views, seen from the model
    max_scale_error: float = MAX_SCALE_ERROR
    max_scale_sd: float = 0.002  # a scale known no better than this is not taken
    tol: float = 1e-5  # an update this small (scale units, see the loop) has converged


@dataclass(frozen=True)
class CalibrationResult:
    """The correction with what it rests on. ``reasons`` (empty when ``ok``) say why it
    must not be used. ``scale_sd`` is the larger of the fit's noise-only standard error
    and the scatter of the per-view scales over sqrt(views): bias that differs between
    views (not noise) is what limits the estimate on real data."""

    calibration: DepthCalibration
    T_world_model: F64
    scale_sd: float
    offset_sd_mm: float
    view_scales: tuple[float, ...]  # each view's own scale at the shared pose
    rms_mm: float  # RMS point-to-plane residual of the inliers, all views
    n_views: int
    n_points: int
    view_spread_deg: float
    iterations: int
    converged: bool
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class _Rays:
    """A view's rays in the sensor frame: unit directions and measured ranges (mm)."""

    dirs: F64
    ranges: F64
    T_world_sensor: F64


def estimate_depth_calibration(
    model: SurfaceModel,
    views: Sequence[CalibrationView],
    config: CalibrationConfig | None = None,
    *,
    start: DepthCalibration | None = None,
) -> CalibrationResult:
    """Fit ``DepthCalibration`` and one ``T_world_model`` to trusted frames of a static
    patient seen from several viewpoints of the headset's world (see the module doc).
    The views hold *measured* points; the result is the whole correction.

    Starts from the first view's registration and ``start`` (the correction those
    registrations were made with; none by default). Never raises on poor data: the
    result's ``reasons`` say what is missing (views, spread, convergence, bounds, certainty)."""
    cfg = config or CalibrationConfig()
    if not views:
        msg = "estimate_depth_calibration needs at least one view, got 0"
        raise ValueError(msg)
    rays = [_rays(v, cfg.points_per_view) for v in views]
    T_mw = invert(rays[0].T_world_sensor @ as_transform(views[0].T_sensor_model, "T_sensor_model"))
    first = start or DepthCalibration()
    fit = _fit(model, rays, cfg, _Fit(T_mw, first.scale, first.offset_mm if cfg.fit_offset else 0.0))
    return _result(model, rays, cfg, fit)


@dataclass(frozen=True)
class _Fit:
    T_model_world: F64
    scale: float
    offset_mm: float
    noise_sd: float = float("inf")  # noise-only standard errors of scale and offset
    offset_sd_mm: float = float("inf")
    points: int = 0
    iterations: int = 0
    converged: bool = False


def _fit(model: SurfaceModel, rays: Sequence[_Rays], cfg: CalibrationConfig, start: _Fit) -> _Fit:
    """Robust Gauss-Newton over (omega, v about the model centroid, scale, offset) with a
    shrinking correspondence gate, as registration.icp.point_to_plane does for a pose."""
    T_mw, scale, offset, gate = start.T_model_world, start.scale, start.offset_mm, cfg.max_corr_mm
    free = [0, 1, 2, 3, 4, 5] + ([6] if cfg.fit_scale else []) + ([7] if cfg.fit_offset else [])
    H, sigma, n, it, converged = np.eye(8), float("inf"), 0, 0, False
    for it in range(1, cfg.iterations + 1):  # noqa: B007 - the count is reported
        H, b, sigma, n = _normal_equations(model, rays, T_mw, scale, offset, gate)
        x = np.zeros(8)
        try:
            x[free] = -np.linalg.solve(H[np.ix_(free, free)] + 1e-9 * np.eye(len(free)), b[free])
        except np.linalg.LinAlgError:
            break
        E = se3_exp(x[:6])  # about the model centroid, as registration.icp does
        E[:3, 3] += model.centroid - E[:3, :3] @ model.centroid
        T_mw, scale, offset = E @ T_mw, scale + float(x[6]), offset + float(x[7])
        floor = max(cfg.min_corr_mm, 4.0 * sigma)  # the gate never cuts into the noise
        gate = max(floor, 0.7 * gate)
        # Comparable units: scale; offset and translation per metre; rotation at 100 mm.
        step = abs(x[6]) + (abs(x[7]) + np.linalg.norm(x[3:6])) / 1000.0 + np.linalg.norm(x[:3]) * 0.1
        if step < cfg.tol and gate <= 1.05 * floor:
            converged = True
            break
    sd = np.zeros(8)
    try:
        sd[free] = np.sqrt(np.maximum(np.diag(sigma**2 * np.linalg.inv(H[np.ix_(free, free)])), 0.0))
    except np.linalg.LinAlgError:
        sd[:] = np.inf
    return _Fit(T_mw, scale, offset, float(sd[6]), float(sd[7]), n, it, converged)


def _rays(view: CalibrationView, max_points: int) -> _Rays:
    P = np.asarray(view.points_sensor, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        msg = f"points_sensor must be (N, 3) mm, got shape {P.shape}"
        raise ValueError(msg)
    P = P[np.all(np.isfinite(P), axis=1)]
    r = np.linalg.norm(P, axis=1)
    keep = every_kth(np.flatnonzero(r > 0), max_points)
    return _Rays(P[keep] / r[keep, None], r[keep], as_transform(view.T_world_sensor, "T_world_sensor"))


def _normal_equations(
    model: SurfaceModel, rays: Sequence[_Rays], T_mw: F64, scale: float, offset: float, gate: float
) -> tuple[F64, F64, float, int]:
    """Weighted Gauss-Newton system over (omega, v about the model centroid, scale,
    offset), the robust residual scale and the number of correspondences."""
    Js, rs = [], []
    for ray in rays:
        J, r = _view_terms(model, ray, T_mw @ ray.T_world_sensor, scale, offset, gate)
        Js.append(J)
        rs.append(r)
    J, r = np.concatenate(Js), np.concatenate(rs)
    if len(r) < 8:
        return np.zeros((8, 8)), np.zeros(8), float("inf"), len(r)
    w, sigma = _tukey_weights(r)
    Jw = J * w[:, None]
    return Jw.T @ J, Jw.T @ r, sigma, len(r)


def _view_terms(
    model: SurfaceModel, ray: _Rays, T_model_sensor: F64, scale: float, offset: float, gate: float
) -> tuple[F64, F64]:
    """Jacobian rows (N, 8) and point-to-plane residuals (N,) of one view's points that lie
    within ``gate`` of the model's tangent planes."""
    U = ray.dirs @ T_model_sensor[:3, :3].T  # ray directions in the model frame
    P = T_model_sensor[:3, 3] + (scale * ray.ranges + offset)[:, None] * U
    idx = model.lookup(P)
    ok = np.flatnonzero(idx >= 0)
    n = model.normals[idx[ok]]
    r = np.einsum("ij,ij->i", P[ok], n) - model.plane_offsets[idx[ok]]
    keep = np.abs(r) < gate
    ok, n, r = ok[keep], n[keep], r[keep]
    J = np.empty((len(r), 8))
    J[:, :3] = np.cross(P[ok] - model.centroid, n)  # normal orientation does not matter:
    J[:, 3:6] = n  # -n flips residual and Jacobian together
    un = np.einsum("ij,ij->i", U[ok], n)
    J[:, 6] = un * ray.ranges[ok]
    J[:, 7] = un
    return J, r


def _view_scale(model: SurfaceModel, ray: _Rays, T_mw: F64, scale: float, offset: float, gate: float) -> float:
    """One view's own scale with the shared pose and offset held: a few robust steps."""
    for _ in range(5):
        J, r = _view_terms(model, ray, T_mw @ ray.T_world_sensor, scale, offset, gate)
        if len(r) < 8:
            return float("nan")
        w, _ = _tukey_weights(r)
        scale -= float(np.sum(w * J[:, 6] * r) / max(np.sum(w * J[:, 6] ** 2), 1e-12))
    return scale


def _view_spread_deg(model: SurfaceModel, rays: Sequence[_Rays], T_mw: F64) -> float:
    """Largest angle between two camera centres seen from the model centroid."""
    centres = np.array([transform_points(T_mw @ r.T_world_sensor, np.zeros((1, 3)))[0] for r in rays])
    d = centres - model.centroid
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    cos = np.clip(d @ d.T, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def _result(model: SurfaceModel, rays: Sequence[_Rays], cfg: CalibrationConfig, fit: _Fit) -> CalibrationResult:
    T_mw, scale, offset, gate = fit.T_model_world, fit.scale, fit.offset_mm, cfg.min_corr_mm
    per_view = tuple(_view_scale(model, r, T_mw, scale, offset, gate) for r in rays)
    final = np.concatenate([_view_terms(model, r, T_mw @ r.T_world_sensor, scale, offset, gate)[1] for r in rays])
    rms = float(np.sqrt(np.mean(final**2))) if len(final) else float("inf")
    finite = np.array([s for s in per_view if math.isfinite(s)])
    scatter = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("inf")
    scale_sd = max(fit.noise_sd, scatter)
    spread = _view_spread_deg(model, rays, T_mw)
    reasons = _verdict(cfg, len(rays), spread, fit.converged, scale, offset, scale_sd)
    if reasons:
        log.info("depth calibration not usable: %s", "; ".join(reasons))
    usable = scale > 0 and math.isfinite(scale + offset)
    return CalibrationResult(
        DepthCalibration(scale, offset) if usable else DepthCalibration(),
        invert(T_mw), scale_sd, fit.offset_sd_mm, per_view, rms,
        len(rays), fit.points, spread, fit.iterations, fit.converged, reasons,
    )  # fmt: skip


def _verdict(
    cfg: CalibrationConfig, n_views: int, spread: float, converged: bool, scale: float, offset: float, sd: float
) -> tuple[str, ...]:
    out = []
    if n_views < cfg.min_views:
        out.append(f"too few views ({n_views} < {cfg.min_views})")
    if not spread >= cfg.min_view_spread_deg:
        out.append(f"views too alike ({spread:.0f} < {cfg.min_view_spread_deg:g} degrees apart)")
    if not converged:
        out.append("the fit did not converge")
    try:
        check_bounds(scale, offset, None, cfg.max_scale_error)
    except ValueError as exc:
        out.append(str(exc))
    if not sd <= cfg.max_scale_sd:
        out.append(f"scale uncertain (sd {sd:.4f} > {cfg.max_scale_sd:g})")
    return tuple(out)


@dataclass(frozen=True)
class HeldOut:
    """Residuals (mm) of one frame at a fitted pose: RMS and median |r| of the points
    within the gate, and the median signed residual along the rays (> 0: the surface
    was measured too far from the camera)."""

    rms_mm: float
    median_abs_mm: float
    along_ray_mm: float
    points: int


def held_out_residuals(
    model: SurfaceModel, view: CalibrationView, T_world_model: F64, calibration: DepthCalibration, gate_mm: float = 5.0
) -> HeldOut:
    """How a frame *not used in the fit* sits on the model at the fitted ``T_world_model``
    after ``calibration``: the honest check of a correction is to estimate it on some
    frames and look at the others."""
    ray = _rays(view, 0)
    T_ms = invert(T_world_model) @ ray.T_world_sensor
    J, r = _view_terms(model, ray, T_ms, calibration.scale, calibration.offset_mm, gate_mm)
    if len(r) == 0:
        return HeldOut(float("inf"), float("inf"), float("nan"), 0)
    along = r * np.sign(J[:, 7])  # J[:, 7] = n . ray: the residual's sign seen along the ray
    return HeldOut(float(np.sqrt(np.mean(r**2))), float(np.median(np.abs(r))), float(np.median(along)), len(r))
