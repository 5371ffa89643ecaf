"""The prepared patient surface: everything registration can compute once per model.

A :class:`SurfaceModel` holds the skin mesh in model (patient LPS) millimetres with
vertex normals, a KD-tree, a *nearest-vertex lookup grid* (registration/nearest_grid.py:
the reason tracking is fast), a wider and coarser one for the pose searches, a uniform
surface sample for global matching, and the landmarks of the patient-model folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from registration.frames import F64
from registration.nearest_grid import NearestGrid

if TYPE_CHECKING:
    from registration.batch_fit import Surface
from registration.thinning import first_per_voxel

log = logging.getLogger(__name__)

SUPPORTED_SCHEMA = 1
DEFAULT_GRID_MM = 2.0
DEFAULT_BAND_MM = 16.0
FEATURE_VOXEL_MM = 6.0  # FPFH scale of markerless initial alignment
ANCHOR_SPACING_MM = 12.0  # seeds of its hypothesis sweep
SEARCH_GRID_MM = 4.0  # cell of the wide grid the pose searches start on
SEARCH_BAND_MM = 40.0  # how far off the surface a search start still finds the surface
CANCELLED_NORMALS = 0.5  # face normals around a vertex that sum to less than this share of their area
SEARCH_VERTEX_MM = 3.0  # vertices of that grid: one per cube of this size


@dataclass(frozen=True)
class Landmark:
    name: str
    position_mm: F64


class SurfaceModel:
    """Prepared skin surface in model millimetres. Build with :meth:`from_folder` or
    :meth:`from_mesh`; treat as immutable afterwards (it is shared across threads)."""

    def __init__(
        self,
        vertices_mm: F64,
        triangles: NDArray[np.int64],
        *,
        fiducials: tuple[Landmark, ...] = (),
        targets: tuple[Landmark, ...] = (),
        grid_mm: float = DEFAULT_GRID_MM,
        band_mm: float = DEFAULT_BAND_MM,
        name: str = "skin",
    ) -> None:
        self.name = name
        self.vertices = vertices_mm
        self.triangles = triangles
        self.normals = _vertex_normals(vertices_mm, triangles)
        # Tangent plane of each vertex as n . x = offset: residuals need no vertex gather.
        self.plane_offsets = np.einsum("ij,ij->i", self.normals, vertices_mm)
        self.fiducials = fiducials
        self.targets = targets
        self.tree = cKDTree(vertices_mm)
        self.centroid = vertices_mm.mean(axis=0)
        self.bounds = np.stack([vertices_mm.min(axis=0), vertices_mm.max(axis=0)])
        self.extent_mm = float(np.linalg.norm(self.bounds[1] - self.bounds[0]))
        self.grid_mm = float(grid_mm)
        self.band_mm = float(band_mm)
        self.grid = NearestGrid.build(vertices_mm, self.tree, self.grid_mm, self.band_mm)
        self._fit_surfaces: dict[bool, Surface] = {}
        self._scene: Any = None
        self._features: dict[float, tuple[F64, F64, F64]] = {}
        self._patch_anchors: dict[tuple[float, float], tuple[F64, F64]] = {}

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_mesh(
        cls,
        vertices_mm: object,
        triangles: object,
        *,
        fiducials: dict[str, object] | None = None,
        targets: dict[str, object] | None = None,
        grid_mm: float = DEFAULT_GRID_MM,
        band_mm: float = DEFAULT_BAND_MM,
    ) -> SurfaceModel:
        """Prepare a model from (V, 3) vertices in model mm and (F, 3) triangle indices."""
        V = np.asarray(vertices_mm, dtype=np.float64)
        F = np.asarray(triangles, dtype=np.int64)
        if V.ndim != 2 or V.shape[1] != 3 or len(V) < 4 or not np.all(np.isfinite(V)):
            msg = f"vertices_mm must be finite (V>=4, 3), got shape {V.shape}"
            raise ValueError(msg)
        if F.ndim != 2 or F.shape[1] != 3 or len(F) < 1:
            msg = f"triangles must be (F, 3), got shape {F.shape}"
            raise ValueError(msg)
        if F.min() < 0 or F.max() >= len(V):
            msg = f"triangle indices must lie in [0, {len(V)}), got [{F.min()}, {F.max()}]"
            raise ValueError(msg)
        return cls(
            V,
            F,
            fiducials=_landmarks(fiducials),
            targets=_landmarks(targets),
            grid_mm=grid_mm,
            band_mm=band_mm,
        )

    @classmethod
    def from_folder(
        cls, folder: str | Path, mesh: str = "skin", *, prepare_alignment: bool = True, **kwargs: Any
    ) -> SurfaceModel:
        """Read ``manifest.json`` and the mesh's PLY from a patient-model folder; with
        ``prepare_alignment`` also what markerless initial alignment needs (~0.2 s)."""
        import open3d as o3d

        folder = Path(folder)
        manifest = _read_manifest(folder)
        entries = {m.get("name"): m for m in _list_of_objects(manifest, "meshes")}
        if mesh not in entries:
            msg = f"mesh {mesh!r} not in manifest, got {sorted(map(str, entries))}"
            raise KeyError(msg)
        ply = _inside(folder, _field(_field(entries[mesh], "files", dict), "ply", str))
        tm = o3d.io.read_triangle_mesh(ply)
        V = np.asarray(tm.vertices, dtype=np.float64)
        F = np.asarray(tm.triangles, dtype=np.int64)
        if len(V) == 0:
            msg = f"mesh file {ply} has no vertices"
            raise ValueError(msg)
        marks = manifest.get("landmarks") or {}
        if not isinstance(marks, dict):
            msg = f"manifest field 'landmarks' must be an object, got {type(marks).__name__}"
            raise ValueError(msg)
        fid: dict[str, object] = {str(m.get("name")): _point(m) for m in _list_of_objects(marks, "fiducials")}
        tgt: dict[str, object] = {str(m.get("name")): _point(m) for m in _list_of_objects(marks, "targets")}
        model = cls.from_mesh(V, F, fiducials=fid, targets=tgt, **kwargs)
        model.name = mesh
        if prepare_alignment:
            model.prepare_alignment()
        log.info("model %s: %d vertices from %s", mesh, len(V), ply)
        return model

    # ---------------------------------------------------------------- queries
    def lookup(self, points_model: F64) -> NDArray[np.int32]:
        """Nearest-vertex index for each model-frame point via the grid (-1 = off band)."""
        return self.grid.lookup(points_model)

    def fit_surface(self, *, wide: bool) -> Surface:
        """The arrays batched fits read (registration/batch_fit.py): on the fine grid, or
        ``wide``: a coarser grid (:data:`SEARCH_GRID_MM`) with a wide band
        (:data:`SEARCH_BAND_MM`: the pose searches start centimetres off the surface)
        over vertices thinned to one per :data:`SEARCH_VERTEX_MM` in single precision,
        small enough to stay in the processor's cache. Built once (~0.3 s for wide)."""
        from registration.batch_fit import Surface

        if wide not in self._fit_surfaces:
            if wide:
                keep = first_per_voxel(self.vertices, SEARCH_VERTEX_MM)
                V, N = self.vertices[keep], self.normals[keep]
                grid = NearestGrid.build(V, cKDTree(V), SEARCH_GRID_MM, SEARCH_BAND_MM)
                self._fit_surfaces[wide] = Surface(grid, V, N, np.float32)
            else:
                self._fit_surfaces[wide] = Surface(self.grid, self.vertices, self.normals, np.float64)
        return self._fit_surfaces[wide]

    def distance(self, points_model: F64) -> F64:
        """Exact unsigned distance (mm) of model-frame points (N, 3) to the triangles
        (Open3D ray-casting scene): for residuals that are reported, where the vertex
        planes of the grid would overstate the distance on a coarse mesh."""
        import open3d as o3d

        if len(points_model) == 0:
            return np.zeros(0)
        q = o3d.core.Tensor.from_numpy(np.ascontiguousarray(points_model, dtype=np.float32))
        return np.asarray(self.raycasting_scene.compute_distance(q).numpy(), dtype=np.float64)

    def nearest(self, points_model: F64) -> tuple[F64, NDArray[np.int64]]:
        """Exact nearest vertex (distance, index) via the KD-tree."""
        d, i = self.tree.query(points_model, workers=-1)
        return np.asarray(d), np.asarray(i, dtype=np.int64)

    @property
    def raycasting_scene(self) -> Any:
        """An Open3D RaycastingScene of the mesh (model frame), built once on first use."""
        if self._scene is None:
            import open3d as o3d

            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(
                o3d.core.Tensor.from_numpy(self.vertices.astype(np.float32)),
                o3d.core.Tensor.from_numpy(self.triangles.astype(np.uint32)),
            )
            self._scene = scene
        return self._scene

    def surface_sample(self, voxel_mm: float) -> tuple[F64, F64, F64]:
        """Voxel-downsampled vertices, their normals and FPFH features (cached per voxel)."""
        key = round(float(voxel_mm), 3)
        if key not in self._features:
            from registration.features import downsample_with_features

            self._features[key] = downsample_with_features(self.vertices, self.normals, voxel_mm, orient_from=None)
        return self._features[key]

    def anchors(self, spacing_mm: float) -> tuple[F64, F64]:
        """Roughly evenly spaced surface vertices and normals (one per ``spacing_mm``
        voxel), the seeds of the markerless hypothesis sweep. Cached per spacing."""
        key = -round(float(spacing_mm), 3)  # negative keys: anchors; positive: features
        if key not in self._features:
            first = first_per_voxel(self.vertices, spacing_mm)
            self._features[key] = (self.vertices[first], self.normals[first], np.zeros((0, 0)))
        pts, nrm, _ = self._features[key]
        return pts, nrm

    def patch_anchors(self, spacing_mm: float, radius_mm: float) -> tuple[F64, F64]:
        """Anchors (see :meth:`anchors`) with their normals averaged over a ball of
        ``radius_mm`` (rounded to 5 mm for the cache): the mean normal of a scene patch
        is compared with the model's mean normal over a patch of the same size, not with
        one vertex's (which on a nose points anywhere). Anchors whose ball is incoherent
        (summed normals shorter than 0.3 of the count) are skipped."""
        radius = max(5.0, 5.0 * round(radius_mm / 5.0))
        key = (round(float(spacing_mm), 3), radius)
        if key not in self._patch_anchors:
            anchors, _ = self.anchors(spacing_mm)
            fine, fine_n = self.anchors(spacing_mm / 2.0)
            pairs = cKDTree(anchors).sparse_distance_matrix(cKDTree(fine), radius, output_type="ndarray")
            counts = np.bincount(pairs["i"], minlength=len(anchors))
            summed = np.stack(
                [np.bincount(pairs["i"], weights=fine_n[pairs["j"], k], minlength=len(anchors)) for k in range(3)],
                axis=1,
            )
            norm = np.linalg.norm(summed, axis=1)
            keep = (norm > 0.3 * counts) & (counts > 0)
            self._patch_anchors[key] = (anchors[keep], summed[keep] / norm[keep, None])
        return self._patch_anchors[key]

    def prepare_alignment(
        self, voxel_mm: float = FEATURE_VOXEL_MM, spacing_mm: float = ANCHOR_SPACING_MM
    ) -> SurfaceModel:
        """Fill the caches markerless initial alignment reads (FPFH sample at
        ``voxel_mm``, sweep anchors at ``spacing_mm``), so the first alignment does not
        pay for them and the model is not written to while shared. Returns self."""
        from registration.batch_fit import warm_up

        self.surface_sample(voxel_mm)
        self.fit_surface(wide=True)
        self.fit_surface(wide=False)
        warm_up()
        self.anchors(spacing_mm)
        self.anchors(spacing_mm / 2.0)
        return self

    def seeds(self, n: int) -> F64:
        """``n`` surface vertices spread by farthest-point sampling (cached per ``n``): the
        translation seeds of the pose searches."""
        key = float(-1_000_000 - n)  # a key of its own in the cache of samples
        if key not in self._features:
            V = self.vertices
            picked = [int(np.argmin(np.sum((V - self.centroid) ** 2, axis=1)))]
            d2 = np.sum((V - V[picked[0]]) ** 2, axis=1)
            for _ in range(n - 1):
                picked.append(int(np.argmax(d2)))
                d2 = np.minimum(d2, np.sum((V - V[picked[-1]]) ** 2, axis=1))
            self._features[key] = (V[picked], self.normals[picked], np.zeros((0, 0)))
        return self._features[key][0]

    def reference_points(self) -> F64:
        """(K, 3) points where target errors and pose differences are judged: the model's
        targets, else its centroid."""
        return np.asarray([t.position_mm for t in self.targets] or [self.centroid], dtype=np.float64)

    def target(self, name: str) -> F64:
        for t in self.targets + self.fiducials:
            if t.name == name:
                return t.position_mm
        msg = f"no landmark {name!r}; have {[t.name for t in self.targets + self.fiducials]}"
        raise KeyError(msg)

    # ---------------------------------------------------------------- internals


