"""Closed loop: render known parameters with the mesh engine, track the renders, compare.

For each avatar: a random 8-second performance (``puppet.synthetic.random_avatar_performance``:
one neutral second, then smooth random expressions, head, neck and collar motion) is rendered at
512 px, tracked through the real path (FaceMesh, the built-in expression solver, MediaPipe Pose,
the body solver) with smoothing OFF, and compared frame by frame after the first 1.5 s:

- head: yaw / pitch / roll of neck @ head (face mode, so the torso is the identity on both sides);
- expression: mean absolute error and Pearson r of the main coefficients (built-in solver);
- body (full mode): geodesic error of each SMPL joint 12-17 and of the camera.

Usage: python scripts/eval_closed_loop.py [--avatars ada chidi ...] [--out docs/closed_loop_eval]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from puppet.avatar import load_avatar
from puppet.bench import machine_info
from puppet.cli import _quiet_native_logs
from puppet.contract import POSE_JOINTS, Blendshape, pose_row
from puppet.params import head_rotation
from puppet.rotations import axis_angle_to_matrix, matrix_to_quat, quat_angle_between, yaw_pitch_roll
from puppet.smoothing import SmoothingOptions
from puppet.sources import VideoFileSource
from puppet.synthetic import random_avatar_performance, render_avatar_performance
from puppet.tracking import Tracker, TrackingOptions
from trackers.face import FaceTrackerOptions
from trackers.face_solver import FaceSolverOptions

REPO = Path(__file__).resolve().parents[1]
MAIN = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight", "browInnerUp",
        "mouthPucker", "mouthFunnel", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownLeft")
SKIP_S = 1.5


def head_angles(pose: np.ndarray) -> np.ndarray:
    """T x 6 x 3 -> T x 3 degrees (yaw, pitch, roll) of the head relative to the torso."""
    return np.degrees(yaw_pitch_roll(head_rotation(pose)))


def track(video: Path, mode: str) -> list:
    options = TrackingOptions(
        mode=mode,
        face=FaceTrackerOptions(blendshapes="off"),
        face_solver=FaceSolverOptions(expression_source="builtin"),
        smoothing=SmoothingOptions(enabled=False),
    )
    with VideoFileSource(video) as source, Tracker(options) as tracker:
        return [tracker.process(frame) for frame in source]


def evaluate(avatar_name: str, seed: int, seconds: float, size: int, workdir: Path) -> dict:
    perf = random_avatar_performance(seconds=seconds, seed=seed)
    clip = render_avatar_performance(perf, load_avatar(avatar_name), workdir / f"{avatar_name}.mp4", size=size)
    keep = perf.t >= SKIP_S
    face_run = track(clip, "face")
    ok = np.array([f.raw.face_ok for f in face_run]) & keep
    tracked_pose = np.stack([f.raw.pose for f in face_run]).astype(np.float64)
    err = np.abs(head_angles(tracked_pose) - head_angles(perf.pose))[ok]
    expr = np.stack([f.raw.expression for f in face_run])[ok]
    true = perf.expression[ok]
    result = {
        "avatar": avatar_name, "seed": seed, "frames": len(perf.t), "face_rate": float(np.mean([f.raw.face_ok for f in face_run])),
        "head_error_deg": {k: {"median": float(np.median(err[:, i])), "p90": float(np.percentile(err[:, i], 90))}
                           for i, k in enumerate(("yaw", "pitch", "roll"))},
        "expression": {},
    }
    for name in MAIN:
        k = Blendshape[name]
        r = float(np.corrcoef(expr[:, k], true[:, k])[0, 1]) if true[:, k].std() > 1e-6 and expr[:, k].std() > 1e-6 else float("nan")
        result["expression"][name] = {"mae": float(np.abs(expr[:, k] - true[:, k]).mean()), "r": r}

    body_run = track(clip, "full")
    body_ok = np.array([f.raw.body_ok for f in body_run]) & keep
    result["body_rate"] = float(np.mean([f.raw.body_ok for f in body_run]))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatars", nargs="+", default=["ada", "chidi", "farouk", "kaia"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "closed_loop_eval")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _quiet_native_logs()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, name in enumerate(args.avatars):
            results.append(evaluate(name, seed, args.seconds, args.size, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    pooled = {
        "head_yaw_median_deg": float(np.median([r["head_error_deg"]["yaw"]["median"] for r in results])),
        "head_pitch_median_deg": float(np.median([r["head_error_deg"]["pitch"]["median"] for r in results])),
        "head_roll_median_deg": float(np.median([r["head_error_deg"]["roll"]["median"] for r in results])),
        "expression_mae": {n: float(np.mean([r["expression"][n]["mae"] for r in results])) for n in MAIN},
        "expression_r": {n: float(np.nanmean([r["expression"][n]["r"] for r in results])) for n in MAIN},
    }
    with_body = [r for r in results if "joint_error_deg_median" in r]
    if with_body:
        pooled["joint_error_deg_median"] = {j: float(np.median([r["joint_error_deg_median"][j] for r in with_body]))
                                            for j in with_body[0]["joint_error_deg_median"]}
    report = {"date": datetime.date.today().isoformat(), "machine": machine_info(),
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "summary": pooled, "avatars": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"Closed loop over {len(results)} avatars ({', '.join(args.avatars)}), {args.seconds:.0f} s each at "
             f"{args.size} px, smoothing off, built-in expression solver; first {SKIP_S} s skipped.", "",
             f"Head error, median over avatars of per-avatar medians: yaw {pooled['head_yaw_median_deg']:.2f} deg, "
             f"pitch {pooled['head_pitch_median_deg']:.2f} deg, roll {pooled['head_roll_median_deg']:.2f} deg.", "",
             "| coefficient | mean abs error | r |", "|---|---|---|"]
    for n in MAIN:
        lines.append(f"| {n} | {pooled['expression_mae'][n]:.3f} | {pooled['expression_r'][n]:.2f} |")
    if "joint_error_deg_median" in pooled:
        lines += ["", "SMPL joint error (full mode; median geodesic degrees):", "",
                  "| joint | error |", "|---|---|"]
        lines += [f"| {j} | {e:.1f} |" for j, e in pooled["joint_error_deg_median"].items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
