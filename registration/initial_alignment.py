"""Initial alignment: paired-point from landmarks, or markerless from surface points.

Markerless alignment generates many pose hypotheses, refines each with the robust
point-to-plane ICP and keeps the one with the lowest truncated residual; a second,
clearly different pose that fits almost as well makes the result ``degraded``
(ambiguous, typically a near-symmetric face seen from little overlap).

Dense scans are first thinned to 2 mm, stripped of support planes (table, wall:
registration/clutter.py) and cropped to a head-sized ball. Hypotheses come from two
independent sources:
* FPFH features with Open3D RANSAC (FGR optional: on the real HoloLens scans neither it
  nor more RANSAC seeds ever produced the winning hypothesis, and they cost 0.5 s);
* an anchor sweep that works for sparse pointer data too: the points' mean normal is
  mapped onto the normal of each of a few hundred model surface anchors, spun about it
  in 15 degree steps, and all ~20k poses are scored at once against the model's
  nearest-vertex grid (a vectorised gather, no search).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from registration.clutter import drop_support_planes
from registration.estimate import Estimate, Status, lost
from registration.frame_kinds import CameraPoints, SurfaceTrace
from registration.frames import F64, invert, max_displacement_mm, transform_points
from registration.icp import (
    IcpResult,
    covariance_about_origin,
    normalised_condition,
    point_to_plane,
    surface_distance,
    truncated_cost,
)
from registration.model import ANCHOR_SPACING_MM, FEATURE_VOXEL_MM, SurfaceModel
from registration.navigation import NavigationConfig, register_trace
from registration.paired_point import MIN_PAIRS, Landmarks, landmark_pairs, paired_point_fit
from registration.thinning import every_kth, first_per_voxel
from registration.trace_search import search
from registration.turns import TurnedRival, best_turned_rival

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignmentConfig:
    voxel_mm: float = FEATURE_VOXEL_MM  # FPFH scale
    dense_min_points: int = 5000  # fewer points than this: sparse (pointer) workflow
    anchor_spacing_mm: float = ANCHOR_SPACING_MM
    spin_steps: int = 24
    coarse_points: int = 48
    coarse_trunc_mm: float = 15.0
    coarse_keep: int = 96
    patch_radius_mm: float = 55.0
    patches: int = 1
    top_k: int = 8
    final_k: int = 3
    scan_voxel_mm: float = 2.0  # dense scans are thinned to this first
    drop_planes: bool = True  # tables, walls, drapes (registration.clutter)
    use_sweep: bool = True  # on dense scans too (sparse input always uses it)
    use_fgr: bool = False
    ransac_seeds: tuple[int, ...] = (0,)
    ransac_iterations: int = 2000
    refine_points: int = 3000
    final_gate_mm: float = 3.0  # the last ICP iterations only trust points this close
    trunc_mm: float = 5.0  # truncation of the verification cost
    inlier_mm: float = 5.0
    min_fitness: float = 0.6
    max_rmse_mm: float = 3.5
    max_condition: float = 200.0
    min_correspondences: int = 30
    ambiguity_ratio: float = 1.25  # second distinct pose within this cost ratio: ambiguous
    turn_check_points: int = 1500  # the check against the model turned about patient axes
    turn_check_iterations: int = 30
    distinct_mm: float = 6.0
    max_fre_mm: float = 3.0
    seed: int = 0
    turn_retries: int = 2  # a better turned pose is taken and checked again this often
    search_basins: int = 3  # hypotheses from the exhaustive search (registration/trace_search.py)
    navigation: NavigationConfig = field(default_factory=NavigationConfig)  # sparse input and traces


def initial_alignment(
    model: SurfaceModel,
    points_mm: object,
    landmarks: Landmarks | None = None,
    config: AlignmentConfig | None = None,
) -> Estimate:
    """Register ``model`` to sensor points in mm; returns an Estimate whose
    ``T_sensor_model`` maps model mm into the points' frame.

    ``points_mm`` is a :class:`SurfaceTrace` (tracked pointer), :class:`CameraPoints` or
    a plain (N, 3) array. A trace, or any input with fewer than ``dense_min_points``
    points, goes to the navigation workflow (registration/navigation.py: markerless
    global search, or from ``landmarks`` when given, then robust refinement and the
    ambiguity verdict); a dense camera scan to the scan pipeline below.

    ``landmarks`` with no points is paired-point registration: a mapping from model
    landmark names (``model.fiducials``/``targets``) to measured sensor positions, or a
    tuple ``(model_points (K,3), sensor_points (K,3))`` with K >= 3. FRE is reported.
    """
    cfg = config or AlignmentConfig()
    t0 = time.perf_counter()
    if isinstance(points_mm, SurfaceTrace):
        return register_trace(model, points_mm, landmarks, cfg.navigation).estimate()
    pts = (points_mm if isinstance(points_mm, CameraPoints) else CameraPoints(points_mm)).points_mm
    if landmarks is not None and len(pts) == 0:
        return paired_point(model, landmarks, cfg, t0)
    dense = len(pts) >= cfg.dense_min_points
    if not dense:
        return register_trace(model, pts, landmarks, cfg.navigation).estimate()
    if landmarks is not None:  # a dense scan with landmarks: the landmarks decide
        return paired_point(model, landmarks, cfg, t0)
    rng = np.random.default_rng(cfg.seed)
    if dense:  # a scan also holds holder, table and room: drop planes, keep a head-sized crop
        pts = pts[first_per_voxel(pts, cfg.scan_voxel_mm)]
        if cfg.drop_planes:
            pts = drop_support_planes(pts)
        pts = _crop_to_model_size(model, pts)
    hyps = []
    if cfg.use_sweep:
        for patch in _patches(pts, cfg, rng):
            hyps += _sweep_hypotheses(model, patch, cfg, rng)
    hyps += _feature_hypotheses(model, pts, cfg)
    hyps += _search_hypotheses(model, pts, cfg)
    return _verify(model, pts, hyps, cfg, rng, t0)


# ---------------------------------------------------------------- paired point
def paired_point(model: SurfaceModel, landmarks: Landmarks, cfg: AlignmentConfig, t0: float) -> Estimate:
    """Least-squares rigid fit of landmark pairs, with its FRE and honest status."""
    fit = paired_point_fit(*landmark_pairs(model, landmarks))
    n = len(fit.model_points)
    reasons = []
    if n == MIN_PAIRS:
        reasons.append("only 3 pairs: FRE cannot reveal a swapped or mislocated landmark")
    if fit.fre_mm > cfg.max_fre_mm:
        reasons.append(f"high FRE ({fit.fre_mm:.2f} mm)")
    if not fit.condition < 1e4:
        reasons.append(f"landmarks nearly collinear (condition {fit.condition:.0f})")
    status = Status.DEGRADED if reasons else Status.TRACKING
    return Estimate(fit.T_sensor_model, status, 1.0, fit.fre_mm, n, _ms(t0), fit.covariance, tuple(reasons),
                    fre_mm=fit.fre_mm, condition=fit.condition)  # fmt: skip


# ---------------------------------------------------------------- hypotheses
def _crop_to_model_size(model: SurfaceModel, pts: F64) -> F64:
    """Drop clutter that cannot be the patient: points farther from the scan's robust
    centre (median, iterated once on the kept points) than half the model's extent."""
    keep = pts
    for _ in range(2):
        c = np.median(keep, axis=0)
        keep = pts[np.linalg.norm(pts - c, axis=1) < 0.5 * model.extent_mm]
        if len(keep) < 100:
            return pts
    return keep


