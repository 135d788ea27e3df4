"""The offline demo (``make demo``): one avatar performs, a second avatar is puppeteered by it.

1. A random performance (expressions, head, neck and shoulder motion; known parameters) is
   rendered with the avatar "farouk" into a video: the stand-in for footage of a person, since no
   footage can ship with puppet.
2. ``puppet convert`` drives the avatar "ada" with that video through the full path: decoding,
   MediaPipe face and pose tracking, the solvers, smoothing, retargeting, the mesh engine and the
   H.264 writer, side by side with the driver.
3. The tracked parameters are compared with the known ones.

Needs no footage, camera or network. Usage: python -m demos.puppet_demo [--out DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from puppet.avatar import load_avatar
from puppet.cli import _quiet_native_logs
from puppet.contract import Blendshape
from puppet.convert import ConvertJob, RenderOptions, convert
from puppet.errors import PuppetError
from puppet.params import head_rotation, load_params
from puppet.rotations import yaw_pitch_roll
from puppet.synthetic import random_avatar_performance, render_avatar_performance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--driver", default="farouk")
    parser.add_argument("--avatar", default="ada")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _quiet_native_logs()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        performance = random_avatar_performance(seconds=args.seconds, seed=3)
        driver = render_avatar_performance(performance, load_avatar(args.driver), args.out / "demo_driver.mp4",
                                           progress=True)
        print(f"1. {args.driver} performed for {args.seconds:.0f} s with known parameters: {driver}")
        summary = convert(ConvertJob(input=str(driver), output=args.out / "demo_puppet.mp4",
                                     render=RenderOptions(avatar=args.avatar), side_by_side=True,
                                     params_output=args.out / "demo_params.npz"))
        print(f"2. {args.avatar} puppeteered by that video: {summary.output}")
        print(f"   {summary.stats.describe()}")
    except PuppetError as exc:
        print(f"puppet: error: {exc}", file=sys.stderr)
        return 2
    tracked = load_params(args.out / "demo_params.npz")
    ok = tracked.arrays["face_ok"] & (performance.t >= 1.5)
    err = np.degrees(np.abs(yaw_pitch_roll(head_rotation(tracked.arrays["pose"]))
                            - yaw_pitch_roll(head_rotation(performance.pose))))[ok]
    print(f"3. tracked vs known (smoothed, after the first 1.5 s): head yaw / pitch / roll median error "
          f"{np.median(err[:, 0]):.1f} / {np.median(err[:, 1]):.1f} / {np.median(err[:, 2]):.1f} deg")
    for name in ("jawOpen", "eyeBlinkLeft", "mouthSmileLeft", "mouthPucker"):
        k = Blendshape[name]
        got, true = tracked.arrays["expression"][ok, k], performance.expression[ok, k]
        print(f"   {name:<15} r = {np.corrcoef(got, true)[0, 1]:.2f}, mean abs error {np.abs(got - true).mean():.2f}")
    print(f"open {summary.output}: the driver on the left, the puppet on the right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
