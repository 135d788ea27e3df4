"""Body landmarks (+ the face solver's head rotation) -> SMPL joints 12-17 and the avatar camera.

Frames (all right-handed, metres):

- *MediaPipe world*: hip-centred, x image-right, y down, z away from the camera.
- *Person frame* ``P`` (the contract's axes, fixed to the camera): X = the left of a person who
  faces the camera (image right), Y up, Z toward the camera. ``P = diag(1, -1, -1) @ mediapipe``
  (a proper rotation; checked on real frames: LEFT_SHOULDER has larger X, the nose larger Z than
  the ears, the shoulders larger Y than the hips).
- *Torso frame* ``T`` (SMPL spine3, joint 9, of the avatar; origin at the hip centre):
  ``R_torso`` (3, 3) has the torso's axes as columns in ``P``. Y = hip centre -> shoulder centre
  (``torso_up="spine"``) or the camera's vertical (``"camera"``, origin then slid horizontally
  under the shoulder centre); X = the right->left shoulder line orthogonalised against Y (Y
  first, so a one-sided shrug does not roll the torso); Z = X x Y. The shoulders used are the
  observed ones minus the collars' current displacement, iterated to a fixed point, so shrugs
  do not move the torso frame either.

Outputs:

- ``camera`` = (yaw, pitch): where the real camera sits as seen from the torso, written as
  offsets from frontal in AniPortraitGAN's camera sphere (its ``theta = pi/2 + yaw``,
  ``phi = pi/2 + pitch``; position ``(sin phi cos theta, cos phi, sin phi sin theta)``, so the
  direction from the body to the camera is ``(-cos p sin y, -sin p, cos p cos y)`` in ``T``).
  yaw > 0: the camera is on the avatar's right, i.e. the person turned to their LEFT (same sign
  as a head yaw to the left); pitch > 0: the camera is below the chest (person leaning back),
  pitch < 0: camera above (leaning toward the camera). Torso roll (leaning sideways) has no
  place in a 2-angle orbit camera and is dropped. Note AniPortraitGAN stores [pitch, yaw]; the
  contract stores [yaw, pitch].
- ``pose`` rows (contract order 12, 13, 14, 15, 16, 17), SMPL parent-relative axis-angle:
  - collars 13/14 (parent spine3): the swing (``rotation_between``, no twist) taking SMPL's rest
    collar->shoulder bone to the observed one. The collar pivots are fixed points of a rigid
    torso template (``RestSkeleton``) anchored at the hip centre, so shrugs (one-sided or both)
    rotate the collars about the torso's forward axis. Protraction/retraction (a swing about
    the vertical axis) cannot be told apart from torso yaw/pitch with two shoulder points: it
    goes to the torso (camera).
  - shoulders 16/17 (parent collar): the swing taking the *rest arm* (see below) to the observed
    upper arm (shoulder -> elbow), measured in the torso frame and made parent-relative.
    Elbows are often out of frame in portraits: below ``arm_visibility[0]`` the arm keeps the
    rest arm, above ``arm_visibility[1]`` it follows the elbow, slerp in between.
    The rest arm is AniPortraitGAN's canonical ("mean pose") arm: local ``Rz(-+1.05) @ Rx(0.13)``
    for left/right, i.e. the upper arm about 63 degrees below horizontal (60 from the rotation,
    3.5 from SMPL's rest bone) with a 7.4 degree twist; with collars at rest it maps to zero
    AniPortraitGAN z_pose. It hangs in the torso frame, so a shrug does not swing the arm.
  - neck 12 and head 15: the head rotation relative to the torso ``R_rel = R_torso^T @ R_head``
    split as ``R_neck = slerp(I, R_rel, neck_share)``, ``R_head = R_neck^T @ R_rel`` (so
    ``R_neck @ R_head == R_rel``). ``neck_share = 0.4`` follows AniPortraitGAN's example
    keyframes (neck roll +-0.1 with head roll +-0.15). Without the face solver's rotation the
    head comes from the Pose ears and eyes (coarse: their line sits ~8 degrees above the head's
    forward axis, corrected by ``landmark_head_pitch_deg``), else rest.

Measured on MediaPipe world landmarks (lp_s32, hips out of frame; lp_s20, hips visible): upright
people come out with the spine leaning 9-13 degrees toward the camera (camera pitch -0.16 to
-0.23 rad, frame-to-frame std 1.5-5 degrees) and shoulder-above-hip heights of 0.43-0.45 m
against the template's 0.44 (collar elevations of -6 to +14 degrees at rest). Both are
per-person constants that retargeting's neutral calibration removes; ``torso_up="camera"`` drops
the lean (and all torso pitch) for sources whose hips are not trusted. One solve takes about
1 ms here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from puppet.contract import NUM_POSE_JOINTS, SmplJoint, pose_row
from puppet.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quat,
    quat_to_matrix,
    rotation_between,
    slerp,
)
from trackers.observation import BodyObservation
from trackers.pose_landmarks import PoseLandmark as L

log = logging.getLogger(__name__)

_MIRROR_X = np.array([-1.0, 1.0, 1.0])
_EPS = 1e-9
_FRAME_TOLERANCE = 1e-5  # radians, roughly: where the collar/torso fixed point stops


# --------------------------------------------------------------------------------------------
# Options and results


@dataclass(frozen=True)
class RestSkeleton:
    """Rigid upper-torso template, LEFT side, in the torso frame (origin hip centre; X left, Y up,
    Z forward; metres). The right side mirrors X.

    shoulder: where MediaPipe's shoulder landmark sits at rest (measured: half-widths 0.16-0.17,
        heights above the hip centre 0.43-0.45 on the test videos).
    collar_to_shoulder: SMPL's rest bone from joint 13 to 16 (neutral model, rounded).
    upper_arm: SMPL's rest bone from joint 16 to 18 (neutral model, rounded; T-pose, along +X).
    rest_arm_down: rotation of the rest arm about -Z (left) / +Z (right), radians
        (AniPortraitGAN's canonical mean pose: 1.05).
    rest_arm_twist: rotation of the rest arm about X, applied first, radians (AniPortraitGAN: 0.13).
    """

    shoulder: tuple[float, float, float] = (0.165, 0.44, 0.0)
    collar_to_shoulder: tuple[float, float, float] = (0.093, 0.035, -0.011)
    upper_arm: tuple[float, float, float] = (0.258, -0.016, -0.026)
    rest_arm_down: float = 1.05
    rest_arm_twist: float = 0.13

    def side(self, left: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shoulder, collar_to_shoulder, upper_arm)``, each float64 (3,), for one side."""
        m = np.ones(3) if left else _MIRROR_X
        return (np.asarray(self.shoulder) * m, np.asarray(self.collar_to_shoulder) * m,
                np.asarray(self.upper_arm) * m)

    def rest_arm(self, left: bool) -> np.ndarray:
        """The rest arm's local rotation ``Rz(-+down) @ Rx(twist)``. ``-> (3, 3)``."""
        down = -self.rest_arm_down if left else self.rest_arm_down
        return axis_angle_to_matrix(np.array([0.0, 0.0, down])) @ axis_angle_to_matrix(
            np.array([self.rest_arm_twist, 0.0, 0.0]))


@dataclass(frozen=True)
class BodySolverOptions:
    """How landmarks become joint rotations (see the module docstring for the model).

    neck_share: fraction of the head's rotation relative to the torso given to the neck, [0, 1].
    torso_up: "spine" (hip centre -> shoulder centre: the camera follows the torso's lean) or
        "camera" (the camera's vertical: camera pitch 0, only yaw follows the shoulders).
    min_shoulder_visibility: both shoulders at least this visible, else ``ok=False`` and the
        torso, collars and arms stay at rest.
    arm_visibility: elbow visibility ramp (low, high): rest arm below low, tracked above high.
    min_head_visibility: ears and eyes at least this visible for the landmark head fallback.
    landmark_head_pitch_deg: how far the ear->eye line rises above the head's forward axis at
        rest (measured 5-12 on the test videos).
    collar_iterations: at most this many fixed-point rounds that take the collars' shoulder
        motion out of the torso frame (each cuts the error about 3x; stops below 1e-5 rad; 0 = none).
    skeleton: the rest template.
    """

    neck_share: float = 0.4
    torso_up: Literal["spine", "camera"] = "spine"
    min_shoulder_visibility: float = 0.5
    arm_visibility: tuple[float, float] = (0.5, 0.8)
    min_head_visibility: float = 0.5
    landmark_head_pitch_deg: float = 8.0
    collar_iterations: int = 10
    skeleton: RestSkeleton = field(default_factory=RestSkeleton)

    def __post_init__(self) -> None:
        if not 0.0 <= self.neck_share <= 1.0:
            raise ValueError(f"neck_share must be in [0, 1], got {self.neck_share}")
        if self.torso_up not in ("spine", "camera"):
            raise ValueError(f"torso_up must be 'spine' or 'camera', got {self.torso_up!r}")
        lo, hi = self.arm_visibility
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"arm_visibility must be 0 <= low < high <= 1, got {self.arm_visibility}")
        if self.collar_iterations < 0:
            raise ValueError(f"collar_iterations must be >= 0, got {self.collar_iterations}")