def _landmarks(marks: dict[str, object] | None) -> tuple[Landmark, ...]:
    if not marks:
        return ()
    out = []
    for name, pos in marks.items():
        p = np.asarray(pos, dtype=np.float64)
        if p.shape != (3,):
            msg = f"landmark {name!r} must be a 3-vector in mm, got shape {p.shape}"
            raise ValueError(msg)
        out.append(Landmark(name, p))
    return tuple(out)


def _vertex_normals(V: F64, F: NDArray[np.int64]) -> F64:
    """Area-weighted vertex normals, outward where the mesh is consistently oriented.

    Where it is not (a bony surface from a threshold, a scan stitched from parts), the
    face normals around a vertex cancel: there the normal is the principal axis of the
    area-weighted face normals instead (their structure tensor), which ignores signs.
    Registration residuals are distances to tangent planes, so the sign never matters."""
    face_n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    N = np.zeros_like(V)
    area = np.zeros(len(V))
    face_area = np.linalg.norm(face_n, axis=1)
    for k in range(3):
        np.add.at(N, F[:, k], face_n)
        np.add.at(area, F[:, k], face_area)
    norm = np.linalg.norm(N, axis=1)
    cancelled = np.flatnonzero((norm < CANCELLED_NORMALS * area) & (area > 0))
    if len(cancelled):
        N[cancelled] = _principal_axes(F, face_n, face_area, cancelled, len(V), N[cancelled])
        norm = np.linalg.norm(N, axis=1)
    out: F64 = np.divide(N, norm[:, None], out=np.zeros_like(N), where=norm[:, None] > 0)
    return out


