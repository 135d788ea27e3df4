"""Closed loop: render known parameters with the mesh engine, track the renders, compare.

For each avatar: a random 8-second performance (``puppet.synthetic.random_avatar_performance``:
one neutral second, then smooth random expressions, head, neck and collar motion) is rendered at
512 px, tracked through the real path (FaceMesh, the built-in expression solver, MediaPipe Pose,
the body solver) with smoothing OFF, and compared frame by frame after the first 1.5 s:

- head: yaw / pitch / roll of neck @ head (face mode, so the torso is the identity on both sides),
  raw (absolute) and calibrated: relative to the head's mean over the neutral first second, as
  the retargeter does in ``puppet convert`` / ``webcam``. Landmark-based absolute pitch carries a
  per-face offset of a few degrees (face shape and head tilt are partly ambiguous); calibration
  removes it;
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

from puppet.bench import machine_info
from puppet.cli import _quiet_native_logs
from puppet.closed_loop import MAIN, SKIP_S, closed_loop

REPO = Path(__file__).resolve().parents[1]


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
            results.append(closed_loop(name, seed, args.seconds, args.size, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    pooled = {
        "head_yaw_median_deg": float(np.median([r["head_error_deg"]["yaw"]["median"] for r in results])),
        "head_pitch_median_deg": float(np.median([r["head_error_deg"]["pitch"]["median"] for r in results])),
        "head_roll_median_deg": float(np.median([r["head_error_deg"]["roll"]["median"] for r in results])),
        "calibrated_head_yaw_median_deg": float(np.median([r["head_error_calibrated_deg"]["yaw"]["median"] for r in results])),
        "calibrated_head_pitch_median_deg": float(np.median([r["head_error_calibrated_deg"]["pitch"]["median"] for r in results])),
        "calibrated_head_roll_median_deg": float(np.median([r["head_error_calibrated_deg"]["roll"]["median"] for r in results])),
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
             "Head error, median over avatars of per-avatar medians (degrees):", "",
             "| | yaw | pitch | roll |", "|---|---|---|---|",
             f"| absolute | {pooled['head_yaw_median_deg']:.2f} | {pooled['head_pitch_median_deg']:.2f} | {pooled['head_roll_median_deg']:.2f} |",
             f"| after neutral calibration (as in convert/webcam) | {pooled['calibrated_head_yaw_median_deg']:.2f} | "
             f"{pooled['calibrated_head_pitch_median_deg']:.2f} | {pooled['calibrated_head_roll_median_deg']:.2f} |", "",
             "Rest reading per avatar (yaw, pitch, roll; truth 0): " + "; ".join(
                 f"{r['avatar']} {r['head_rest_reading_deg'][0]:+.1f}/{r['head_rest_reading_deg'][1]:+.1f}/{r['head_rest_reading_deg'][2]:+.1f}"
                 for r in results), "",
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
