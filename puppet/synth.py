"""``puppet synth``: a dataset rendered by the mesh engine, to train the neural generator.

Each sample is a random identity (``puppet.avatar.random_avatar``) with an expression, an SMPL
12-17 pose and a camera, rendered twice (the paper's dual-camera scheme, facts §2.3):

- the **portrait**: the mesh engine's own portrait camera (orbit about the head joint, contract
  camera (yaw, pitch), fov ``MeshEngineOptions.fov_deg`` = 14°), ``size`` pixels square;
- the **face**: a camera attached to the posed head (the head bone's skinning transform), aimed at
  the head centre (the eyes' midpoint moved ``HEAD_CENTER_BACK`` of the way back to the head joint,
  in depth), from a direction drawn relative to the head's facing, fov ``FACE_FOV_DEG`` (12°), at
  the distance where the visible height at the head centre is ``FACE_HEIGHT_HEADS`` (1.15) head
  heights (skull top to chin); ``size // 2`` pixels square (128 for 256, 256 for 512), rendered at
  ``size`` by the same engine (``MeshEngine.render_view``) and averaged 2 x 2.

Parameters (``SamplingOptions``; angles in radians):

- expression: with probability ``bank_fraction`` a row of the expression bank (real footage tracked
  by ``puppet.expression_bank``; MediaPipe's blendshapes when ``face_landmarker.task`` is found),
  else a sparse random mix of 0-5 facial actions (blinks, gaze, brows, jaw, smile, pucker...) with
  per-unit ranges like a performer's (``EXPRESSION_ACTIONS``). Without footage (no
  ``../shared/media/video`` and no ``--bank-videos``) every expression is random, and the manifest
  says so. The eyes turn from the eyeLook* weights (the engine's default ``gaze_source``).
- pose: with probability ``pose_bank_fraction`` a bank row's neck and head (and collars and
  shoulders when that row's body was tracked), else a random head rotation relative to the torso
  (yaw, pitch, roll ~ N(0, limit/2) clipped to ``head_limits_deg`` = ±40°, ±25°, ±15°) split
  between neck and head as the body solver does (``neck_share`` 0.4), with the collars and shoulders
  drawn near the tracker's rest (small elevations and swings, ``collar_limit_deg``,
  ``shoulder_limit_deg``).
- portrait camera: yaw ~ N(0, 0.3) clipped ±0.6, pitch ~ N(0, 0.15) clipped ±0.35.
- face camera direction relative to the head: yaw ~ N(0, 0.3), pitch ~ N(0, 0.155) (the GRAM /
  AniFaceGAN face prior), clipped ±0.9 and ±0.45; same convention as the portrait camera's orbit
  (``engines.mesh.orbit_rotation``: yaw > 0 puts the camera on the head's right, pitch > 0 below).

Determinism: sample ``i`` draws from ``np.random.default_rng([seed, i, stream])`` (one stream per
quantity) and its identity is ``i * identities // samples`` (contiguous blocks, so each avatar is
baked once; identity ``j`` is ``random_avatar`` of a seed derived from ``[seed, j]``). The same
options give byte-identical labels and, on the same renderer, identical images, whatever the
order in which shards are rendered.

On disk (``DIR``)::

    manifest.json          format "puppet.synth" version 1, "complete", seed, size, face_size,
                           samples, shard_size, identities (avatar JSON documents, index =
                           the identity label), expression_names (puppet.contract.ARKIT_NAMES),
                           pose_joints, sampling, cameras, expression_bank (used, rows, videos,
                           sha256, or the reason it was not used), fields (name -> per-sample
                           shape and dtype), shards ([{file, start, count}]), generator (puppet
                           and tool versions, engine, GL device, MSAA)
    expression_bank.npz    the bank the expression/pose sources index (when used)
    shard-00000.npz ...    K = shard_size samples each (the last may be shorter), no pickles:

      portrait           uint8 (K, S, S, 4)      RGB premultiplied by alpha (black background),
                                                 alpha = the avatar's coverage (the mask)
      face               uint8 (K, S/2, S/2, 4)  same, seen by the face camera
      index              int64 (K,)              global sample index
      identity           int32 (K,)              index into manifest "identities"
      expression         float32 (K, 52)         ARKit weights in [0, 1]
      expression_source  int32 (K,)              bank row, or -1 for a random expression
      pose               float32 (K, 6, 3)       SMPL joints 12-17 axis-angle (contract)
      pose_source        int32 (K,)              bank row (neck, head; the rest too when that row
                                                 has a body), or -1 for a random pose
      camera             float32 (K, 2)          contract camera (yaw, pitch) of the portrait
      gaze               float32 (K, 2, 2)       per-eye (yaw, pitch) the eyes were turned by (from
                                                 the eyeLook* weights; not an independent input)
      face_view          float32 (K, 2)          face camera (yaw, pitch) relative to the head
      portrait_cam2world float32 (K, 4, 4)       contract frame, metres, OpenGL: columns right,
      face_cam2world     float32 (K, 4, 4)       up, backward (the camera looks down -Z), position
      portrait_fov       float32 (K,)            vertical fov, degrees
      face_fov           float32 (K,)
      face_center        float32 (K, 3)          the face camera's target (posed head centre)
      framing_target     float32 (K, 3)          the portrait framing of the identity
      framing_pivot      float32 (K, 3)          (engines.mesh.Framing: target, orbit pivot,
      framing_distance   float32 (K,)            distance at frontal)

Shards are written to a temporary name, then renamed: a finished shard is complete. Running the
same command again resumes: shards already there are kept (a folder holding a different dataset is
refused), and Ctrl-C keeps the finished shards. Read with ``puppet.dataset.SynthDataset``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from puppet.avatar import Avatar, avatar_to_dict, random_avatar
from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, NUM_POSE_JOINTS, POSE_JOINTS, SmplJoint, pose_row
from puppet.errors import OutputError

log = logging.getLogger(__name__)

FORMAT_NAME = "puppet.synth"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BANK_FILE = "expression_bank.npz"

FACE_FOV_DEG = 12.0
FACE_HEIGHT_HEADS = 1.15
HEAD_CENTER_BACK = 0.7
"""The head centre: the eyes' midpoint moved this fraction of the way back (in depth only) to the
head joint, near the middle of the skull, so the face camera turns about the head, not the eyes."""

MAX_DEFAULT_IDENTITIES = 256
SAMPLES_PER_IDENTITY = 32

# Per-sample random streams (np.random.default_rng([seed, index, stream])).
_EXPRESSION, _POSE, _CAMERA, _FACE_VIEW = 0, 1, 2, 3
_IDENTITY_STREAM = 7

FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "index": ((), "int64"),
    "identity": ((), "int32"),
    "expression": ((NUM_EXPRESSIONS,), "float32"),
    "expression_source": ((), "int32"),
    "pose": ((NUM_POSE_JOINTS, 3), "float32"),
    "pose_source": ((), "int32"),
    "camera": ((2,), "float32"),
    "gaze": ((2, 2), "float32"),
    "face_view": ((2,), "float32"),
    "portrait_cam2world": ((4, 4), "float32"),
    "face_cam2world": ((4, 4), "float32"),
    "portrait_fov": ((), "float32"),
    "face_fov": ((), "float32"),
    "face_center": ((3,), "float32"),
    "framing_target": ((3,), "float32"),
    "framing_pivot": ((3,), "float32"),
    "framing_distance": ((), "float32"),
}
"""Label arrays of a shard: name -> (per-sample shape, dtype); plus the images ``portrait`` and ``face``."""


# ----------------------------------------------------------------------------- options

@dataclass(frozen=True)
class SamplingOptions:
    """How each sample's parameters are drawn (see the module docstring; angles in radians).

    bank_fraction: share of expressions taken from the expression bank (when there is one).
    pose_bank_fraction: share of poses whose neck and head come from the bank.
    head_limits_deg: (yaw, pitch, roll) limits of a random head rotation relative to the torso;
        each ~ N(0, limit / 2) clipped to the limit.
    collar_limit_deg: limit of the collars' random elevation and protraction.
    shoulder_limit_deg: limit of each axis of the shoulders' random turn about the rest arm.
    camera_sigma, camera_limit: portrait camera (yaw, pitch) ~ N(0, sigma) clipped to the limit.
    face_sigma, face_limit: the face camera's direction relative to the head, likewise.
    """

    bank_fraction: float = 0.7
    pose_bank_fraction: float = 0.5
    head_limits_deg: tuple[float, float, float] = (40.0, 25.0, 15.0)
    collar_limit_deg: float = 10.0
    shoulder_limit_deg: float = 15.0
    camera_sigma: tuple[float, float] = (0.3, 0.15)
    camera_limit: tuple[float, float] = (0.6, 0.35)
    face_sigma: tuple[float, float] = (0.3, 0.155)
    face_limit: tuple[float, float] = (0.9, 0.45)

    def __post_init__(self) -> None:
        for name in ("bank_fraction", "pose_bank_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("head_limits_deg", "camera_sigma", "camera_limit", "face_sigma", "face_limit"):
            value = tuple(float(v) for v in getattr(self, name))
            if any(v < 0 for v in value):
                raise ValueError(f"{name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class BankOptions:
    """Where real expressions and poses come from.

    use: "auto" tracks (or reads from the cache) the videos when they are found; "off" draws
        every expression and pose at random.
    videos: a folder of videos; None = the project's test footage beside the repo
        (``../shared/media/video``) when present.
    step: track every step-th frame.
    face_landmarker: MediaPipe's face_landmarker.task (its blendshape network gives the
        expressions); None = ``../shared/assets`` or the usual places, else the built-in solver.
    """

    use: Literal["auto", "off"] = "auto"
    videos: Path | None = None
    step: int = 3
    face_landmarker: Path | None = None

    def __post_init__(self) -> None:
        if self.use not in ("auto", "off"):
            raise ValueError(f"bank use must be 'auto' or 'off', got {self.use!r}")
        if self.step < 1:
            raise ValueError(f"bank step must be >= 1, got {self.step}")


@dataclass(frozen=True)
class SynthOptions:
    """One ``puppet synth`` run.

    output: the dataset folder (created; a folder holding the same dataset is resumed).
    samples: N; size: portrait side S (the face image is S // 2); seed: everything random.
    identities: number of random avatars (None: N / 32 clamped to [1, 256], at most N).
    shard_size: samples per shard file; compress: zlib-compress shards (smaller, slower).
    """

    output: Path
    samples: int
    size: int = 256
    seed: int = 0
    identities: int | None = None
    shard_size: int = 256
    compress: bool = False
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    bank: BankOptions = field(default_factory=BankOptions)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.identities is not None and self.identities < 1:
            raise ValueError(f"identities must be >= 1, got {self.identities}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        object.__setattr__(self, "output", Path(self.output))

    @property
    def face_size(self) -> int:
        return self.size // 2

    @property
    def num_identities(self) -> int:
        n = self.identities or min(max(self.samples // SAMPLES_PER_IDENTITY, 1), MAX_DEFAULT_IDENTITIES)
        return min(n, self.samples)

    @property
    def num_shards(self) -> int:
        return -(-self.samples // self.shard_size)


@dataclass(frozen=True)
class SynthSummary:
    """What a run did."""

    output: Path
    samples: int
    rendered: int
    shards_written: int
    shards_skipped: int
    shards_total: int
    seconds: float
    interrupted: bool
    bank_rows: int

    @property
    def samples_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        head = "interrupted: kept" if self.interrupted else "wrote"
        done = self.shards_written + self.shards_skipped
        return (f"{head} {self.rendered} samples in {self.shards_written} shards to {self.output} in "
                f"{self.seconds:.1f} s ({self.samples_per_second:.1f} samples/s); {done} of {self.shards_total} "
                f"shards done ({self.shards_skipped} were already there); expression bank: {self.bank_rows} rows")


# ----------------------------------------------------------------------------- identities

def identity_of(index: int, samples: int, identities: int) -> int:
    """Identity label of sample ``index``: contiguous, balanced blocks."""
    return index * identities // samples


def synth_identity(seed: int, j: int) -> Avatar:
    """Identity ``j`` of a dataset with ``seed``: a random avatar."""
    sub = int(np.random.SeedSequence([seed, _IDENTITY_STREAM, j]).generate_state(1)[0])
    return random_avatar(sub, name=f"synth-{seed}-{j}")


# ----------------------------------------------------------------------------- random expressions

ExpressionAction = tuple[str, float, dict[str, float]]

EXPRESSION_ACTIONS: tuple[ExpressionAction, ...] = (
    ("blink", 3.0, {"eyeBlink*": 1.0}),
    ("gaze", 3.0, {}),  # eyeLook* in a consistent direction for both eyes (see _gaze_weights)
    ("squint", 1.0, {"eyeSquint*": 0.6, "cheekSquint*": 0.4}),
    ("wide", 1.0, {"eyeWide*": 0.6}),
    ("brows_up", 2.0, {"browInnerUp": 0.8, "browOuterUp*": 0.7}),
    ("brows_inner", 1.0, {"browInnerUp": 0.8}),
    ("brows_down", 1.5, {"browDown*": 0.6}),
    ("jaw_open", 3.0, {"jawOpen": 0.7, "mouthLowerDown*": 0.3}),
    ("smile", 3.0, {"mouthSmile*": 0.8, "cheekSquint*": 0.3}),
    ("frown", 1.0, {"mouthFrown*": 0.6}),
    ("pucker", 1.0, {"mouthPucker": 0.7}),
    ("funnel", 1.0, {"mouthFunnel": 0.6, "jawOpen": 0.2}),
    ("stretch", 1.0, {"mouthStretch*": 0.6}),
    ("press", 1.0, {"mouthPress*": 0.6}),
    ("roll", 0.5, {"mouthRollLower": 0.5, "mouthRollUpper": 0.5}),
    ("shrug", 0.5, {"mouthShrugLower": 0.5, "mouthShrugUpper": 0.4}),
    ("dimple", 0.5, {"mouthDimple*": 0.5}),
    ("upper_lip", 0.5, {"mouthUpperUp*": 0.5}),
    ("sneer", 0.5, {"noseSneer*": 0.5}),
    ("puff", 0.3, {"cheekPuff": 0.6}),
    ("mouth_left", 0.25, {"mouthLeft": 0.5}),
    ("mouth_right", 0.25, {"mouthRight": 0.5}),
    ("jaw_left", 0.25, {"jawLeft": 0.4}),
    ("jaw_right", 0.25, {"jawRight": 0.4}),
    ("jaw_forward", 0.3, {"jawForward": 0.4}),
    ("tongue", 0.2, {"tongueOut": 0.6, "jawOpen": 0.4}),
)
"""Facial actions a random expression mixes: (name, how often it is picked, units with the
largest weight each reaches; ``*`` = both sides, Left and Right)."""

ACTION_COUNT_P: tuple[float, ...] = (0.08, 0.22, 0.30, 0.22, 0.12, 0.06)
"""Probability of mixing 0, 1, ... 5 actions."""

GAZE_MAX = (0.6, 0.5)
"""Largest eyeLook weight sideways and up/down of a random gaze."""

_INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}


def _gaze_weights(yaw: float, pitch: float) -> dict[str, float]:
    """eyeLook* weights of both eyes looking the same way: ``yaw`` > 0 to the person's left
    (left eye out, right eye in), ``pitch`` > 0 down; both in [-1, 1] of the unit range."""
    left, right, down, up = max(yaw, 0.0), max(-yaw, 0.0), max(pitch, 0.0), max(-pitch, 0.0)
    return {"eyeLookOutLeft": left, "eyeLookInRight": left, "eyeLookInLeft": right, "eyeLookOutRight": right,
            "eyeLookDownLeft": down, "eyeLookDownRight": down, "eyeLookUpLeft": up, "eyeLookUpRight": up}


def random_expression(rng: np.random.Generator) -> np.ndarray:
    """A sparse random expression: 0-5 actions of ``EXPRESSION_ACTIONS``, each at a random
    strength (0.15-1 of its units' ranges), both sides a little different (one side only, 15% of
    the time). Units shared by two actions take the larger weight. ``-> (52,)`` float64."""
    out = np.zeros(NUM_EXPRESSIONS)
    count = int(rng.choice(len(ACTION_COUNT_P), p=ACTION_COUNT_P))
    p = np.array([a[1] for a in EXPRESSION_ACTIONS])
    for k in rng.choice(len(EXPRESSION_ACTIONS), size=count, replace=False, p=p / p.sum()):
        name, _, units = EXPRESSION_ACTIONS[k]
        strength = rng.uniform(0.15, 1.0)
        if name == "gaze":
            yaw, pitch = rng.uniform(-1.0, 1.0, 2) * strength
            weights = _gaze_weights(yaw * GAZE_MAX[0], pitch * GAZE_MAX[1])
        else:
            one_side = rng.uniform() < 0.15
            keep = "Left" if rng.uniform() < 0.5 else "Right"
            weights = {}
            for unit, top in units.items():
                sides = ("Left", "Right") if unit.endswith("*") else ("",)
                for side in sides:
                    if one_side and side and side != keep:
                        continue
                    weights[unit.rstrip("*") + side] = top * strength * (1.0 + 0.1 * rng.standard_normal())
        for unit, w in weights.items():
            i = _INDEX[unit]
            out[i] = max(out[i], w)
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------- random poses and cameras

def _clipped_normal(rng: np.random.Generator, sigma, limit) -> np.ndarray:
    return np.clip(rng.normal(0.0, sigma), -np.asarray(limit), np.asarray(limit))


def random_pose(rng: np.random.Generator, sampling: SamplingOptions) -> np.ndarray:
    """A random SMPL 12-17 pose (see the module docstring). ``-> (6, 3)`` float64 axis-angle."""
    from puppet.rotations import axis_angle_to_matrix, matrix_to_axis_angle
    from puppet.synthetic import head_rotation
    from trackers.body_solver import BodySolverOptions, RestSkeleton, split_neck_head

    limits = np.radians(sampling.head_limits_deg)
    yaw, pitch, roll = _clipped_normal(rng, limits / 2.0, limits)
    neck, head = split_neck_head(head_rotation(yaw, pitch, roll), BodySolverOptions().neck_share)
    pose = np.zeros((NUM_POSE_JOINTS, 3))
    pose[pose_row(SmplJoint.NECK)] = matrix_to_axis_angle(neck)
    pose[pose_row(SmplJoint.HEAD)] = matrix_to_axis_angle(head)
    collar = np.radians(sampling.collar_limit_deg)
    shrug = _clipped_normal(rng, collar / 3.0, collar)  # both shoulders together, then each side
    skeleton = RestSkeleton()
    shoulder = np.radians(sampling.shoulder_limit_deg)
    for joint, arm, sign in ((SmplJoint.LEFT_COLLAR, SmplJoint.LEFT_SHOULDER, 1.0),
                             (SmplJoint.RIGHT_COLLAR, SmplJoint.RIGHT_SHOULDER, -1.0)):
        lift = np.clip(shrug + _clipped_normal(rng, collar / 4.0, collar), -collar, collar)
        forward = _clipped_normal(rng, collar / 3.0, collar)
        # Elevation about the forward axis (as in puppet.synthetic), protraction about the vertical.
        pose[pose_row(joint)] = (0.0, sign * forward, sign * lift)
        turn = axis_angle_to_matrix(_clipped_normal(rng, np.full(3, shoulder / 2.0), np.full(3, shoulder)))
        pose[pose_row(arm)] = matrix_to_axis_angle(turn @ skeleton.rest_arm(joint == SmplJoint.LEFT_COLLAR))
    return pose


_HEAD_ROWS = [pose_row(SmplJoint.NECK), pose_row(SmplJoint.HEAD)]


@dataclass(frozen=True)
class SampleParams:
    """Everything drawn for one sample (float32 as rendered and stored)."""

    index: int
    identity: int
    expression: np.ndarray
    expression_source: int
    pose: np.ndarray
    pose_source: int
    camera: np.ndarray
    face_view: np.ndarray


def draw_sample(index: int, seed: int, samples: int, identities: int, sampling: SamplingOptions,
                bank=None) -> SampleParams:
    """The parameters of sample ``index``: a pure function of its arguments (``bank`` an
    ``ExpressionBank`` or None). Each quantity draws from its own stream, always the same
    numbers whichever branch is taken."""
    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, k])

    rows = 0 if bank is None else len(bank)
    rng = stream(_EXPRESSION)
    use_bank, row = rng.uniform() < sampling.bank_fraction, int(rng.integers(max(rows, 1)))
    expression, expression_source = random_expression(rng), -1
    if rows and use_bank:
        expression, expression_source = bank.expression[row], row

    rng = stream(_POSE)
    use_bank, row = rng.uniform() < sampling.pose_bank_fraction, int(rng.integers(max(rows, 1)))
    pose, pose_source = random_pose(rng, sampling), -1
    if rows and use_bank:
        pose_source = row
        if bank.body_ok[row]:
            pose = bank.pose[row].astype(np.float64)
        else:
            pose[_HEAD_ROWS] = bank.pose[row][_HEAD_ROWS]

    camera = _clipped_normal(stream(_CAMERA), sampling.camera_sigma, sampling.camera_limit)
    face_view = _clipped_normal(stream(_FACE_VIEW), sampling.face_sigma, sampling.face_limit)
    return SampleParams(
        index=index, identity=identity_of(index, samples, identities),
        expression=np.asarray(expression, np.float32), expression_source=expression_source,
        pose=np.asarray(pose, np.float32), pose_source=pose_source,
        camera=np.asarray(camera, np.float32), face_view=np.asarray(face_view, np.float32))


# ----------------------------------------------------------------------------- cameras

def camera_to_world(view: np.ndarray) -> np.ndarray:
    """World-to-camera (4, 4) -> camera-to-world (4, 4) (columns right, up, backward, position)."""
    view = np.asarray(view, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = view[:3, :3].T
    out[:3, 3] = -view[:3, :3].T @ view[:3, 3]
    return out


def head_center_rest(landmarks) -> np.ndarray:
    """The head centre at rest (contract frame): the eyes' midpoint moved ``HEAD_CENTER_BACK`` of
    the way back to the head joint, in depth only. ``landmarks``: ``AvatarModel.landmarks``."""
    c = np.asarray(landmarks.eye_centers, dtype=np.float64).mean(axis=0)
    c[2] += HEAD_CENTER_BACK * (float(landmarks.head_pivot[2]) - c[2])
    return c


def face_camera(model, pose: np.ndarray, view: np.ndarray, fov_deg: float = FACE_FOV_DEG,
                height_heads: float = FACE_HEIGHT_HEADS) -> tuple[np.ndarray, np.ndarray]:
    """The face camera for ``pose (6, 3)`` and ``view (2,)`` = (yaw, pitch) relative to the head.

    Built in the head's rest frame (an orbit about the head centre, as ``orbit_rotation`` turns
    the portrait camera) and carried by the head bone's skinning transform, so it turns and moves
    with the head. ``model``: an ``AvatarModel``. ``-> (cam2world (4, 4), centre (3,))``
    contract frame, metres.
    """
    from engines.mesh import orbit_rotation

    lm = model.landmarks
    rot, trans = model.bone_transforms(np.asarray(pose, dtype=np.float64))
    h = model.skeleton.index("head")
    centre = head_center_rest(lm)
    distance = 0.5 * height_heads * (lm.head_top - lm.chin_y) / np.tan(np.radians(fov_deg) / 2.0)
    orbit = orbit_rotation(float(view[0]), float(view[1]))
    cam2world = np.eye(4)
    cam2world[:3, :3] = rot[h] @ orbit
    cam2world[:3, 3] = rot[h] @ (centre + distance * orbit[:, 2]) + trans[h]
    return cam2world, rot[h] @ centre + trans[h]


def view_camera(cam2world: np.ndarray, fov_deg: float, distance: float):
    """An ``engines.raster.Camera`` for a camera-to-world matrix, its depth range around ``distance``."""
    from engines.raster import Camera

    return Camera(np.linalg.inv(cam2world), fov_y_deg=fov_deg, near=0.2 * distance, far=3.0 * distance)


# ----------------------------------------------------------------------------- rendering

class _Renderer:
    """One mesh engine (size S) for both cameras, the last two bakes kept. The face image is
    rendered at S and averaged 2 x 2 down to S / 2 (supersampled; premultiplied colours average
    correctly): two rasterisers would each need their GL context made current in turn."""

    def __init__(self, size: int) -> None:
        from engines.mesh import MeshEngine, MeshEngineOptions

        black = (0.0, 0.0, 0.0)  # RGB premultiplied by alpha
        self.engine = MeshEngine(MeshEngineOptions(size=size, background=black))
        self._bakes: dict[int, Any] = {}

    def baked(self, identity: int, avatar: Avatar):
        if identity not in self._bakes:
            if len(self._bakes) >= 2:
                self._bakes.pop(next(iter(self._bakes)))
            self._bakes[identity] = self.engine.bake(avatar)
        return self._bakes[identity]

    def render(self, baked, sample: SampleParams) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """-> (portrait (S, S, 4), face (S/2, S/2, 4), labels of ``FIELDS``)."""
        from puppet.contract import gaze_from_expression
        from puppet.params import AvatarParams

        params = AvatarParams(t=0.0, expression=sample.expression, pose=sample.pose, camera=sample.camera,
                              face_ok=True, body_ok=True)
        portrait = self.engine.render(baked, params).image
        fov = self.engine.options.fov_deg
        portrait_cam2world = camera_to_world(self.engine.camera(baked, sample.camera).view)
        face_cam2world, centre = face_camera(baked.model, sample.pose, sample.face_view)
        distance = float(np.linalg.norm(face_cam2world[:3, 3] - centre))
        face = halve(self.engine.render_view(baked, params, view_camera(face_cam2world, FACE_FOV_DEG, distance)).image)
        framing = baked.framing
        labels = {
            "index": sample.index, "identity": sample.identity, "expression": sample.expression,
            "expression_source": sample.expression_source, "pose": sample.pose, "pose_source": sample.pose_source,
            "camera": sample.camera, "gaze": gaze_from_expression(sample.expression), "face_view": sample.face_view,
            "portrait_cam2world": portrait_cam2world, "face_cam2world": face_cam2world,
            "portrait_fov": fov, "face_fov": FACE_FOV_DEG, "face_center": centre,
            "framing_target": framing.target, "framing_pivot": framing.pivot, "framing_distance": framing.distance,
        }
        return portrait, face, labels

    def generator_info(self) -> dict[str, Any]:
        info = self.engine.info()
        return {"engine": "mesh", "backend": info.backend, "device": info.device, "msaa": self.engine.samples,
                "face_supersampling": 2}

    def close(self) -> None:
        self.engine.close()


def halve(image: np.ndarray) -> np.ndarray:
    """2 x 2 box average, rounded. ``uint8 (H, W, C) -> (H / 2, W / 2, C)``."""
    x = image.astype(np.uint16)
    total = x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def _shard_ranges(samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(shard_size, samples - s)) for s in range(0, samples, shard_size)]


def _shard_done(path: Path, start: int, count: int) -> bool:
    """A finished shard: renamed into place (so complete), holding the expected samples."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.array_equal(data["index"], np.arange(start, start + count))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _write_shard(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """Temp file, then rename: a shard under its own name is always complete."""
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- manifest

_CONTENT_KEYS = ("seed", "size", "face_size", "samples", "shard_size", "identities", "sampling", "cameras",
                 "expression_bank_sha256")
"""Manifest keys that decide the content: a folder is resumed only when they all match."""


def _manifest(options: SynthOptions, identities: list[Avatar], bank_info: dict[str, Any]) -> dict[str, Any]:
    from engines.mesh import MeshEngineOptions
    from puppet.params import tool_versions

    mesh = MeshEngineOptions()
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "complete": False,
        "seed": options.seed,
        "size": options.size,
        "face_size": options.face_size,
        "samples": options.samples,
        "shard_size": options.shard_size,
        "identities": [avatar_to_dict(a) for a in identities],
        "expression_names": list(ARKIT_NAMES),
        "pose_joints": {int(j): j.name.lower() for j in POSE_JOINTS},
        "sampling": json.loads(json.dumps(asdict(options.sampling))),
        "cameras": {
            "frame": "contract (metres, Y up, +Z forward); cam2world columns right, up, backward, position "
                     "(OpenGL: the camera looks down -Z)",
            "portrait": {"fov_deg": mesh.fov_deg, "frame_heights": mesh.frame_heights, "top_margin": mesh.top_margin,
                         "orbit": "engines.mesh.orbit_camera about the head joint"},
            "face": {"fov_deg": FACE_FOV_DEG, "height_heads": FACE_HEIGHT_HEADS, "head_center_back": HEAD_CENTER_BACK,
                     "attached_to": "head bone"},
        },
        "expression_bank": bank_info,
        "expression_bank_sha256": bank_info.get("sha256"),
        "images": {"portrait": [options.size, options.size, 4], "face": [options.face_size, options.face_size, 4],
                   "layout": "uint8 RGBA, RGB premultiplied by alpha (black background), alpha = coverage"},
        "fields": {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in FIELDS.items()},
        "shards": [{"file": shard_name(k), "start": s, "count": c}
                   for k, (s, c) in enumerate(_shard_ranges(options.samples, options.shard_size))],
        "compressed": options.compress,
        "generator": {"puppet_synth": FORMAT_VERSION, "tool_versions": tool_versions()},
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _prepare_output(output: Path, manifest: dict[str, Any]) -> None:
    """Create ``output`` or check that it holds this very dataset (to resume it)."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"cannot write the dataset to {output}: it is a file")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {output}: {exc.strerror or exc}") from None
    if not os.access(output, os.W_OK):
        raise OutputError(f"cannot write the dataset to {output}: the folder is not writable")
    existing = output / MANIFEST_FILE
    if existing.is_file():
        try:
            old = json.loads(existing.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutputError(f"{existing} is not a readable dataset manifest ({exc}); use another folder") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT_NAME or old.get("version") != FORMAT_VERSION:
            raise OutputError(f"{output} holds something else than a puppet.synth v{FORMAT_VERSION} dataset")
        differ = [k for k in _CONTENT_KEYS if old.get(k) != manifest[k]]
        if differ:
            raise OutputError(f"{output} holds a different dataset (differs in: {', '.join(differ)}); "
                              "use another folder or the same options")
    elif any(p.name != MANIFEST_FILE + ".partial" for p in output.iterdir()):
        raise OutputError(f"{output} is not empty and holds no puppet dataset; use a new or empty folder")


# ----------------------------------------------------------------------------- the command

def _resolve_bank(options: BankOptions, progress: bool):
    """-> (ExpressionBank or None, what the manifest says about it)."""
    from puppet.assets import find_face_landmarker
    from puppet.expression_bank import default_face_landmarker, default_media_videos, expression_bank

    if options.use == "off":
        return None, {"used": False, "reason": "disabled (--expression-bank off): random expressions and poses only"}
    folder = options.videos or default_media_videos()
    if options.videos is None and not folder.is_dir():
        log.warning("no footage at %s: random expressions and poses only", folder)
        return None, {"used": False, "reason": f"no footage found at {folder}: random expressions and poses only"}
    landmarker = (find_face_landmarker(options.face_landmarker) if options.face_landmarker is not None
                  else default_face_landmarker())
    start = time.perf_counter()
    bank = expression_bank(folder, options.step, landmarker, progress=progress)
    info = {"used": True, "file": BANK_FILE, "folder": str(folder), **bank.describe(),
            "seconds_to_load_or_build": round(time.perf_counter() - start, 2)}
    return bank, info


def synthesize(options: SynthOptions) -> SynthSummary:
    """Render (or finish rendering) the dataset of ``options``; see the module docstring.
    Raises ``PuppetError`` subclasses on user mistakes (``OutputError`` for an unwritable or
    foreign folder)."""
    from tqdm import tqdm

    from puppet.expression_bank import save_bank
    from puppet.interrupt import stop_on_interrupt

    output = options.output
    if output.exists() and not output.is_dir():
        raise OutputError(f"cannot write the dataset to {output}: it is a file")
    parent = next((p for p in (output, *output.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot create {output}: {parent} is not a writable folder")
    bank, bank_info = _resolve_bank(options.bank, options.progress)
    identities = [synth_identity(options.seed, j) for j in range(options.num_identities)]
    manifest = _manifest(options, identities, bank_info)
    _prepare_output(output, manifest)
    manifest_path = output / MANIFEST_FILE
    _write_json(manifest_path, manifest)
    if bank is not None and not (output / BANK_FILE).is_file():
        try:
            save_bank(bank, output / BANK_FILE)
        except OSError as exc:
            raise OutputError(f"cannot write {output / BANK_FILE}: {exc.strerror or exc}") from None

    ranges = _shard_ranges(options.samples, options.shard_size)
    todo = [k for k, (s, c) in enumerate(ranges) if not _shard_done(output / shard_name(k), s, c)]
    skipped = len(ranges) - len(todo)
    if skipped:
        log.info("%d of %d shards already there: resuming", skipped, len(ranges))
    start = time.perf_counter()
    rendered = written = 0
    interrupted = False
    renderer = _Renderer(options.size)
    bar = tqdm(total=sum(ranges[k][1] for k in todo), unit="sample", desc="synth", leave=False,
               dynamic_ncols=True, disable=None if options.progress else True)
    try:
        with stop_on_interrupt() as stop:
            for k in todo:
                first, count = ranges[k]
                arrays = _render_shard(renderer, options, identities, bank, first, count, bar, stop)
                if arrays is None:
                    interrupted = True
                    log.warning("interrupted: keeping the %d finished shards", written + skipped)
                    break
                _write_shard(output / shard_name(k), arrays, options.compress)
                written += 1
                rendered += count
        manifest["generator"].update(renderer.generator_info())
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: keeping the %d finished shards", written + skipped)
    finally:
        bar.close()
        renderer.close()
    seconds = time.perf_counter() - start
    if written + skipped == len(ranges):
        manifest["complete"] = True
        _write_json(manifest_path, manifest)
    return SynthSummary(output=output, samples=options.samples, rendered=rendered, shards_written=written,
                        shards_skipped=skipped, shards_total=len(ranges), seconds=seconds, interrupted=interrupted,
                        bank_rows=0 if bank is None else len(bank))


def _render_shard(renderer: _Renderer, options: SynthOptions, identities: list[Avatar], bank, first: int,
                  count: int, bar, stop) -> dict[str, np.ndarray] | None:
    """Render samples ``first .. first + count - 1``; None when a stop was requested."""
    s, f = options.size, options.face_size
    arrays = {"portrait": np.zeros((count, s, s, 4), np.uint8), "face": np.zeros((count, f, f, 4), np.uint8)}
    for name, (shape, dtype) in FIELDS.items():
        arrays[name] = np.zeros((count, *shape), dtype)
    for n in range(count):
        if stop.is_set():
            return None
        sample = draw_sample(first + n, options.seed, options.samples, len(identities), options.sampling, bank)
        baked = renderer.baked(sample.identity, identities[sample.identity])
        portrait, face, labels = renderer.render(baked, sample)
        arrays["portrait"][n] = portrait
        arrays["face"][n] = face
        for name, value in labels.items():
            arrays[name][n] = value
        bar.update(1)
    return arrays
