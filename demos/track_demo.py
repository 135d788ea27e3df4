"""The offline demo (``make demo``): render a performance with known parameters, track it through
the full path (video file -> MediaPipe -> solvers -> smoothing -> parameter file + overlay video),
and say how close the tracked parameters came to the truth. Needs no footage, camera or network.

Usage: python -m demos.track_demo [--out DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from puppet.cli import _quiet_native_logs
from puppet.contract import Blendshape, SmplJoint, pose_row
from puppet.errors import PuppetError
from puppet.params import load_params
from puppet.rotations import axis_angle_to_matrix, yaw_pitch_roll
from puppet.synthetic import demo_performance, render_performance
from puppet.track import TrackJob, track


def head_angles(pose: np.ndarray) -> np.ndarray:
    """T x 6 x 3 contract poses -> T x 3 (yaw, pitch, roll) of the head relative to the torso."""
    r = axis_angle_to_matrix(pose[:, pose_row(SmplJoint.NECK)]) @ axis_angle_to_matrix(pose[:, pose_row(SmplJoint.HEAD)])
    return yaw_pitch_roll(r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _quiet_native_logs()
    args.out.mkdir(parents=True, exist_ok=True)
    performance = demo_performance(seconds=args.seconds)
    clip = render_performance(performance, args.out / "demo_performance.mp4", progress=True)
    print(f"rendered a {args.seconds:.0f} s performance of anny's head with known parameters: {clip}")
    try:
        summary = track(TrackJob(input=str(clip), output=args.out / "demo_params.npz",
                                 overlay=args.out / "demo_overlay.mp4"))
    except PuppetError as exc:
        print(f"puppet: error: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())

    params = load_params(summary.output)
    ok = params.arrays["face_ok"]
    err = np.degrees(np.abs(head_angles(params.arrays["pose"].astype(np.float64)) - performance.head))[ok]
    print("tracked vs true, over frames with a face:")
    print(f"  head yaw / pitch / roll median error: {np.median(err[:, 0]):.1f} / {np.median(err[:, 1]):.1f} / "
          f"{np.median(err[:, 2]):.1f} degrees")
    expr = params.arrays["expression"][ok]
    true = performance.expression[ok]
    for name in ("jawOpen", "eyeBlinkLeft", "mouthSmileLeft", "browInnerUp"):
        k = Blendshape[name]
        r = np.corrcoef(expr[:, k], true[:, k])[0, 1]
        print(f"  {name:<15} r = {r:.2f}, mean abs error {np.abs(expr[:, k] - true[:, k]).mean():.2f}")
    print(f"open {args.out / 'demo_overlay.mp4'} to see what the tracker saw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
