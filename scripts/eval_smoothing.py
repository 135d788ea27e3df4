"""Smoothing on real footage: frame-to-frame jitter of head rotation and expression, raw solver
output against the smoothed parameters, on the still segments of every video; plus the lag of the
smoothed stream behind the raw one over the whole clip.

A still segment is a run of at least ``min_run`` frames where the raw head turns slower than
``still_deg_s`` and no measured expression weight changes faster than ``still_weight_s`` (both on a
5-frame centred average, so that the jitter itself does not count as motion). A "held still"
segment is the stricter case of a person holding a pose: under ``held_deg_s`` and
``held_weight_s`` on a 15-frame (half-second) centred average, so that slow drifts of a few
degrees per second no longer count as still. Raw and smoothed come from the same tracking run.
For scale, each segment is also scored with a centred (non-causal, lag-free) 15-frame moving
average of the raw stream: what half a second of averaging with access to the future removes.
Where even that cuts little, the frame-to-frame change is slow motion (of the person, or slow
tracker drift), which no filter with a low lag may remove. Still photos seen through sensor noise
are the truly still case.

Usage: python scripts/eval_smoothing.py [--media DIR] [--out docs/smoothing_eval]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puppet.bench import machine_info
from puppet.cli import _quiet_native_logs
from puppet.contract import Blendshape
from puppet.params import head_rotation
from puppet.rotations import align_hemisphere, matrix_to_quat, normalize_quat, quat_angle_between
from puppet.smoothing_metrics import jitter_rms, lag_frames, rotation_jitter_rms, rotation_lag_frames
from puppet.sources import VideoFileSource
from puppet.tracking import Tracker, TrackingOptions

REPO = Path(__file__).resolve().parents[1]
MAIN_EXPRESSIONS = (Blendshape.jawOpen, Blendshape.mouthSmileLeft, Blendshape.mouthSmileRight,
                    Blendshape.browInnerUp, Blendshape.eyeLookInLeft, Blendshape.eyeLookOutLeft)


def head_quats(pose: np.ndarray) -> np.ndarray:
    """T x 6 x 3 -> T x 4: the head relative to the torso."""
    return matrix_to_quat(head_rotation(pose))


def centred_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along the frame axis (edges use the frames that exist)."""
    kernel = np.ones(width)
    flat = values.reshape(len(values), -1)
    total = np.stack([np.convolve(flat[:, k], kernel, mode="same") for k in range(flat.shape[1])], axis=1)
    count = np.convolve(np.ones(len(values)), kernel, mode="same")[:, None]
    return (total / count).reshape(values.shape)


def still_runs(quats: np.ndarray, expression: np.ndarray, fps: float, still_deg_s: float,
               still_weight_s: float, min_run: int, width: int = 5) -> list[slice]:
    """Runs of frames where the head (quaternions, T x 4) and every expression weight (T x C) are
    still: speeds measured on a centred ``width``-frame average."""
    smooth_q = normalize_quat(centred_average(align_hemisphere(quats, quats[:1]), width))
    speed = np.degrees(quat_angle_between(smooth_q[1:], smooth_q[:-1])) * fps
    weight_speed = np.abs(np.diff(centred_average(expression, width), axis=0)).max(axis=1) * fps
    still = np.concatenate([[False], (speed < still_deg_s) & (weight_speed < still_weight_s)])
    runs, start = [], None
    for i, s in enumerate(np.append(still, False)):
        if s and start is None:
            start = i
        elif not s and start is not None:
            if i - start >= min_run:
                runs.append(slice(start, i))
            start = None
    return runs


@dataclass(frozen=True)
class Stillness:
    """What counts as still: head and expression speed limits on a centred ``width``-frame average."""

    deg_s: float
    weight_s: float
    width: int
    min_run: int


def segment_jitter(runs: list[slice], raw_q: np.ndarray, out_q: np.ndarray, centred_q: np.ndarray,
                   raw_e: np.ndarray, out_e: np.ndarray, centred_e: np.ndarray) -> dict:
    """Jitter raw and smoothed, and its reduction (pooled over the runs, weighted by their
    frame-to-frame steps), by the causal filter and by the centred 15-frame average."""
    def pooled(metric, a, b):
        num = sum(metric(a[r]) ** 2 * (r.stop - r.start - 1) for r in runs)
        den = sum(metric(b[r]) ** 2 * (r.stop - r.start - 1) for r in runs)
        return float(np.sqrt(num / den))

    def mean_rms(metric, values):
        return float(np.sqrt(np.mean([metric(values[r]) ** 2 for r in runs])))

    return {
        "still_frames": int(sum(r.stop - r.start for r in runs)),
        "head_jitter_raw_deg": float(np.degrees(mean_rms(rotation_jitter_rms, raw_q))),
        "head_jitter_smoothed_deg": float(np.degrees(mean_rms(rotation_jitter_rms, out_q))),
        "head_jitter_reduction": pooled(rotation_jitter_rms, raw_q, out_q),
        "head_jitter_reduction_centred15": pooled(rotation_jitter_rms, raw_q, centred_q),
        "expression_jitter_raw": mean_rms(jitter_rms, raw_e),
        "expression_jitter_smoothed": mean_rms(jitter_rms, out_e),
        "expression_jitter_reduction": pooled(jitter_rms, raw_e, out_e),
        "expression_jitter_reduction_centred15": pooled(jitter_rms, raw_e, centred_e),
    }