def _patches(pts: F64, cfg: AlignmentConfig, rng: np.random.Generator) -> list[F64]:
    """The whole point set when it is patch-sized (pointer data), else a few balls of
    ``patch_radius_mm``: a dense scan mixes face, scalp, holder and clutter, whose
    mean normal means nothing, while a ball on the face is a clean patch."""
    c = np.median(pts, axis=0)
    if np.sqrt(np.mean(np.sum((pts - c) ** 2, axis=1))) <= cfg.patch_radius_mm:
        return [pts]
    order = np.argsort(np.linalg.norm(pts - c, axis=1))
    centres = [pts[order[0]]] + [pts[i] for i in rng.choice(len(pts), 4 * cfg.patches)]
    out: list[F64] = []
    for centre in centres:
        ball = pts[np.linalg.norm(pts - centre, axis=1) < cfg.patch_radius_mm]
        if len(ball) >= 50 and all(np.linalg.norm(b.mean(0) - ball.mean(0)) > 30.0 for b in out):
            out.append(ball)
        if len(out) >= cfg.patches:
            break
    return out or [pts]


def _sweep_hypotheses(model: SurfaceModel, pts: F64, cfg: AlignmentConfig, rng: np.random.Generator) -> list[F64]:
    """Anchor/normal/spin sweep scored in one vectorised pass. Returns T_model_sensor."""
    c = pts.mean(0)
    evals, evecs = np.linalg.eigh(np.cov((pts - c).T))
    n_s = evecs[:, 0]
    sub = pts[rng.choice(len(pts), min(cfg.coarse_points, len(pts)), replace=False)] - c
    radius = float(np.sqrt(np.mean(np.sum((pts - c) ** 2, axis=1))))
    anchors, normals = model.patch_anchors(cfg.anchor_spacing_mm, radius)
    spins = np.linspace(0.0, 2 * np.pi, cfg.spin_steps, endpoint=False)
    Rs, ts = [], []
    for sign in _normal_signs(pts, c, n_s):
        h = sign * (pts - c) @ n_s
        sag = float(np.percentile(h, 90))  # the surface lies above the patch centroid
        R0 = _rotations_onto(sign * n_s, normals)  # (A, 3, 3)
        for th in spins:
            Rz = _axis_angle(normals, th)  # spin about each anchor normal
            R = Rz @ R0
            Rs.append(R)
            ts.append(anchors - sag * normals)
    R_all = np.concatenate(Rs)
    t_all = np.concatenate(ts)
    cost = _coarse_cost(model, sub, R_all, t_all, min(cfg.coarse_trunc_mm, model.band_mm))
    # The coarse score only has to keep the right basin among the best few hundred; a
    # short ICP on each then separates a face from a smooth patch of skull.
    short = pts[rng.choice(len(pts), min(64, len(pts)), replace=False)]
    refined = []
    for i in np.argsort(cost)[: cfg.coarse_keep]:
        T = np.eye(4)
        T[:3, :3] = R_all[i]
        T[:3, 3] = t_all[i] - R_all[i] @ c
        res = point_to_plane(model, short, T, max_corr_mm=15.0, min_corr_mm=5.0, iterations=5,
                             min_points=8)  # fmt: skip
        refined.append((truncated_cost(model, res.T_model_sensor, short, cfg.trunc_mm), res.T_model_sensor))
    refined.sort(key=lambda r: r[0])
    picked: list[F64] = []
    for _, T in refined:
        if all(not _same_pose(T, P, model.centroid, cfg.distinct_mm) for P in picked):
            picked.append(T)
        if len(picked) >= cfg.top_k:
            break
    return picked


