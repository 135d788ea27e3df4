"""The neural generator's rig: a mesh avatar's skeleton, skinning and faceunits in the generator frame.

A ``Rig`` is what the pose deformation (``puppet.generator.skinning``) and the deformation losses
need of a baked ``AvatarModel``, in fixed sizes so that the rigs of different identities stack
into one batch (``RigTensors``):

- the **generator frame** (docs/neural_generator.md): ``p_gen = (p_contract - origin) / unit``,
  ``origin`` the mesh engine's portrait framing target at rest and ``unit`` = framing height /
  ``APG_VISIBLE_HEIGHT`` metres, so the portrait shows the same extent as AniPortraitGAN's;
- **skin vertices**: ``V`` of the model's vertices (hair and clothes included), a farthest-point
  subsample (AniPortraitGAN looks up the nearest of 3595 SMPL vertices), with their rest positions
  and dense skinning weights over ``K`` bones. Vertices no moving bone influences are weighted
  fully on the static bone 0;
- the **bones**: bone 0 the static torso, then ``DRIVEN_BONES`` (K = 11 for every avatar). The
  model's other moving bones (upperarm02, lowerarm01, the eyes...) have no rotation of their own,
  so they move exactly like their nearest driven ancestor: their weights are folded onto it (this
  changes nothing in the posed mesh, and makes K and the tree the same for all avatars);
- **face vertices**: ``F`` of the vertices the faceunits move (farthest-point subsample) with the
  52 ARKit displacements each, for the 3DMM-imitation loss (facts §7 adapted);
- the pose mapping (rest corrections, shoulder share: ``avatar_model.driven_rotations``) and the
  portrait camera (framing, fov) in the generator frame.

Rigs are baked with the mesh engine's own code (``build_avatar_model``, ``portrait_framing`` with
``MeshEngineOptions`` defaults), so neural and mesh renders agree, and cached on disk as npz
(``rig_for_avatar``). Bump ``RIG_VERSION`` when anything here changes what a rig contains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from puppet.avatar import Avatar, avatar_to_dict
from puppet.avatar_model import DRIVEN_BONES, TORSO, AvatarModel, build_avatar_model
from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS
from puppet.errors import AssetError, OutputError

if TYPE_CHECKING:
    import torch

    from engines.mesh import Framing, MeshEngineOptions

log = logging.getLogger(__name__)

RIG_FORMAT = "puppet.rig"
RIG_VERSION = 1
"""Bump when the baking or the fields change: cached rigs of another version are rebuilt."""

RIG_BONES: tuple[str, ...] = (TORSO,) + DRIVEN_BONES
"""The rig's bones: the static torso, then the driven bones (parents before children)."""

NUM_RIG_BONES = len(RIG_BONES)  # K = 11

APG_VISIBLE_HEIGHT = 0.398
"""AniPortraitGAN's visible height at the orbit centre in its world units (2 r tan(6 deg), facts §2.2)."""

PUBLISHED_SKIN_VERTICES = 3595  # len(valid_smpl_knn_index), facts §6.4
DEFAULT_FACE_VERTICES = 1024
"""Face vertices for the imitation loss: ~1/4 of the ~3.7k vertices the faceunits move, about
6 mm apart on an adult face, finer than the displacements vary (a lip is ~1 cm thick) and small
enough that the nearest-face-vertex lookup stays cheap (1024 x the loss's sample count)."""

SUBSAMPLE_SEED = 0