def evaluate(video: Path, still: Stillness, held: Stillness) -> dict:
    with VideoFileSource(video) as source, Tracker(TrackingOptions(mode="face")) as tracker:
        tracked = [tracker.process(frame) for frame in source]
        fps = source.fps
    ok = np.array([t.raw.face_ok for t in tracked])
    raw_pose = np.stack([t.raw.pose for t in tracked]).astype(np.float64)
    out_pose = np.stack([t.params.pose for t in tracked]).astype(np.float64)
    raw_q, out_q = head_quats(raw_pose), head_quats(out_pose)
    centred_q = normalize_quat(centred_average(align_hemisphere(raw_q, raw_q[:1]), 15))
    raw_e = np.stack([t.raw.expression for t in tracked])[:, MAIN_EXPRESSIONS].astype(np.float64)
    out_e = np.stack([t.params.expression for t in tracked])[:, MAIN_EXPRESSIONS].astype(np.float64)
    centred_e = centred_average(raw_e, 15)
    result: dict = {"video": video.name, "frames": len(tracked)}
    for name, criterion in (("still", still), ("held_still", held)):
        runs = [r for r in still_runs(raw_q, raw_e, fps, criterion.deg_s, criterion.weight_s,
                                      criterion.min_run, criterion.width) if ok[r].all()]
        result[name] = (segment_jitter(runs, raw_q, out_q, centred_q, raw_e, out_e, centred_e)
                        if runs else {"still_frames": 0})
    if ok.all():
        result["head_lag_frames"] = float(rotation_lag_frames(raw_q, out_q))
        result["expression_lag_frames"] = float(lag_frames(raw_e, out_e))
    return result


def evaluate_still_photo(image_path: Path, frames: int, noise: float, seed: int = 0) -> dict | None:
    """A real face held perfectly still, seen through a noisy sensor: every frame-to-frame change
    of the output is tracker jitter."""
    from puppet.frame import Frame
    from puppet.sources import read_image

    image = read_image(image_path)
    rng = np.random.default_rng(seed)
    with Tracker(TrackingOptions(mode="face")) as tracker:
        tracked = []
        for i in range(frames):
            noisy = np.clip(image + rng.normal(0.0, noise, image.shape), 0, 255).astype(np.uint8)
            tracked.append(tracker.process(Frame(noisy, t=i / 30.0, index=i)))
    if not all(t.raw.face_ok for t in tracked):
        return None
    skip = 15  # let the first-frame calibration settle
    raw_q = head_quats(np.stack([t.raw.pose for t in tracked[skip:]]).astype(np.float64))
    out_q = head_quats(np.stack([t.params.pose for t in tracked[skip:]]).astype(np.float64))
    raw_e = np.stack([t.raw.expression for t in tracked[skip:]]).astype(np.float64)
    out_e = np.stack([t.params.expression for t in tracked[skip:]]).astype(np.float64)
    return {
        "image": image_path.name,
        "head_jitter_raw_deg": float(np.degrees(rotation_jitter_rms(raw_q))),
        "head_jitter_smoothed_deg": float(np.degrees(rotation_jitter_rms(out_q))),
        "head_jitter_reduction": float(rotation_jitter_rms(raw_q) / max(rotation_jitter_rms(out_q), 1e-12)),
        "expression_jitter_raw": jitter_rms(raw_e),
        "expression_jitter_smoothed": jitter_rms(out_e),
        "expression_jitter_reduction": float(jitter_rms(raw_e) / max(jitter_rms(out_e), 1e-12)),
    }


