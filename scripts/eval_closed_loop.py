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
- expression: mean absolute error, Pearson r and regression slope of the main coefficients
  (built-in solver);
- body (full mode): geodesic error of each SMPL joint 12-17 and of the camera.

The face part is measured twice on the same renders: with the solver's render calibration
(``trackers/data/anny_render_calibration.json``, derived by ``scripts/derive_render_calibration.py``
on other avatars and seeds) and without it ("uncorrected"), side by side.

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
from puppet.closed_loop import MAIN, SKIP_S, body_errors, face_errors, render_clip
from puppet.contract import ARKIT_NAMES
from puppet.rotations import yaw_pitch_roll
from trackers.face_solver import load_render_calibration

REPO = Path(__file__).resolve().parents[1]


def summarize(results: list[dict]) -> dict:
    """Median over avatars of the per-avatar head medians; mean over avatars of the expression
    errors (r and slope: mean of the per-avatar values, NaN left out)."""
    out = {}
    for kind, key in (("", "head_error_deg"), ("calibrated_", "head_error_calibrated_deg")):
        for angle in ("yaw", "pitch", "roll"):
            out[f"{kind}head_{angle}_median_deg"] = float(np.median([r[key][angle]["median"] for r in results]))
    for stat in ("mae", "r", "slope"):
        out[f"expression_{stat}"] = {n: float(np.nanmean([r["expression"][n][stat] for r in results])) for n in MAIN}
    return out


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
            perf, clip = render_clip(name, seed, args.seconds, args.size, Path(tmp))
            result = {"avatar": name, "seed": seed, "frames": len(perf.t), **face_errors(perf, clip),
                      **body_errors(perf, clip), "uncorrected": face_errors(perf, clip, render_calibration=None)}
            results.append(result)
            print(json.dumps(result), flush=True)
    pooled = summarize(results)
    uncorrected = summarize([r["uncorrected"] for r in results])
    with_body = [r for r in results if "joint_error_deg_median" in r]
    if with_body:
        pooled["joint_error_deg_median"] = {j: float(np.median([r["joint_error_deg_median"][j] for r in with_body]))
                                            for j in with_body[0]["joint_error_deg_median"]}
    calibration = load_render_calibration()
    report = {"date": datetime.date.today().isoformat(), "machine": machine_info(),
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "render_calibration": {"rest_yaw_pitch_roll_deg": np.degrees(yaw_pitch_roll(calibration.rest_rotation)).tolist(),
                                     "unit_gains": {n: float(g) for n, g in zip(ARKIT_NAMES, calibration.unit_gains)
                                                    if g != 1.0},
                                     "derived_on": calibration.meta.get("avatars"), "seeds": calibration.meta.get("seeds")},
              "summary": pooled, "summary_uncorrected": uncorrected, "avatars": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(args, results, pooled, uncorrected, report["render_calibration"],
                                                    report["date"], report["machine"]))
    print(args.out.with_suffix(".md").read_text())


def markdown(args, results: list[dict], pooled: dict, uncorrected: dict, calibration: dict, date: str,
             machine: dict) -> str:
    def rest(rs: list[dict]) -> str:
        return "; ".join(f"{r['avatar']} " + "/".join(f"{v:+.1f}" for v in r["head_rest_reading_deg"]) for r in rs)

    def row(label: str, p: dict, prefix: str) -> str:
        return (f"| {label} | {p[prefix + 'head_yaw_median_deg']:.2f} | {p[prefix + 'head_pitch_median_deg']:.2f} | "
                f"{p[prefix + 'head_roll_median_deg']:.2f} |")

    lines = [f"Closed loop over {len(results)} avatars ({', '.join(args.avatars)}), {args.seconds:.0f} s each at "
             f"{args.size} px, smoothing off, built-in expression solver; first {SKIP_S} s skipped. "
             f"Render calibration: derived on {', '.join(calibration['derived_on'] or [])} "
             f"(seeds {min(calibration['seeds'] or [0])}-{max(calibration['seeds'] or [0])}), held out from these; "
             f"rest rotation yaw/pitch/roll {'/'.join(f'{v:+.2f}' for v in calibration['rest_yaw_pitch_roll_deg'])} deg, "
             f"gains {', '.join(f'{n} {g:.3f}' for n, g in calibration['unit_gains'].items())}. "
             f"Measured {date} on {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), "
             f"{'GPU ' + machine['gpu'] if machine.get('gpu') else 'no GPU'}.", "",
             "Head error, median over avatars of per-avatar medians (degrees); uncorrected = the same renders "
             "tracked without the render calibration:", "",
             "| | yaw | pitch | roll |", "|---|---|---|---|",
             row("absolute, uncorrected", uncorrected, ""),
             row("absolute, render-calibrated", pooled, ""),
             row("after neutral calibration (as in convert/webcam), uncorrected", uncorrected, "calibrated_"),
             row("after neutral calibration, render-calibrated", pooled, "calibrated_"), "",
             "Rest reading per avatar (yaw/pitch/roll; truth 0), render-calibrated: " + rest(results),
             "", "Uncorrected: " + rest([dict(r["uncorrected"], avatar=r["avatar"]) for r in results]), "",
             "| coefficient | MAE uncorrected | MAE | r | slope uncorrected | slope |", "|---|---|---|---|---|---|"]
    for n in MAIN:
        lines.append(f"| {n} | {uncorrected['expression_mae'][n]:.3f} | {pooled['expression_mae'][n]:.3f} | "
                     f"{pooled['expression_r'][n]:.2f} | {uncorrected['expression_slope'][n]:.2f} | "
                     f"{pooled['expression_slope'][n]:.2f} |")
    lines += ["", "jawOpen per avatar (MAE uncorrected -> render-calibrated): " + "; ".join(
        f"{r['avatar']} {r['uncorrected']['expression']['jawOpen']['mae']:.3f} -> {r['expression']['jawOpen']['mae']:.3f}"
        for r in results)]
    if "joint_error_deg_median" in pooled:
        lines += ["", "SMPL joint error (full mode, render-calibrated; median geodesic degrees):", "",
                  "| joint | error |", "|---|---|"]
        lines += [f"| {j} | {e:.1f} |" for j, e in pooled["joint_error_deg_median"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
