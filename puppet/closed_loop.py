"""The closed loop as a measurement: render known parameters with the mesh engine, track the
renders through the real path, compare (see ``scripts/eval_closed_loop.py`` for the report).

Head error is given absolute and calibrated: relative to the head's mean over the neutral first
second, as the retargeter does in ``puppet convert`` / ``webcam``. The face solver's render
calibration (``trackers/data/anny_render_calibration.json``) takes out what every anny head reads
at rest; what remains of the absolute pitch is a per-face offset of a few degrees (landmark-based
pose cannot tell face shape from head tilt) that only the neutral calibration removes.
``render_calibration=None`` measures the uncorrected solver, for comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.mesh import MeshEngineOptions
from puppet.avatar import load_avatar
from puppet.contract import POSE_JOINTS, Blendshape, pose_row
from puppet.params import head_rotation
from puppet.retarget import mean_rotation
from puppet.rotations import axis_angle_to_matrix, matrix_to_quat, quat_angle_between, yaw_pitch_roll
from puppet.smoothing import SmoothingOptions
from puppet.sources import VideoFileSource
from puppet.synthetic import AvatarPerformance, random_avatar_performance, render_avatar_performance
from puppet.tracking import Tracker, TrackingOptions
from trackers.face import FaceTrackerOptions
from trackers.face_solver import RENDER_CALIBRATION_FILE, FaceSolverOptions

MAIN = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight", "browInnerUp",
        "mouthPucker", "mouthFunnel", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownLeft")
SKIP_S = 1.5


def head_angles(pose: np.ndarray) -> np.ndarray:
    """T x 6 x 3 -> T x 3 degrees (yaw, pitch, roll) of the head relative to the torso."""
    return np.degrees(yaw_pitch_roll(head_rotation(pose)))


def track(video: Path, mode: str, render_calibration: Path | None = RENDER_CALIBRATION_FILE) -> list:
    options = TrackingOptions(
        mode=mode,
        face=FaceTrackerOptions(blendshapes="off"),
        # The mesh engine's field of view is known: head pose against the line of sight.
        face_solver=FaceSolverOptions(expression_source="builtin", camera_fov_deg=MeshEngineOptions().fov_deg,
                                      render_calibration=render_calibration),
        smoothing=SmoothingOptions(enabled=False),
    )
    with VideoFileSource(video) as source, Tracker(options) as tracker:
        return [tracker.process(frame) for frame in source]


def render_clip(avatar_name: str, seed: int, seconds: float, size: int, workdir: Path) -> tuple[AvatarPerformance, Path]:
    """The random performance of ``seed`` rendered with the mesh engine to ``workdir``."""
    perf = random_avatar_performance(seconds=seconds, seed=seed)
    return perf, render_avatar_performance(perf, load_avatar(avatar_name), workdir / f"{avatar_name}_{seed}.mp4", size=size)


def face_errors(perf: AvatarPerformance, clip: Path, render_calibration: Path | None = RENDER_CALIBRATION_FILE) -> dict:
    """Face mode: head angle errors (absolute and calibrated), the rest reading and the
    expression errors of the main coefficients."""
    keep = perf.t >= SKIP_S
    face_run = track(clip, "face", render_calibration)
    face_ok = np.array([f.raw.face_ok for f in face_run])
    ok = face_ok & keep
    tracked_pose = np.stack([f.raw.pose for f in face_run]).astype(np.float64)
    err = np.abs(head_angles(tracked_pose) - head_angles(perf.pose))[ok]
    rot = head_rotation(tracked_pose)
    neutral = mean_rotation(rot[face_ok & (perf.t < 1.0)])
    calibrated = np.degrees(yaw_pitch_roll(neutral.T @ rot))
    cal_err = np.abs(calibrated - head_angles(perf.pose))[ok]
    expr = np.stack([f.raw.expression for f in face_run])[ok]
    true = perf.expression[ok]
    result = {
        "face_rate": float(np.mean(face_ok)),
        "head_error_deg": {k: {"median": float(np.median(err[:, i])), "p90": float(np.percentile(err[:, i], 90))}
                           for i, k in enumerate(("yaw", "pitch", "roll"))},
        "head_error_calibrated_deg": {k: {"median": float(np.median(cal_err[:, i])), "p90": float(np.percentile(cal_err[:, i], 90))}
                                      for i, k in enumerate(("yaw", "pitch", "roll"))},
        "head_rest_reading_deg": [float(v) for v in np.degrees(yaw_pitch_roll(neutral))],
        "expression": {},
    }
    for name in MAIN:
        k = Blendshape[name]
        r = float(np.corrcoef(expr[:, k], true[:, k])[0, 1]) if true[:, k].std() > 1e-6 and expr[:, k].std() > 1e-6 else float("nan")
        slope = float(np.polyfit(true[:, k], expr[:, k], 1)[0]) if true[:, k].std() > 1e-6 else float("nan")
        result["expression"][name] = {"mae": float(np.abs(expr[:, k] - true[:, k]).mean()), "r": r, "slope": slope}
    return result


def body_errors(perf: AvatarPerformance, clip: Path) -> dict:
    """Full mode: median geodesic error of each SMPL joint 12-17 and of the camera."""
    body_run = track(clip, "full")
    body_ok = np.array([f.raw.body_ok for f in body_run]) & (perf.t >= SKIP_S)
    result: dict = {"body_rate": float(np.mean([f.raw.body_ok for f in body_run]))}
    if body_ok.any():
        tracked = np.stack([f.raw.pose for f in body_run]).astype(np.float64)[body_ok]
        truth = perf.pose[body_ok]
        joint_err = {}
        for joint in POSE_JOINTS:
            row = pose_row(joint)
            q_t = matrix_to_quat(axis_angle_to_matrix(tracked[:, row]))
            q_g = matrix_to_quat(axis_angle_to_matrix(truth[:, row]))
            joint_err[joint.name.lower()] = float(np.degrees(np.median(quat_angle_between(q_t, q_g))))
        result["joint_error_deg_median"] = joint_err
        cam = np.stack([f.raw.camera for f in body_run])[body_ok]
        result["camera_error_deg_median"] = [float(v) for v in np.degrees(np.median(np.abs(cam - perf.camera[body_ok]), axis=0))]
    return result


def closed_loop(avatar_name: str, seed: int, seconds: float, size: int, workdir: Path) -> dict:
    """Render ``avatar_name``'s random performance ``seed``, track it in face and full mode, compare."""
    perf, clip = render_clip(avatar_name, seed, seconds, size, workdir)
    return {"avatar": avatar_name, "seed": seed, "frames": len(perf.t), **face_errors(perf, clip), **body_errors(perf, clip)}