def video_table(results: list[dict], key: str) -> list[str]:
    lines = ["| video | still frames | head jitter raw -> smoothed (deg) | x | x, centred 15-frame average | "
             "expression jitter raw -> smoothed | x | x, centred 15-frame average | lag head / expression (frames) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lag = f"{r.get('head_lag_frames', float('nan')):.2f} / {r.get('expression_lag_frames', float('nan')):.2f}"
        s = r[key]
        if s["still_frames"]:
            lines.append(f"| {r['video']} | {s['still_frames']} | {s['head_jitter_raw_deg']:.2f} -> {s['head_jitter_smoothed_deg']:.2f} "
                         f"| {s['head_jitter_reduction']:.1f} | {s['head_jitter_reduction_centred15']:.1f} "
                         f"| {s['expression_jitter_raw']:.4f} -> {s['expression_jitter_smoothed']:.4f} "
                         f"| {s['expression_jitter_reduction']:.1f} | {s['expression_jitter_reduction_centred15']:.1f} | {lag} |")
        else:
            lines.append(f"| {r['video']} | 0 | - | - | - | - | - | - | {lag} |")
    return lines


def stat(fn, rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return float(fn(values)) if values else None


def segment_summary(results: list[dict], key: str) -> dict:
    rows = [r[key] for r in results if r[key]["still_frames"]]
    return {
        "videos_with_segments": len(rows),
        "frames": sum(r["still_frames"] for r in rows),
        "median_head_jitter_reduction": stat(np.median, rows, "head_jitter_reduction"),
        "median_expression_jitter_reduction": stat(np.median, rows, "expression_jitter_reduction"),
        "min_head_jitter_reduction": stat(np.min, rows, "head_jitter_reduction"),
        "min_expression_jitter_reduction": stat(np.min, rows, "expression_jitter_reduction"),
        "median_head_jitter_reduction_centred15": stat(np.median, rows, "head_jitter_reduction_centred15"),
        "median_expression_jitter_reduction_centred15": stat(np.median, rows, "expression_jitter_reduction_centred15"),
    }


def flat_items(d: dict, prefix: str = "") -> list[str]:
    """``{"a": {"b": 1.234}}`` -> ``["a.b = 1.23"]``."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += flat_items(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k} = {v:.2f}" if isinstance(v, float) else f"{prefix}{k} = {v}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media" / "video")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "smoothing_eval")
    parser.add_argument("--still-deg-s", type=float, default=8.0)
    parser.add_argument("--still-weight-s", type=float, default=0.6,
                        help="fastest expression change (weight/s) a still segment allows")
    parser.add_argument("--held-deg-s", type=float, default=3.0)
    parser.add_argument("--held-weight-s", type=float, default=0.2,
                        help="fastest expression change (weight/s) a held-still segment allows")
    parser.add_argument("--min-run", type=int, default=10)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "media" / "images")
    parser.add_argument("--noise", type=float, default=3.0, help="sensor noise (8-bit levels) on still photos")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _quiet_native_logs()
    still = Stillness(args.still_deg_s, args.still_weight_s, width=5, min_run=args.min_run)
    held = Stillness(args.held_deg_s, args.held_weight_s, width=15, min_run=args.min_run)
    results = []
    for video in sorted(args.media.glob("*.mp4")):
        results.append(evaluate(video, still, held))
        print(json.dumps(results[-1]), flush=True)
    photos = [r for r in (evaluate_still_photo(p, 90, args.noise) for p in sorted(args.images.glob("*.jpg"))) if r]
    for r in photos:
        print(json.dumps(r), flush=True)
    summary = {
        "videos": len(results),
        "still": segment_summary(results, "still"),
        "held_still": segment_summary(results, "held_still"),
        "median_head_lag_frames": stat(np.median, results, "head_lag_frames"),
        "median_expression_lag_frames": stat(np.median, results, "expression_lag_frames"),
        "still_photos": len(photos),
        "photo_median_head_jitter_reduction": stat(np.median, photos, "head_jitter_reduction"),
        "photo_median_expression_jitter_reduction": stat(np.median, photos, "expression_jitter_reduction"),
        "photo_min_head_jitter_reduction": stat(np.min, photos, "head_jitter_reduction"),
        "photo_min_expression_jitter_reduction": stat(np.min, photos, "expression_jitter_reduction"),
    }
    report = {"date": datetime.date.today().isoformat(), "machine": machine_info(), "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "summary": summary, "videos": results, "still_photos": photos}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"Still segments (head under {still.deg_s:g} deg/s, expression under {still.weight_s:g}/s, "
             f"{still.width}-frame centred averages, at least {still.min_run} frames):", ""]
    lines += video_table(results, "still")
    lines += ["", f"Held-still segments (head under {held.deg_s:g} deg/s, expression under {held.weight_s:g}/s, "
              f"{held.width}-frame centred averages, at least {held.min_run} frames):", ""]
    lines += video_table(results, "held_still")
    lines += ["", f"Real photos held still with sensor noise (sigma {args.noise} levels), 75 frames each after 15 to settle:", "",
              "| image | head jitter raw -> smoothed (deg) | x | expression jitter raw -> smoothed | x |", "|---|---|---|---|---|"]
    for r in photos:
        lines.append(f"| {r['image']} | {r['head_jitter_raw_deg']:.3f} -> {r['head_jitter_smoothed_deg']:.3f} | {r['head_jitter_reduction']:.1f} "
                     f"| {r['expression_jitter_raw']:.4f} -> {r['expression_jitter_smoothed']:.4f} | {r['expression_jitter_reduction']:.1f} |")
    lines.append("")
    lines.append("Summary: " + ", ".join(flat_items(summary)))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