@dataclass(frozen=True, eq=False)
class Rig:
    """One identity's rig, numpy, generator frame unless said otherwise (module docstring).

    name: the avatar's name (informative). origin (3,): contract-frame metres of the generator
    origin; unit: metres per generator unit.
    skin_rest (V, 3) float32; skin_weights (V, K) float32, rows sum to 1; skin_vertex_ids (V,):
    the vertices' indices in the baked ``AvatarModel``.
    bone_names (K,) = ``RIG_BONES``; heads (K, 3) float32 rest joints; parents (K,) int64
    (-1 = the fixed world, parents first); driven (D,) int64: the bone of each of ``DRIVEN_BONES``;
    head_bone: the head's bone index.
    corrections (6, 3, 3) float64 rest corrections and shoulder_share (``driven_rotations``).
    face_rest (F, 3) float32; face_basis (F, 52, 3) float32: displacement per unit ARKit weight
    (generator units); face_vertex_ids (F,).
    portrait_target, portrait_pivot (3,), portrait_distance: the mesh engine's portrait framing
    (``engines.mesh.Framing``) in the generator frame; fov_deg: its vertical field of view.
    """

    name: str
    origin: np.ndarray
    unit: float
    skin_rest: np.ndarray
    skin_weights: np.ndarray
    skin_vertex_ids: np.ndarray
    bone_names: tuple[str, ...]
    heads: np.ndarray
    parents: np.ndarray
    driven: np.ndarray
    head_bone: int
    corrections: np.ndarray
    shoulder_share: float
    face_rest: np.ndarray
    face_basis: np.ndarray
    face_vertex_ids: np.ndarray
    portrait_target: np.ndarray
    portrait_pivot: np.ndarray
    portrait_distance: float
    fov_deg: float

    def __post_init__(self) -> None:
        v, k, f = len(self.skin_rest), len(self.bone_names), len(self.face_rest)
        shapes = {
            "origin": (self.origin, (3,)), "skin_rest": (self.skin_rest, (v, 3)),
            "skin_weights": (self.skin_weights, (v, k)), "skin_vertex_ids": (self.skin_vertex_ids, (v,)),
            "heads": (self.heads, (k, 3)), "parents": (self.parents, (k,)),
            "driven": (self.driven, (len(DRIVEN_BONES),)),
            "corrections": (self.corrections, (NUM_POSE_JOINTS, 3, 3)), "face_rest": (self.face_rest, (f, 3)),
            "face_basis": (self.face_basis, (f, NUM_EXPRESSIONS, 3)), "face_vertex_ids": (self.face_vertex_ids, (f,)),
            "portrait_target": (self.portrait_target, (3,)), "portrait_pivot": (self.portrait_pivot, (3,)),
        }
        for name, (array, shape) in shapes.items():
            if np.shape(array) != shape:
                raise ValueError(f"Rig.{name} must have shape {shape}, got {np.shape(array)}")
        if any(p >= b for b, p in enumerate(self.parents)):
            raise ValueError("Rig.parents must list parents before children")
        if not np.allclose(self.skin_weights.sum(1), 1.0, atol=1e-4):
            raise ValueError("Rig.skin_weights rows must sum to 1")
        if not 0 <= self.head_bone < k or not self.unit > 0:
            raise ValueError("Rig.head_bone must be a bone index and Rig.unit positive")

    @property
    def num_skin_vertices(self) -> int:
        return len(self.skin_rest)

    @property
    def num_bones(self) -> int:
        return len(self.bone_names)

    @property
    def num_face_vertices(self) -> int:
        return len(self.face_rest)

    @property
    def portrait(self) -> Framing:
        """The portrait framing in the generator frame, as the mesh engine's ``Framing``
        (so ``engines.mesh.orbit_camera(rig.portrait, yaw, pitch, rig.fov_deg)`` works here)."""
        from engines.mesh import Framing

        return Framing(target=self.portrait_target.astype(np.float64), pivot=self.portrait_pivot.astype(np.float64),
                       distance=float(self.portrait_distance))

    def to_generator(self, points: np.ndarray) -> np.ndarray:
        """Contract-frame points (metres) to the generator frame. ``(..., 3) -> (..., 3)``."""
        return (np.asarray(points, dtype=np.float64) - self.origin) / self.unit

    def to_contract(self, points: np.ndarray) -> np.ndarray:
        """Generator-frame points to the contract frame (metres). ``(..., 3) -> (..., 3)``."""
        return np.asarray(points, dtype=np.float64) * self.unit + self.origin