HeadSource = Literal["face", "landmarks", "rest"]


@dataclass(frozen=True)
class BodySolution:
    """One frame of body parameters.

    pose: float32 (6, 3) axis-angle, contract rows (joints 12, 13, 14, 15, 16, 17).
    camera: float32 (2,) yaw, pitch in radians (module docstring for the signs).
    torso: float32 (3, 3) the torso's axes (columns) in the person frame, roll included;
        identity when not ``ok``. ``camera`` is ``camera_from_torso(torso)``.
    ok: the shoulders were visible enough to solve torso, collars and arms.
    arms_tracked: (left, right): the arm followed the elbow (weight > 0) rather than resting.
    head_source: where neck/head came from.
    """

    pose: np.ndarray
    camera: np.ndarray
    torso: np.ndarray
    ok: bool
    arms_tracked: tuple[bool, bool] = (False, False)
    head_source: HeadSource = "rest"

    def __post_init__(self) -> None:
        if self.pose.shape != (NUM_POSE_JOINTS, 3) or self.pose.dtype != np.float32:
            raise ValueError(
                f"pose must be float32 ({NUM_POSE_JOINTS}, 3), got {self.pose.dtype} {self.pose.shape}")
        if self.camera.shape != (2,) or self.camera.dtype != np.float32:
            raise ValueError(f"camera must be float32 (2,), got {self.camera.dtype} {self.camera.shape}")
        if self.torso.shape != (3, 3) or self.torso.dtype != np.float32:
            raise ValueError(f"torso must be float32 (3, 3), got {self.torso.dtype} {self.torso.shape}")