def _normal_signs(pts: F64, c: F64, n: F64) -> tuple[float, ...]:
    """Outward sign(s) of the patch normal. Skin patches are convex (nose, brow, cheeks
    rise above the rim), so height falls with distance from the axis; when the trend is
    weak both signs are tried."""
    d = pts - c
    h = d @ n
    rho2 = np.einsum("ij,ij->i", d, d) - h * h
    corr = float(np.corrcoef(h, rho2)[0, 1]) if len(pts) > 3 and np.std(h) > 0 else 0.0
    if corr < -0.3:
        return (1.0,)
    if corr > 0.3:
        return (-1.0,)
    return (1.0, -1.0)


def _coarse_cost(model: SurfaceModel, sub: F64, R: F64, t: F64, trunc: float) -> F64:
    """Mean truncated squared distance of ``sub`` under each pose, in chunks."""
    out = np.empty(len(R))
    chunk = max(1, 300_000 // len(sub))
    t2 = trunc * trunc
    for s in range(0, len(R), chunk):
        Rc = R[s : s + chunk]
        # One (3H, 3) x (3, m) product instead of H small ones.
        P = (Rc.reshape(-1, 3) @ sub.T).reshape(len(Rc), 3, -1).transpose(0, 2, 1)
        P = P + t[s : s + chunk, None, :]
        flat = P.reshape(-1, 3)
        idx = model.lookup(flat)
        d2 = np.full(len(flat), t2)
        ok = idx >= 0
        diff = flat[ok] - model.vertices[idx[ok]]
        d2[ok] = np.minimum(np.einsum("ij,ij->i", diff, diff), t2)
        out[s : s + chunk] = d2.reshape(P.shape[:2]).mean(axis=1)
    return out


def _search_hypotheses(model: SurfaceModel, pts: F64, cfg: AlignmentConfig) -> list[F64]:
    """The best basins of the exhaustive, frame-free search of registration/trace_search.py:
    on outlier-cleaned real scans the two sources above found only a wrong basin (130-200
    mm off, fitting well enough to be trusted), which this search does not miss."""
    found = search(model, pts, cfg.navigation.search)
    return [b.T_model_sensor for b in found.basins[: cfg.search_basins]]


def _feature_hypotheses(model: SurfaceModel, pts: F64, cfg: AlignmentConfig) -> list[F64]:
    from registration.features import downsample_with_features, ransac_hypotheses

    scene = downsample_with_features(pts, None, cfg.voxel_mm, orient_from=np.zeros(3))
    if len(scene[0]) < 30:
        return []
    # Scene normals point to the sensor, model normals outward: both agree on the skin.
    return ransac_hypotheses(
        scene,
        model.surface_sample(cfg.voxel_mm),
        cfg.voxel_mm,
        seeds=cfg.ransac_seeds,
        max_iterations=cfg.ransac_iterations,
        fgr=cfg.use_fgr,
    )


# ---------------------------------------------------------------- verification
def _verify(
    model: SurfaceModel, pts: F64, hyps: list[F64], cfg: AlignmentConfig, rng: np.random.Generator, t0: float
) -> Estimate:
    sample = pts[rng.choice(len(pts), min(cfg.refine_points, len(pts)), replace=False)]
    quick = sample[: max(len(sample) // 3, min(len(sample), 200))]
    scored = []
    for T in hyps:  # cheap refinement of every hypothesis ...
        res = point_to_plane(model, quick, T, max_corr_mm=15.0, min_corr_mm=cfg.inlier_mm,
                             iterations=15, min_points=12)  # fmt: skip
        scored.append((truncated_cost(model, res.T_model_sensor, quick, cfg.trunc_mm), res.T_model_sensor))
    if not scored:
        return lost(_ms(t0), "no pose hypotheses")
    scored.sort(key=lambda s: s[0])
    finals: list[tuple[float, IcpResult]] = []  # ... then a full one of the best few distinct poses
    for _, T in scored:
        if len(finals) == cfg.final_k:
            break
        if any(_same_pose(T, f[1].T_model_sensor, model.centroid, cfg.distinct_mm) for f in finals):
            continue
        res = point_to_plane(
            model,
            sample,
            T,
            max_corr_mm=2.0 * cfg.inlier_mm,
            min_corr_mm=cfg.final_gate_mm,
            iterations=60,
            min_points=12,
        )

        finals.append((truncated_cost(model, res.T_model_sensor, sample, cfg.trunc_mm), res))
    finals.sort(key=lambda s: s[0])
    best_cost, best = finals[0]
    rival = next(
        (c for c, r in finals[1:]
         if not _same_pose(r.T_model_sensor, best.T_model_sensor, model.centroid, cfg.distinct_mm)),
        float("inf"),
    )  # fmt: skip
    best, best_cost, turned = _beat_turned_rivals(model, sample, best, best_cost, cfg)
    return _estimate(model, sample, best, best_cost, rival, turned, cfg, t0)


def _beat_turned_rivals(
    model: SurfaceModel, sample: F64, best: IcpResult, best_cost: float, cfg: AlignmentConfig
) -> tuple[IcpResult, float, TurnedRival | None]:
    """The search may not have found the right pose at all (a few smooth patches of skull
    fit anywhere): the model turned about the patient axes is the rival it must beat.
    A turned pose that fits better is taken, refined, and checked again in turn."""
    for attempt in range(cfg.turn_retries + 1):
        turned = best_turned_rival(
            model,
            every_kth(sample, cfg.turn_check_points),
            best.T_model_sensor,
            distinct_mm=cfg.distinct_mm,
            iterations=cfg.turn_check_iterations,
            inlier_mm=cfg.final_gate_mm,
            trunc_mm=cfg.trunc_mm,
        )
        if turned is None or turned.ratio >= 1.0 or attempt == cfg.turn_retries:
            return best, best_cost, turned
        log.info("initial alignment: a turned pose fits better (%.2fx); taking it", turned.ratio)
        best = point_to_plane(model, sample, turned.T_model_sensor, max_corr_mm=2.0 * cfg.inlier_mm,
                              min_corr_mm=cfg.final_gate_mm, iterations=60, min_points=12)  # fmt: skip
        best_cost = truncated_cost(model, best.T_model_sensor, sample, cfg.trunc_mm)
    return best, best_cost, None


def _estimate(
    model: SurfaceModel,
    sample: F64,
    best: IcpResult,
    best_cost: float,
    rival: float,
    turned: TurnedRival | None,
    cfg: AlignmentConfig,
    t0: float,
) -> Estimate:
    T_ms = best.T_model_sensor
    P = transform_points(T_ms, sample)
    dist = surface_distance(model, P)
    inl = dist < cfg.inlier_mm
    fitness = float(inl.mean())
    rmse = float(np.sqrt(np.mean(dist[inl] ** 2))) if inl.any() else float("inf")
    length = float(np.sqrt(np.mean(np.sum((sample - sample.mean(0)) ** 2, 1))))
    cond = normalised_condition(best.information, max(length, 1.0))
    cov = covariance_about_origin(best.information, best.pivot, max(best.sigma_mm, rmse))
    reasons = []
    if inl.sum() < cfg.min_correspondences:
        reasons.append(f"few correspondences ({int(inl.sum())})")
    if fitness < cfg.min_fitness:
        reasons.append(f"low fitness ({fitness:.2f})")
    if not rmse <= cfg.max_rmse_mm:
        reasons.append(f"high rmse ({rmse:.2f} mm)")
    if not cond <= cfg.max_condition:
        reasons.append(f"degenerate geometry (condition {cond:.0f})")
    if rival < cfg.ambiguity_ratio * best_cost:
        reasons.append(f"ambiguous: a different pose fits almost as well ({rival / best_cost:.2f}x)")
    if turned is not None and turned.ratio < cfg.ambiguity_ratio:
        reasons.append(f"ambiguous: the model turned about a patient axis fits as well ({turned.ratio:.2f}x)")
    status = Status.DEGRADED if reasons else Status.TRACKING
    log.info("initial alignment %s fitness %.2f rmse %.2f mm %s", status, fitness, rmse, reasons)
    return Estimate(invert(T_ms), status, fitness, rmse, int(inl.sum()), _ms(t0), cov,
                    tuple(reasons), condition=cond)  # fmt: skip


# ---------------------------------------------------------------- helpers
def _same_pose(A: F64, B: F64, centre: F64, tol_mm: float) -> bool:
    """Poses agree when a 100 mm cross around ``centre`` moves less than ``tol_mm``."""
    probe = centre + np.vstack([np.zeros(3), 100.0 * np.eye(3)])
    return max_displacement_mm(invert(A), invert(B), probe) < tol_mm


def _rotations_onto(a: F64, b: F64) -> F64:
    """Rotations (K, 3, 3) taking unit vector ``a`` onto each row of ``b``."""
    v = np.cross(a, b)
    c = b @ a
    K = np.zeros((len(b), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    scale = 1.0 / np.maximum(1.0 + c, 1e-9)
    R = np.eye(3) + K + (K @ K) * scale[:, None, None]
    flip = c < -0.999999  # antiparallel: any half turn about a perpendicular axis
    if np.any(flip):
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        R[flip] = 2.0 * np.outer(perp, perp) - np.eye(3)
    return R


def _axis_angle(axes: F64, theta: float) -> F64:
    """Rotations (K, 3, 3) by ``theta`` about each unit row of ``axes`` (Rodrigues)."""
    K = np.zeros((len(axes), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = axes[:, 2], -axes[:, 1], axes[:, 0]
    out: F64 = np.eye(3) + np.sin(theta) * K + (1.0 - np.cos(theta)) * (K @ K)
    return out


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
