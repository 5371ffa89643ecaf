"""Thin wrappers around Open3D for downsampling, normals and FPFH features."""

from __future__ import annotations

import numpy as np

from registration.frames import F64

NORMAL_RADIUS_VOXELS = 2.5
FEATURE_RADIUS_VOXELS = 5.0


def downsample_with_features(
    points: F64, normals: F64 | None, voxel_mm: float, orient_from: F64 | None
) -> tuple[F64, F64, F64]:
    """Voxel-downsample, estimate normals when absent (oriented towards ``orient_from``
    when given, e.g. the sensor origin) and compute FPFH. Returns (points, normals,
    features (N, 33))."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if normals is not None:
        pc.normals = o3d.utility.Vector3dVector(normals)
    pc = pc.voxel_down_sample(voxel_mm)
    if normals is None:
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=NORMAL_RADIUS_VOXELS * voxel_mm, max_nn=30))
        if orient_from is not None:
            pc.orient_normals_towards_camera_location(orient_from)
    else:
        n = np.asarray(pc.normals)
        pc.normals = o3d.utility.Vector3dVector(n / np.maximum(np.linalg.norm(n, axis=1), 1e-12)[:, None])
    fpfh = o3d.pipelines.registration.compute_fpfh_feature(  # type: ignore[call-arg]
        pc, o3d.geometry.KDTreeSearchParamHybrid(radius=FEATURE_RADIUS_VOXELS * voxel_mm, max_nn=100)
    )
    return np.asarray(pc.points), np.asarray(pc.normals), np.asarray(fpfh.data).T.copy()


def ransac_hypotheses(
    src: tuple[F64, F64, F64],
    dst: tuple[F64, F64, F64],
    voxel_mm: float,
    seeds: tuple[int, ...] = (0,),
    max_iterations: int = 10000,
    fgr: bool = True,
) -> list[F64]:
    """Feature-matching RANSAC (Open3D), one hypothesis per seed, plus FGR.
    Returns T_dst_src candidates."""
    import open3d as o3d

    reg = o3d.pipelines.registration

    def cloud(p: F64, n: F64) -> o3d.geometry.PointCloud:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        pc.normals = o3d.utility.Vector3dVector(n)
        return pc

    def feat(f: F64) -> reg.Feature:
        out = reg.Feature()
        out.data = np.ascontiguousarray(f.T)
        return out

    s_pc, d_pc = cloud(src[0], src[1]), cloud(dst[0], dst[1])
    s_f, d_f = feat(src[2]), feat(dst[2])
    dist = 1.5 * voxel_mm
    checkers = [
        reg.CorrespondenceCheckerBasedOnEdgeLength(0.9),
        reg.CorrespondenceCheckerBasedOnDistance(dist),
        reg.CorrespondenceCheckerBasedOnNormal(np.radians(30.0)),
    ]
    out = []
    for seed in seeds:
        o3d.utility.random.seed(seed)
        res = reg.registration_ransac_based_on_feature_matching(
            s_pc, d_pc, s_f, d_f, False, dist,
            reg.TransformationEstimationPointToPoint(False), 3, checkers,
            reg.RANSACConvergenceCriteria(max_iterations, 0.999),
        )  # fmt: skip
        out.append(np.asarray(res.transformation).copy())
    if fgr:
        res = reg.registration_fgr_based_on_feature_matching(
            s_pc, d_pc, s_f, d_f, reg.FastGlobalRegistrationOption(maximum_correspondence_distance=dist)
        )
        out.append(np.asarray(res.transformation).copy())
    return out