# --------------------------------------------------------------------------------------------
# Pure functions


def person_from_mediapipe(points: np.ndarray) -> np.ndarray:
    """MediaPipe world axes -> person frame (flip y and z). ``(..., 3) -> (..., 3)``; also the
    inverse."""
    return np.asarray(points, dtype=np.float64) * np.array([1.0, -1.0, -1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.sqrt(np.sum(v * v, axis=-1, keepdims=True)), _EPS)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` for (..., 3), several times faster on single vectors."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def torso_frame(left_shoulder: np.ndarray, right_shoulder: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Torso axes as columns: Y = ``up`` normalised, X = (left - right) orthogonalised against Y,
    Z = X x Y. ``(..., 3) x3 -> (..., 3, 3)``."""
    y = _unit(np.asarray(up, dtype=np.float64))
    across = np.asarray(left_shoulder, dtype=np.float64) - np.asarray(right_shoulder, dtype=np.float64)
    x = _unit(across - np.sum(across * y, axis=-1, keepdims=True) * y)
    return np.stack([x, y, _cross(x, y)], axis=-1)


def camera_from_torso(r_torso: np.ndarray) -> np.ndarray:
    """Camera (yaw, pitch) offsets from frontal on AniPortraitGAN's sphere for a torso whose axes
    (columns, person frame) are ``r_torso``. ``(..., 3, 3) -> (..., 2)``.

    The camera sits along the person frame's +Z; in torso coordinates that is ``d = R^T e_z``
    (R's last row), and ``d = (-cos p sin y, -sin p, cos p cos y)``.
    """
    d = np.asarray(r_torso, dtype=np.float64)[..., 2, :]
    yaw = np.arctan2(-d[..., 0], d[..., 2])
    pitch = -np.arcsin(np.clip(d[..., 1], -1.0, 1.0))
    return np.stack([yaw, pitch], axis=-1)


def camera_direction(camera: np.ndarray) -> np.ndarray:
    """Unit direction from the avatar's body to its camera, torso frame, for ``camera`` (yaw,
    pitch): AniPortraitGAN's ``(sin phi cos theta, cos phi, sin phi sin theta)`` with
    ``theta = pi/2 + yaw``, ``phi = pi/2 + pitch``. ``(..., 2) -> (..., 3)``."""
    camera = np.asarray(camera, dtype=np.float64)
    theta, phi = np.pi / 2 + camera[..., 0], np.pi / 2 + camera[..., 1]
    return np.stack([np.sin(phi) * np.cos(theta), np.cos(phi), np.sin(phi) * np.sin(theta)], axis=-1)


def swing_to(rest_orientation: np.ndarray, bone: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The orientation nearest ``rest_orientation`` whose ``bone`` points along ``direction``:
    ``rotation_between(rest @ bone, direction) @ rest`` (a swing, no added twist).
    ``(..., 3, 3), (..., 3), (..., 3) -> (..., 3, 3)``."""
    rest_orientation = np.asarray(rest_orientation, dtype=np.float64)
    rest_dir = np.einsum("...ij,...j->...i", rest_orientation, bone)
    return rotation_between(rest_dir, direction) @ rest_orientation


def split_neck_head(r_rel: np.ndarray, neck_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Split the head's rotation relative to the torso between neck and head:
    ``R_neck = slerp(I, R_rel, neck_share)``, ``R_head = R_neck^T @ R_rel``, so
    ``R_neck @ R_head == R_rel``. ``(..., 3, 3) -> ((..., 3, 3), (..., 3, 3))``."""
    r_rel = np.asarray(r_rel, dtype=np.float64)
    q = matrix_to_quat(r_rel)
    identity = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), q.shape)
    r_neck = quat_to_matrix(slerp(identity, q, neck_share))
    r_head = np.swapaxes(r_neck, -1, -2) @ r_rel
    return r_neck, r_head


def collar_elevation(bone: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Where the collar's elevation alone takes ``bone``: ``bone`` turned about
    ``n = unit(bone x Y)`` (the torso's forward axis, give or take the bone's slight tilt) toward
    ``vector``, as far as ``vector``'s projection on the plane normal to ``n``. Swing about the
    vertical is ignored: two shoulder points cannot tell it from torso yaw/pitch.
    ``(3,), (3,) -> (3,)``, same length as ``bone``."""
    bone = np.asarray(bone, dtype=np.float64)
    n = _unit(np.array([-bone[2], 0.0, bone[0]]))  # bone x Y
    in_plane = vector - np.dot(vector, n) * n
    return np.sqrt(np.dot(bone, bone)) * _unit(in_plane)


def head_from_landmarks(points: np.ndarray, pitch_offset: float) -> np.ndarray:
    """Coarse head rotation (person frame, identity = facing the camera upright) from Pose's ears
    and eyes: X = right ear -> left ear, forward = ear centre -> eye centre (orthogonalised), then
    tilted down by ``pitch_offset`` radians (the ear->eye line's rise at rest).
    ``points: (33, 3)`` person frame ``-> (3, 3)``."""
    ear_l, ear_r = points[L.LEFT_EAR], points[L.RIGHT_EAR]
    forward = 0.5 * (points[L.LEFT_EYE] + points[L.RIGHT_EYE]) - 0.5 * (ear_l + ear_r)
    x = _unit(ear_l - ear_r)
    z = _unit(forward - np.dot(forward, x) * x)
    frame = np.stack([x, _cross(z, x), z], axis=-1)
    return frame @ axis_angle_to_matrix(np.array([pitch_offset, 0.0, 0.0]))


def _visibility_weight(v: float, lo: float, hi: float) -> float:
    return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))


def _slerp_matrix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return quat_to_matrix(slerp(matrix_to_quat(a), matrix_to_quat(b), t))


# --------------------------------------------------------------------------------------------
# The solver


@dataclass(frozen=True)
class _Side:
    """One side's constants: template bones (torso frame), landmarks and pose rows."""

    pivot: np.ndarray  # collar joint, (3,)
    collar_bone: np.ndarray  # collar -> shoulder, (3,)
    arm_bone: np.ndarray  # shoulder -> elbow, T-pose, (3,)
    rest_arm: np.ndarray  # (3, 3)
    shoulder: L
    elbow: L
    collar_row: int
    shoulder_row: int

    @classmethod
    def build(cls, skeleton: RestSkeleton, left: bool) -> _Side:
        shoulder, collar_bone, arm_bone = skeleton.side(left)
        return cls(
            pivot=shoulder - collar_bone, collar_bone=collar_bone, arm_bone=arm_bone,
            rest_arm=skeleton.rest_arm(left),
            shoulder=L.LEFT_SHOULDER if left else L.RIGHT_SHOULDER,
            elbow=L.LEFT_ELBOW if left else L.RIGHT_ELBOW,
            collar_row=pose_row(SmplJoint.LEFT_COLLAR if left else SmplJoint.RIGHT_COLLAR),
            shoulder_row=pose_row(SmplJoint.LEFT_SHOULDER if left else SmplJoint.RIGHT_SHOULDER),
        )


_HEAD_LANDMARKS = (L.LEFT_EAR, L.RIGHT_EAR, L.LEFT_EYE, L.RIGHT_EYE)


class BodySolver:
    """Turns a ``BodyObservation`` (and optionally the face solver's head rotation) into a
    ``BodySolution``. Stateless between frames: holds its options and the template's constants.
    """

    def __init__(self, options: BodySolverOptions | None = None) -> None:
        self.options = options or BodySolverOptions()
        self._sides = (_Side.build(self.options.skeleton, True), _Side.build(self.options.skeleton, False))
        # The untracked body (face-only mode, or shoulders not visible) is constant but for neck
        # and head: its pose rows, camera and torso are computed once.
        rest = self._solution(self.rest_pose(None), np.eye(3), False, (False, False), "rest")
        self._rest_pose_aa, self._rest_camera, self._rest_torso = rest.pose, rest.camera, rest.torso
        self._head_rows = [pose_row(SmplJoint.NECK), pose_row(SmplJoint.HEAD)]

    def rest_pose(self, r_rel_head: np.ndarray | None = None) -> np.ndarray:
        """Rotations (6, 3, 3) in contract order: collars at rest, rest arms, neck/head split from
        ``r_rel_head`` (3, 3) (head relative to the torso) or identity."""
        mats = np.broadcast_to(np.eye(3), (NUM_POSE_JOINTS, 3, 3)).copy()
        for side in self._sides:
            mats[side.shoulder_row] = side.rest_arm
        if r_rel_head is not None:
            neck, head = split_neck_head(r_rel_head, self.options.neck_share)
            mats[pose_row(SmplJoint.NECK)], mats[pose_row(SmplJoint.HEAD)] = neck, head
        return mats

    def solve(self, body: BodyObservation | None, head_rotation: np.ndarray | None = None) -> BodySolution:
        """Solve one frame.

        body: the Pose observation, or None (face-only mode: torso identity, camera 0).
        head_rotation: (3, 3) head rotation in the person frame from the face solver (identity =
            upright, facing the camera), or None (then Pose's ears/eyes, else rest).
        Shoulders below ``min_shoulder_visibility`` give ``ok=False`` with torso, collars and
        arms at rest and the head taken relative to an upright, frontal torso.
        """
        o = self.options
        if head_rotation is not None:
            head_rotation = np.asarray(head_rotation, dtype=np.float64)
            if head_rotation.shape != (3, 3):
                raise ValueError(f"head_rotation must be (3, 3), got {head_rotation.shape}")
        points = vis = None
        if body is not None:
            points, vis = person_from_mediapipe(body.world_landmarks), body.visibility

        head_source: HeadSource = "rest"
        if head_rotation is not None:
            head_source = "face"
        elif vis is not None and min(vis[i] for i in _HEAD_LANDMARKS) >= o.min_head_visibility:
            head_rotation = head_from_landmarks(points, np.deg2rad(o.landmark_head_pitch_deg))
            head_source = "landmarks"

        ok = (vis is not None and bool(np.all(np.isfinite(points)))
              and min(vis[s.shoulder] for s in self._sides) >= o.min_shoulder_visibility)
        if not ok:
            if body is not None:
                log.debug("shoulders not visible enough: torso, collars and arms at rest")
            return self._rest_solution(head_rotation, head_source)  # torso = identity: relative = absolute

        r_torso, collars = self._torso_and_collars(points)
        mats = self.rest_pose(None if head_rotation is None else r_torso.T @ head_rotation)
        tracked = []
        for side, collar in zip(self._sides, collars):
            mats[side.collar_row] = collar
            w = _visibility_weight(float(vis[side.elbow]), *o.arm_visibility)
            arm = side.rest_arm  # the upper arm's orientation in the torso frame
            if w > 0.0:
                seen = swing_to(arm, side.arm_bone, r_torso.T @ (points[side.elbow] - points[side.shoulder]))
                arm = seen if w >= 1.0 else _slerp_matrix(arm, seen, w)
            mats[side.shoulder_row] = collar.T @ arm  # parent-relative: the collar carries it
            tracked.append(w > 0.0)
        return self._solution(mats, r_torso, True, (tracked[0], tracked[1]), head_source)

    def _torso_and_collars(self, points: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Torso frame (3, 3) and the two collar rotations (3, 3) from person-frame points (33, 3).

        The shoulder points move with the collars. Each round estimates the collars' elevation
        (the only collar motion two shoulder points can show, see ``collar_elevation``) in the
        current frame, takes the shoulder displacement it causes off the observed shoulders and
        rebuilds the frame from the result, so a shrug neither tilts nor rolls the torso. The
        collars finally swing their rest bone onto the observed one in the converged frame.
        """
        hip_centre = 0.5 * (points[L.LEFT_HIP] + points[L.RIGHT_HIP])
        observed = [points[side.shoulder] for side in self._sides]

        def frame(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Torso axes and origin from rest-corrected shoulders. The origin is the hip centre
            slid in the torso's horizontal plane under the shoulder centre (a no-op with
            ``torso_up="spine"``, whose Y runs through both)."""
            centre = 0.5 * (left + right)
            up = centre - hip_centre if self.options.torso_up == "spine" else np.array([0.0, 1.0, 0.0])
            r = torso_frame(left, right, up)
            return r, centre - r[:, 1] * np.dot(r[:, 1], centre - hip_centre)

        def local(r: np.ndarray, origin: np.ndarray, side: _Side, seen: np.ndarray) -> np.ndarray:
            """The observed collar bone (pivot -> shoulder) in torso coordinates."""
            return r.T @ (seen - origin) - side.pivot

        r_torso, origin = frame(*observed)
        for _ in range(self.options.collar_iterations):
            moved = [
                r_torso @ (collar_elevation(side.collar_bone, local(r_torso, origin, side, seen))
                           - side.collar_bone)
                for side, seen in zip(self._sides, observed)
            ]
            previous = r_torso
            r_torso, origin = frame(observed[0] - moved[0], observed[1] - moved[1])
            if np.abs(r_torso - previous).max() < _FRAME_TOLERANCE:
                break
        left, right = (rotation_between(side.collar_bone, local(r_torso, origin, side, seen))
                       for side, seen in zip(self._sides, observed))
        return r_torso, (left, right)

    def _rest_solution(self, r_head: np.ndarray | None, head_source: HeadSource) -> BodySolution:
        """``_solution(rest_pose(r_head), I, False, ...)`` from the cached rest rows: only the
        neck/head split is computed."""
        pose = self._rest_pose_aa.copy()
        if r_head is not None:
            neck, head = split_neck_head(r_head, self.options.neck_share)
            pose[self._head_rows] = matrix_to_axis_angle(np.stack([neck, head]))
        return BodySolution(pose=pose, camera=self._rest_camera.copy(), torso=self._rest_torso.copy(), ok=False,
                            arms_tracked=(False, False), head_source=head_source)

    @staticmethod
    def _solution(mats: np.ndarray, r_torso: np.ndarray, ok: bool, tracked: tuple[bool, bool],
                  head_source: HeadSource) -> BodySolution:
        return BodySolution(
            pose=matrix_to_axis_angle(mats).astype(np.float32),
            camera=camera_from_torso(r_torso).astype(np.float32),
            torso=np.asarray(r_torso, dtype=np.float32),
            ok=ok,
            arms_tracked=tracked,
            head_source=head_source,
        )