def _principal_axes(
    F: NDArray[np.int64], face_n: F64, face_area: F64, which: NDArray[np.int64], n_vertices: int, hint: F64
) -> F64:
    """Per vertex in ``which``: the principal axis of the area-weighted outer products of
    its faces' unit normals, signed towards ``hint`` where that is not zero."""
    unit = np.divide(face_n, face_area[:, None], out=np.zeros_like(face_n), where=face_area[:, None] > 0)
    outer = unit[:, :, None] * unit[:, None, :] * face_area[:, None, None]
    slot = np.full(n_vertices, -1)
    slot[which] = np.arange(len(which))
    tensor = np.zeros((len(which), 3, 3))
    for k in range(3):
        s = slot[F[:, k]]
        hit = s >= 0
        np.add.at(tensor, s[hit], outer[hit])
    axes = np.linalg.eigh(tensor)[1][:, :, 2]
    flip = np.einsum("ij,ij->i", axes, hint) < 0
    axes[flip] = -axes[flip]
    out: F64 = axes
    return out


# ---------------------------------------------------------------- manifest reading
# The manifest comes from disk and may be damaged or hostile: every field is checked for
# its type so a bad file gives one ValueError naming the field, never an AttributeError.
def _read_manifest(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text())
    if not isinstance(manifest, dict):
        msg = f"{folder / 'manifest.json'}: must hold a JSON object, got {type(manifest).__name__}"
        raise ValueError(msg)
    if manifest.get("schema_version") != SUPPORTED_SCHEMA or manifest.get("units") != "mm":
        msg = (
            f"unsupported manifest: schema_version={manifest.get('schema_version')!r}, "
            f"units={manifest.get('units')!r} (need {SUPPORTED_SCHEMA}, 'mm')"
        )
        raise ValueError(msg)
    return manifest


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind):
        msg = f"manifest field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        raise ValueError(msg)
    return value


def _list_of_objects(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = obj.get(name) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        msg = f"manifest field {name!r} must be a list of objects, got {items!r:.80}"
        raise ValueError(msg)
    return items


def _point(mark: dict[str, Any]) -> tuple[float, float, float]:
    p = mark.get("position_mm")
    ok = isinstance(p, list) and len(p) == 3 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
    xyz = np.asarray(p if ok else [np.nan], np.float64)
    if not np.all(np.isfinite(xyz)):
        msg = f"manifest landmark {mark.get('name')!r}: position_mm must be 3 finite numbers, got {p!r:.80}"
        raise ValueError(msg)
    return (float(xyz[0]), float(xyz[1]), float(xyz[2]))


def _inside(folder: Path, relative: str) -> Path:
    """The file named by the manifest, which must lie inside the model folder."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        msg = f"manifest names a mesh file outside the model folder, got {relative!r}"
        raise ValueError(msg)
    return path