# ----------------------------------------------------------------------------- baking

def farthest_point_sample(points: np.ndarray, count: int, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Indices of ``count`` of ``points (N, 3)`` spread evenly: start at a seeded random point,
    then repeatedly take the point farthest from those taken. Any prefix of the result is itself
    such a sample. ``-> (count,)`` int64."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if not 0 < count <= n:
        raise ValueError(f"cannot take {count} of {n} points")
    out = np.empty(count, np.int64)
    dist = np.full(n, np.inf)
    current = int(np.random.default_rng(seed).integers(n))
    for i in range(count):
        out[i] = current
        d = points - points[current]
        np.minimum(dist, np.einsum("ij,ij->i", d, d), out=dist)
        current = int(np.argmax(dist))
    return out


def fold_bones(names: Sequence[str], parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map a skeleton (``names``, ``parents``, parents first, bone 0 the static torso) onto
    ``RIG_BONES``: each bone goes to its nearest ancestor-or-self among them (the torso when it
    has none). Returns ``fold (len(names),)`` rig bone per bone and the rig's ``parents (K,)``."""
    rig_of = {name: i for i, name in enumerate(RIG_BONES)}
    missing = [n for n in RIG_BONES if n not in names]
    if missing:
        raise ValueError(f"the skeleton lacks the rig bones {missing}")

    def nearest(b: int) -> int:
        while b >= 0:
            if names[b] in rig_of:
                return rig_of[names[b]]
            b = int(parents[b])
        return -1

    fold = np.array([max(nearest(b), 0) for b in range(len(names))], np.int64)
    rig_parents = np.full(NUM_RIG_BONES, -1, np.int64)
    for name, k in rig_of.items():
        b = names.index(name)
        rig_parents[k] = nearest(int(parents[b])) if parents[b] >= 0 else -1
    return fold, rig_parents


def generator_frame(framing: Framing, fov_deg: float) -> tuple[np.ndarray, float]:
    """``origin (3,)`` and ``unit`` (m) of the generator frame for a portrait ``framing``
    (``engines.mesh.Framing``, contract frame): the target, and the visible height at the
    target over ``APG_VISIBLE_HEIGHT``."""
    height = 2.0 * framing.distance * np.tan(np.radians(fov_deg) / 2.0)
    return np.asarray(framing.target, dtype=np.float64).copy(), float(height / APG_VISIBLE_HEIGHT)


def rig_from_model(model: AvatarModel, framing: Framing, fov_deg: float,
                   skin_vertices: int = PUBLISHED_SKIN_VERTICES, face_vertices: int = DEFAULT_FACE_VERTICES) -> Rig:
    """The rig of a baked avatar ``model`` portrayed with ``framing`` (``engines.mesh.Framing``)
    at ``fov_deg`` (module docstring)."""
    origin, unit = generator_frame(framing, fov_deg)
    sk = model.skeleton
    fold, parents = fold_bones(sk.names, sk.parents)
    # Dense skinning over the model's bones for the sampled vertices, folded onto the rig's.
    skin_ids = farthest_point_sample(model.rest, skin_vertices)
    row_of = np.full(model.num_vertices, -1, np.int64)
    row_of[model.skin_index] = np.arange(len(model.skin_index))
    rows = row_of[skin_ids]
    w_model = np.zeros((skin_vertices, len(sk.names)))
    w_model[rows < 0, 0] = 1.0
    w_model[rows >= 0] = model.skin_weights[rows[rows >= 0]].toarray()
    weights = np.zeros((skin_vertices, NUM_RIG_BONES))
    np.add.at(weights.T, fold, w_model.T)
    weights /= weights.sum(1, keepdims=True)
    heads = np.stack([sk.heads[sk.index(name)] for name in RIG_BONES])
    # Faceunits: the basis rows (3 per vertex, x y z) of the sampled face vertices.
    local = farthest_point_sample(model.rest[model.expression_index], face_vertices)
    basis = model.expression_basis[(3 * local[:, None] + np.arange(3)).reshape(-1)].toarray()
    basis = basis.reshape(face_vertices, 3, NUM_EXPRESSIONS).transpose(0, 2, 1)
    face_ids = model.expression_index[local]

    def gen(p: np.ndarray) -> np.ndarray:
        return ((np.asarray(p, dtype=np.float64) - origin) / unit).astype(np.float32)

    return Rig(
        name=model.avatar.name, origin=origin, unit=unit,
        skin_rest=gen(model.rest[skin_ids]), skin_weights=weights.astype(np.float32), skin_vertex_ids=skin_ids,
        bone_names=RIG_BONES, heads=gen(heads), parents=parents,
        driven=np.array([RIG_BONES.index(n) for n in DRIVEN_BONES], np.int64), head_bone=RIG_BONES.index("head"),
        corrections=np.asarray(model.corrections, dtype=np.float64), shoulder_share=float(model.shoulder_share),
        face_rest=gen(model.rest[face_ids]), face_basis=(basis / unit).astype(np.float32),
        face_vertex_ids=face_ids.astype(np.int64),
        portrait_target=gen(framing.target), portrait_pivot=gen(framing.pivot),
        portrait_distance=float(framing.distance / unit), fov_deg=float(fov_deg),
    )


def _engine_options() -> MeshEngineOptions:
    from engines.mesh import MeshEngineOptions

    return MeshEngineOptions()


def rig_cache_key(avatar: Avatar, skin_vertices: int, face_vertices: int,
                  options: MeshEngineOptions | None = None) -> str:
    """Hash of everything a rig depends on: the avatar JSON, the sizes, ``RIG_VERSION`` and the
    mesh engine's framing and bake options."""
    o = options or _engine_options()
    doc = {"avatar": avatar_to_dict(avatar), "skin_vertices": skin_vertices, "face_vertices": face_vertices,
           "rig_version": RIG_VERSION, "seed": SUBSAMPLE_SEED, "fov_deg": o.fov_deg,
           "frame_heights": o.frame_heights, "top_margin": o.top_margin, "bake": dataclasses.asdict(o.bake)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def default_rig_cache_dir() -> Path:
    """``$PUPPET_CACHE_DIR/rigs`` (or ``~/.cache/puppet/rigs``)."""
    from puppet.assets import cache_dir

    return cache_dir() / "rigs"


def rig_for_avatar(avatar: Avatar, skin_vertices: int = PUBLISHED_SKIN_VERTICES,
                   face_vertices: int = DEFAULT_FACE_VERTICES, cache_dir: str | os.PathLike | None = None,
                   options: MeshEngineOptions | None = None) -> Rig:
    """The rig of ``avatar``, baked as the mesh engine bakes it (``options``: its
    ``MeshEngineOptions``, default the defaults) and cached under ``cache_dir`` (default
    ``default_rig_cache_dir()``). A cached file that cannot be read is rebuilt."""
    from engines.mesh import portrait_framing

    o = options or _engine_options()
    folder = Path(cache_dir) if cache_dir is not None else default_rig_cache_dir()
    path = folder / f"{rig_cache_key(avatar, skin_vertices, face_vertices, o)}.npz"
    if path.is_file():
        try:
            return load_rig(path)
        except AssetError as exc:
            log.warning("rebuilding the rig of %r: %s", avatar.name, exc)
    t0 = time.perf_counter()
    model = build_avatar_model(avatar, o.bake)
    rig = rig_from_model(model, portrait_framing(model, o.fov_deg, o.frame_heights, o.top_margin), o.fov_deg,
                         skin_vertices, face_vertices)
    log.info("rig of %r: %d skin, %d face vertices, %.1f s", avatar.name, skin_vertices, face_vertices,
             time.perf_counter() - t0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_rig(rig, path)
    except OutputError as exc:  # a read-only cache only costs time
        log.warning("rig not cached: %s", exc)
    return rig


# ----------------------------------------------------------------------------- files

_SCALARS = ("unit", "head_bone", "shoulder_share", "portrait_distance", "fov_deg")


def save_rig(rig: Rig, path: str | os.PathLike) -> Path:
    """Write ``rig`` as an npz (no pickled objects), atomically."""
    path = Path(path)
    arrays = {f.name: np.asarray(getattr(rig, f.name)) for f in dataclasses.fields(Rig)}
    arrays["bone_names"] = np.asarray(rig.bone_names, dtype=str)
    arrays["name"] = np.asarray(rig.name, dtype=str)
    arrays["format"] = np.asarray(RIG_FORMAT)
    arrays["version"] = np.asarray(RIG_VERSION)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")  # processes baking the same rig: no clash
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_rig(path: str | os.PathLike) -> Rig:
    """Read a rig written by ``save_rig``; ``AssetError`` when it is missing, foreign, of another
    ``RIG_VERSION`` or corrupt."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AssetError(f"cannot read rig file {path}: {exc}") from None
    if str(arrays.get("format", "")) != RIG_FORMAT:
        raise AssetError(f"{path} is not a puppet rig file")
    if int(arrays.get("version", -1)) != RIG_VERSION:
        raise AssetError(f"{path}: rig version {int(arrays.get('version', -1))}, expected {RIG_VERSION}")
    try:
        kwargs = {}
        for f in dataclasses.fields(Rig):
            value = arrays[f.name]
            if f.name == "name":
                value = str(value)
            elif f.name == "bone_names":
                value = tuple(str(n) for n in value)
            elif f.name in _SCALARS:
                value = int(value) if f.name == "head_bone" else float(value)
            kwargs[f.name] = value
        return Rig(**kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise AssetError(f"{path}: invalid rig ({exc})") from None


def canonical_pose(rig: Rig) -> np.ndarray:
    """The contract pose that leaves the rig in its rest (canonical) pose: zero except the
    shoulders, whose rotation is relative to SMPL's T-pose while the canonical arms hang in anny's
    A-pose: ``R_shoulder = C_collar^T C_shoulder`` (``avatar_model.driven_rotations``). ``-> (6, 3)``."""
    from puppet.contract import SmplJoint, pose_row
    from puppet.rotations import matrix_to_axis_angle

    c = np.asarray(rig.corrections, dtype=np.float64)
    pose = np.zeros((NUM_POSE_JOINTS, 3))
    for collar, shoulder in ((SmplJoint.LEFT_COLLAR, SmplJoint.LEFT_SHOULDER),
                             (SmplJoint.RIGHT_COLLAR, SmplJoint.RIGHT_SHOULDER)):
        pose[pose_row(shoulder)] = matrix_to_axis_angle(c[pose_row(collar)].T @ c[pose_row(shoulder)])
    return pose


# ----------------------------------------------------------------------------- cameras

def camera_to_generator(rig: Rig, cam2world_contract: np.ndarray) -> np.ndarray:
    """A camera-to-world matrix from the contract frame to the generator frame (rotation kept,
    position moved and scaled). ``(..., 4, 4) -> (..., 4, 4)`` float64."""
    m = np.array(cam2world_contract, dtype=np.float64)
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"cam2world must be (..., 4, 4), got {m.shape}")
    m[..., :3, 3] = (m[..., :3, 3] - rig.origin) / rig.unit
    return m


def portrait_cam2world(rig: Rig, yaw: float, pitch: float) -> np.ndarray:
    """The mesh engine's portrait camera for ``camera = (yaw, pitch)`` (``engines.mesh.orbit_camera``)
    as a camera-to-world matrix in the generator frame (OpenGL: columns right, up, backward,
    position). ``-> (4, 4)`` float64."""
    from engines.mesh import orbit_camera

    camera, _ = orbit_camera(rig.portrait, float(yaw), float(pitch), rig.fov_deg)
    view = camera.view
    out = np.eye(4)
    out[:3, :3] = view[:3, :3].T
    out[:3, 3] = -view[:3, :3].T @ view[:3, 3]
    return out


# ----------------------------------------------------------------------------- torch

_TENSOR_FIELDS = ("origin", "unit", "skin_rest", "skin_weights", "heads", "corrections", "shoulder_share",
                  "face_rest", "face_basis", "portrait_target", "portrait_pivot", "portrait_distance")


@dataclass(frozen=True, eq=False)
class RigTensors:
    """The rigs of a batch as torch tensors (batch first; the ``Rig`` fields of the same names):
    origin (B, 3), unit (B,), skin_rest (B, V, 3), skin_weights (B, V, K), heads (B, K, 3),
    corrections (B, 6, 3, 3), shoulder_share (B,), face_rest (B, F, 3), face_basis (B, F, 52, 3),
    portrait_target, portrait_pivot (B, 3), portrait_distance (B,).
    The skeleton's topology is the same for the whole batch and static (plain Python ints, so
    the kinematics unroll into a fixed graph): parents (K,), driven (D,), head_bone."""

    origin: torch.Tensor
    unit: torch.Tensor
    skin_rest: torch.Tensor
    skin_weights: torch.Tensor
    heads: torch.Tensor
    corrections: torch.Tensor
    shoulder_share: torch.Tensor
    face_rest: torch.Tensor
    face_basis: torch.Tensor
    portrait_target: torch.Tensor
    portrait_pivot: torch.Tensor
    portrait_distance: torch.Tensor
    parents: tuple[int, ...]
    driven: tuple[int, ...]
    head_bone: int

    @staticmethod
    def stack(rigs: Sequence[Rig], device=None, dtype=None) -> "RigTensors":
        """Stack ``rigs`` (same V, K, F and skeleton topology) into tensors on ``device``
        (``dtype`` default float32)."""
        import torch

        if not rigs:
            raise ValueError("RigTensors.stack needs at least one rig")
        first = rigs[0]
        for r in rigs[1:]:
            if (r.skin_rest.shape != first.skin_rest.shape or r.face_rest.shape != first.face_rest.shape
                    or r.bone_names != first.bone_names or not np.array_equal(r.parents, first.parents)
                    or not np.array_equal(r.driven, first.driven) or r.head_bone != first.head_bone):
                raise ValueError(f"rigs {first.name!r} and {r.name!r} differ in size or skeleton: "
                                 "they cannot be stacked")
        dtype = dtype or torch.float32
        tensors = {name: torch.as_tensor(np.stack([np.asarray(getattr(r, name), dtype=np.float64) for r in rigs]),
                                         dtype=dtype, device=device) for name in _TENSOR_FIELDS}
        return RigTensors(**tensors, parents=tuple(int(p) for p in first.parents),
                          driven=tuple(int(d) for d in first.driven), head_bone=int(first.head_bone))

    @property
    def batch_size(self) -> int:
        return int(self.skin_rest.shape[0])

    @property
    def num_skin_vertices(self) -> int:
        return int(self.skin_rest.shape[1])

    @property
    def num_bones(self) -> int:
        return len(self.parents)

    @property
    def num_face_vertices(self) -> int:
        return int(self.face_rest.shape[1])

    def _map(self, fn) -> "RigTensors":
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in _TENSOR_FIELDS})

    def to(self, device=None, dtype=None) -> "RigTensors":
        """The same rigs on ``device`` (and in floating ``dtype``)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def take(self, index) -> "RigTensors":
        """The rigs at ``index`` (a 1-D integer tensor or sequence; repeats allowed): e.g. the
        identities of a training batch out of all the stacked ones."""
        import torch

        index = torch.as_tensor(index, dtype=torch.long, device=self.skin_rest.device).reshape(-1)
        return self._map(lambda t: t.index_select(0, index))
