"""Derive where MediaPipe's 478 face landmarks sit on anny's head, and write the built-in
expression solver's basis file (``trackers/data/anny_face_basis.npz``).

How: render anny's head (several phenotypes, views and expressions) with the mesh engine's
rasteriser, track each render with MediaPipe FaceMesh, and lift every landmark back onto the mesh
through the triangle-id pass. anny's phenotypes share one topology, so every lift is a
(triangle, barycentric) point of the same surface; the per-landmark consensus is the median of the
lifted points on the default head, snapped back onto the surface. The spread of the lifts says how
well-defined each landmark is (the face oval slides with the view; the eye corners do not) and
becomes its weight in the solver.

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

from engines.raster import Camera, MeshRasterizer, look_at, lift_pixels
from puppet.contract import ARKIT_NAMES, Blendshape
from puppet.face_model import PHENOTYPE_NAMES, eyeball_directions, head_colors, head_mesh, surface_points

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


def _expressions() -> list[np.ndarray]:
    neutral = np.zeros(len(ARKIT_NAMES))
    open_mouth = neutral.copy()
    open_mouth[Blendshape.jawOpen] = 0.35
    smile = neutral.copy()
    smile[[Blendshape.mouthSmileLeft, Blendshape.mouthSmileRight]] = 0.5
    return [neutral, open_mouth, smile]


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
    lifts: list[list[np.ndarray]] = [[] for _ in range(478)]
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
                    result = face_mesh.process(np.ascontiguousarray(image))
                    if not result.multi_face_landmarks:
                        continue
                    detections += 1
                    lm = result.multi_face_landmarks[0].landmark
                    px = np.array([[p.x * IMAGE_SIZE, p.y * IMAGE_SIZE] for p in lm])
                    tri_map, bary_map = raster.render_triangle_ids(verts, camera)
                    tri, bary = lift_pixels(px, tri_map, bary_map)
                    # Express every lift on the base head at neutral: same topology, same triangle.
                    ok = tri >= 0
                    points = surface_points(base.rest, faces, tri[ok], bary[ok])
                    for i, p in zip(np.flatnonzero(ok), points):
                        lifts[i].append(p)
    face_mesh.close()
    log.info("%d renders, %d with a detected face", renders, detections)
    if detections < renders // 2:
        raise RuntimeError(f"FaceMesh found the rendered head in only {detections}/{renders} renders")

    consensus = np.zeros((478, 3))
    spread = np.zeros(478)
    counts = np.array([len(v) for v in lifts])
    for i, pts in enumerate(lifts):
        if not pts:
            raise RuntimeError(f"landmark {i} never landed on the head")
        pts = np.asarray(pts)
        consensus[i] = np.median(pts, axis=0)
        spread[i] = np.median(np.linalg.norm(pts - consensus[i], axis=1))
    mesh = trimesh.Trimesh(base.rest, faces, process=False)
    snapped, _, tri = trimesh.proximity.closest_point(mesh, consensus)
    bary = trimesh.triangles.points_to_barycentric(base.rest[faces[tri]], snapped)

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
    identity_basis = (vt[:k] * (sing[:k, None] / np.sqrt(len(samples)))).reshape(k, 478, 3)

    import anny

    meta = {
        "what": "MediaPipe FaceMesh 478 landmarks on anny's head topology, contract frame, metres",
        "anny_version": anny.__version__,
        "mediapipe_version": mp.__version__,
        "renders": renders,
        "detections": detections,
        "phenotypes": list(PHENOTYPES),
        "views_deg": [list(v) for v in VIEWS_DEG],
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
        identity_mean=identity_mean.astype(np.float32),
        identity_basis=identity_basis.astype(np.float32),
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
