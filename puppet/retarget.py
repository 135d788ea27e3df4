"""Driver parameters -> avatar parameters: neutral calibration, relative motion, limits, gains.

People do not sit at the contract's zero: a head held slightly tilted, MediaPipe's ~10 degree
forward lean of an upright torso, a resting face that already reads as a little squint. The
retargeter learns the driver's neutral over the first second with a face (or again on demand) and
drives the avatar with the motion relative to it:

- rotations: ``R_avatar = R_rest_avatar @ (R_neutral^T @ R_driver)`` per joint (the avatar's own rest
  is identity except the arms, which hang at the tracker's rest arm);
- camera: driver camera minus its neutral;
- expression: ``(e - e_neutral) / (1 - e_neutral)``, times a per-coefficient gain, clipped to [0, 1]:
  the driver's resting value maps to 0 and a full expression still reaches 1.

Then every joint's rotation is limited to a maximal angle away from the avatar's rest, so a
tracking glitch never folds the avatar's neck.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, NUM_POSE_JOINTS, POSE_JOINTS, SmplJoint, pose_row
from puppet.params import AvatarParams, DriverParams
from puppet.rotations import axis_angle_to_matrix, matrix_to_axis_angle, quat_to_matrix, matrix_to_quat

log = logging.getLogger(__name__)

def _rest_arms() -> dict[SmplJoint, np.ndarray]:
    """The arm the body solver reports when elbows are out of view (trackers/body_solver.py): the
    avatar's arms rest there too, so relative arm motion starts from a natural pose."""
    from trackers.body_solver import RestSkeleton

    skeleton = RestSkeleton()
    return {SmplJoint.LEFT_SHOULDER: skeleton.rest_arm(True), SmplJoint.RIGHT_SHOULDER: skeleton.rest_arm(False)}


DEFAULT_JOINT_LIMITS_DEG: dict[SmplJoint, float] = {
    SmplJoint.NECK: 40.0,
    SmplJoint.HEAD: 45.0,
    SmplJoint.LEFT_COLLAR: 20.0,
    SmplJoint.RIGHT_COLLAR: 20.0,
    SmplJoint.LEFT_SHOULDER: 60.0,
    SmplJoint.RIGHT_SHOULDER: 60.0,
}


@dataclass(frozen=True)
class RetargetOptions:
    """How driver motion maps onto the avatar.

    calibration_s: seconds of tracked frames averaged into the driver's neutral (0 = absolute mode:
        no calibration, parameters pass through apart from limits and gains).
    relative: drive the avatar with motion relative to the neutral (else absolute values).
    joint_limits_deg: largest rotation of each joint away from the avatar's rest.
    camera_limits_deg: largest camera yaw and pitch.
    expression_gains: per-coefficient multipliers by ARKit name (others 1.0).
    """

    calibration_s: float = 1.0
    relative: bool = True
    joint_limits_deg: dict[SmplJoint, float] = field(default_factory=lambda: dict(DEFAULT_JOINT_LIMITS_DEG))
    camera_limits_deg: tuple[float, float] = (45.0, 30.0)
    expression_gains: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.expression_gains) - set(ARKIT_NAMES))
        if unknown:
            raise ValueError(f"unknown expression names in gains: {unknown}")
        if self.calibration_s < 0:
            raise ValueError("calibration_s must be >= 0")

    def gain_vector(self) -> np.ndarray:
        gains = np.ones(NUM_EXPRESSIONS, np.float32)
        for name, g in self.expression_gains.items():
            gains[ARKIT_NAMES.index(name)] = g
        return gains


# ----------------------------------------------------------------------------- pure maths

def limit_rotation(rotation: np.ndarray, max_angle: float) -> np.ndarray:
    """Shorten rotations whose angle exceeds ``max_angle`` (radians). ``(..., 3, 3) -> (..., 3, 3)``."""
    aa = matrix_to_axis_angle(rotation)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    scale = np.where(angle > max_angle, max_angle / np.maximum(angle, 1e-12), 1.0)
    return axis_angle_to_matrix(aa * scale)


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotations (quaternion eigen-average). ``(N, 3, 3) -> (3, 3)``."""
    q = matrix_to_quat(rotations)
    _, vecs = np.linalg.eigh(q.T @ q)
    return quat_to_matrix(vecs[:, -1])


def relative_expression(expression: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """``(e - n) / (1 - n)`` clipped to [0, 1]: the driver's resting value becomes 0, 1 stays 1."""
    return np.clip((expression - neutral) / np.maximum(1.0 - neutral, 1e-3), 0.0, 1.0)


# ----------------------------------------------------------------------------- state

@dataclass
class _Neutral:
    rotations: np.ndarray  # 6 x 3 x 3
    camera: np.ndarray  # 2
    expression: np.ndarray  # 52


class Retargeter:
    """DriverParams -> AvatarParams for one driver and one avatar; ``calibrate()`` restarts the
    neutral; ``process`` never blocks and never fails on tracking loss (it passes flags through)."""

    def __init__(self, options: RetargetOptions = RetargetOptions()) -> None:
        self.options = options
        rest = np.broadcast_to(np.eye(3), (NUM_POSE_JOINTS, 3, 3)).copy()
        for joint, r in _rest_arms().items():
            rest[pose_row(joint)] = r
        self._avatar_rest = rest
        self._limits = np.radians([options.joint_limits_deg.get(j, 180.0) for j in POSE_JOINTS])
        self._gains = options.gain_vector()
        self.calibrate()

    @property
    def calibrated(self) -> bool:
        return self._neutral is not None and self._done

    def calibrate(self) -> None:
        """Learn the driver's neutral again from the next ``calibration_s`` seconds with a face."""
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        self._t0: float | None = None
        self._neutral: _Neutral | None = None
        self._done = self.options.calibration_s == 0

    def process(self, params: DriverParams) -> AvatarParams:
        rotations = axis_angle_to_matrix(params.pose.astype(np.float64))
        if not self._done and params.face_ok:
            self._collect(params, rotations)
        if self.options.relative and self._neutral is not None:
            n = self._neutral
            rotations = self._avatar_rest @ (np.swapaxes(n.rotations, -1, -2) @ rotations)
            camera = params.camera - n.camera
            expression = relative_expression(params.expression, n.expression)
        else:
            camera = params.camera
            expression = params.expression
        rotations = self._limit(rotations)
        yaw_max, pitch_max = np.radians(self.options.camera_limits_deg)
        camera = np.clip(camera, [-yaw_max, -pitch_max], [yaw_max, pitch_max])
        expression = np.clip(expression * self._gains, 0.0, 1.0)
        return AvatarParams(
            t=params.t,
            expression=expression.astype(np.float32),
            pose=matrix_to_axis_angle(rotations).astype(np.float32),
            camera=camera.astype(np.float32),
            gaze=params.gaze,
            shape=params.shape,
            face_ok=params.face_ok,
            body_ok=params.body_ok,
        )

    def _collect(self, params: DriverParams, rotations: np.ndarray) -> None:
        if self._t0 is None:
            self._t0 = params.t
        self._samples.append((rotations, params.camera.astype(np.float64),
                              params.expression.astype(np.float64), params.body_ok))
        # The neutral is the running mean: usable from the first frame, final after calibration_s.
        rots = np.stack([s[0] for s in self._samples])
        body = [s for s in self._samples if s[3]]
        neutral_rot = np.stack([mean_rotation(rots[:, j]) for j in range(NUM_POSE_JOINTS)])
        if body:
            body_rots = np.stack([s[0] for s in body])
            for joint in (SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR, SmplJoint.LEFT_SHOULDER, SmplJoint.RIGHT_SHOULDER):
                neutral_rot[pose_row(joint)] = mean_rotation(body_rots[:, pose_row(joint)])
            camera = np.mean([s[1] for s in body], axis=0)
        else:
            camera = np.zeros(2)
        self._neutral = _Neutral(rotations=neutral_rot, camera=camera,
                                 expression=np.mean([s[2] for s in self._samples], axis=0))
        if params.t - self._t0 >= self.options.calibration_s:
            self._done = True
            self._samples = []
            log.info("neutral calibrated over %.2f s", params.t - self._t0)

    def _limit(self, rotations: np.ndarray) -> np.ndarray:
        # Limits apply to the rotation away from the avatar's rest.
        away = np.swapaxes(self._avatar_rest, -1, -2) @ rotations
        out = rotations.copy()
        for j in range(NUM_POSE_JOINTS):
            out[j] = self._avatar_rest[j] @ limit_rotation(away[j], self._limits[j])
        return out
