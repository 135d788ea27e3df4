"""``puppet`` on the command line: a thin layer over the library.

Each command builds the options dataclasses once from its arguments and calls one library function
(``puppet.track.track``, ``puppet.bench.bench_track``). User mistakes (``PuppetError``) print one
line and exit with code 2; Ctrl-C exits with 130 after the command saved what it had.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from puppet import __version__
from puppet.errors import PuppetError

log = logging.getLogger("puppet")


# ----------------------------------------------------------------------------- shared options

def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument("--mode", choices=("full", "face"), default="full",
                   help="full: face and upper body; face: face only (faster, shoulders at rest)")
    g.add_argument("--face-tracker", choices=("facemesh", "landmarker", "auto"), default="facemesh",
                   help="facemesh: MediaPipe FaceMesh (bundled, ~5 ms), plus MediaPipe's blendshape "
                        "network (~0.6 ms) when face_landmarker.task is found; landmarker: the whole "
                        "FaceLandmarker task (~12 ms); auto: landmarker when the bundle is found")
    g.add_argument("--face-landmarker", type=Path, metavar="TASK",
                   help="path to face_landmarker.task (else $PUPPET_FACE_LANDMARKER, then the cache dir)")
    g.add_argument("--expression", choices=("auto", "builtin", "mediapipe"), default="auto",
                   help="expression weights from MediaPipe's blendshape model when available (auto), "
                        "or always from the built-in anny solver")
    g.add_argument("--subject", default="largest",
                   help="which face to follow when several are visible: largest, center, left, right "
                        "or an index counted from the left")
    g.add_argument("--sequential", action="store_true", help="run face and body trackers on one thread")
    g.add_argument("--no-smooth", action="store_true", help="write raw solver output (no One Euro filtering)")


def _tracking_options(args: argparse.Namespace):
    from puppet.smoothing import SmoothingOptions
    from puppet.tracking import TrackingOptions
    from trackers.face import FaceTrackerOptions
    from trackers.face_solver import FaceSolverOptions

    subject: str | int = args.subject
    if isinstance(subject, str) and subject.isdigit():
        subject = int(subject)
    try:
        face = FaceTrackerOptions(backend=args.face_tracker, face_landmarker=args.face_landmarker, subject=subject,
                                  blendshapes="off" if args.expression == "builtin" else "auto")
        return TrackingOptions(
            mode=args.mode,
            parallel=not args.sequential,
            face=face,
            face_solver=FaceSolverOptions(expression_source=args.expression),
            smoothing=SmoothingOptions(enabled=not args.no_smooth),
        )
    except ValueError as exc:
        raise PuppetError(str(exc)) from None


def _add_render_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("avatar")
    g.add_argument("--avatar", default=None, help="built-in avatar name (see `puppet avatars`) or an avatar .json")
    g.add_argument("--engine", choices=("mesh",), default="mesh")
    g.add_argument("--size", type=_count(64), default=512, help="avatar image side in pixels (default 512)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="drive the avatar with absolute values (no neutral calibration over the first second)")


def _render_options(args: argparse.Namespace):
    from puppet.convert import DEFAULT_AVATAR, RenderOptions

    try:
        return RenderOptions(avatar=args.avatar or DEFAULT_AVATAR, engine=args.engine, size=args.size)
    except ValueError as exc:
        raise PuppetError(str(exc)) from None


def _retarget_options(args: argparse.Namespace):
    from puppet.retarget import RetargetOptions

    return RetargetOptions(calibration_s=0.0 if args.no_calibrate else 1.0)


# ----------------------------------------------------------------------------- commands

def cmd_track(args: argparse.Namespace) -> int:
    from puppet.track import TrackJob, track

    job = TrackJob(input=args.input, output=args.output, overlay=args.overlay,
                   tracking=_tracking_options(args), max_frames=args.max_frames,
                   progress=not args.no_progress)
    summary = track(job)
    print(summary.describe())
    return 130 if summary.interrupted else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from puppet.convert import ConvertJob, convert

    job = ConvertJob(input=args.input, output=args.output, render=_render_options(args),
                     side_by_side=args.side_by_side, tracking=_tracking_options(args),
                     retarget=_retarget_options(args), max_frames=args.max_frames,
                     progress=not args.no_progress, params_output=args.save_params)
    summary = convert(job)
    print(summary.describe())
    return 130 if summary.stats.interrupted else 0


def cmd_render(args: argparse.Namespace) -> int:
    from puppet.convert import RenderJob, render_params

    summary = render_params(RenderJob(params=args.params, output=args.output, render=_render_options(args),
                                      retarget=_retarget_options(args), progress=not args.no_progress))
    print(summary.describe())
    return 130 if summary.interrupted else 0


def cmd_webcam(args: argparse.Namespace) -> int:
    from puppet.webcam import WebcamJob, run_webcam

    stats = run_webcam(WebcamJob(camera=args.camera, render=_render_options(args), tracking=_tracking_options(args),
                                 retarget=_retarget_options(args), max_seconds=args.max_seconds))
    print(stats.describe())
    return 0


def cmd_avatars(args: argparse.Namespace) -> int:
    from puppet.avatar import list_avatars, load_avatar

    for name in list_avatars():
        a = load_avatar(name)
        p, look = a.phenotype, a.appearance
        print(f"{name:<10} gender {p.gender:.2f}  age {p.age:.2f}  weight {p.weight:.2f}  "
              f"hair {look.hair_style:<5}  neckline {look.neckline}")
    return 0


def _print_report(report, json_path: Path | None) -> int:
    print(report.table())
    if json_path:
        print(f"JSON: {report.save(json_path)}")
    return 0


def cmd_bench_render(args: argparse.Namespace) -> int:
    from puppet.bench import bench_render

    return _print_report(bench_render(args.engine, avatar=args.avatar or "ada", size=args.size,
                                      frames=args.frames, warmup=args.warmup), args.json)


def cmd_bench_track(args: argparse.Namespace) -> int:
    from puppet.bench import bench_track

    return _print_report(bench_track(args.input, _tracking_options(args), frames=args.frames, warmup=args.warmup,
                                     progress=not args.no_progress), args.json)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="puppet", description="Real-time video puppeteering.")
    parser.add_argument("--version", action="version", version=f"puppet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("track", help="video, camera or images -> parameter file (+ overlay video)",
                       description="Track expression and head/shoulder pose into a .npz parameter file.")
    p.add_argument("input", help="video file, image, image folder, or camera (0, /dev/video0)")
    p.add_argument("-o", "--output", type=Path, required=True, help="parameter file to write (.npz)")
    p.add_argument("--overlay", type=Path, help="also write a video with landmarks, axes and bars (.mp4)")
    p.add_argument("--max-frames", type=_count(1), help="stop after this many frames")
    p.add_argument("--no-progress", action="store_true")
    _add_tracking_arguments(p)
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("convert", help="video -> avatar video (tracking, retargeting, rendering; audio kept)",
                       description="Drive an avatar with a video: one output frame per input frame, same "
                                   "timestamps, the input's audio copied. Ctrl-C leaves a playable file.")
    p.add_argument("input", help="video file (or image folder)")
    p.add_argument("-o", "--output", type=Path, required=True, help="video to write (.mp4, .mov, .mkv)")
    p.add_argument("--side-by-side", action="store_true", help="the driver on the left, the avatar on the right")
    p.add_argument("--save-params", type=Path, metavar="NPZ", help="also save the tracked parameters (.npz)")
    p.add_argument("--max-frames", type=_count(1), help="stop after this many frames")
    p.add_argument("--no-progress", action="store_true")
    _add_render_arguments(p)
    _add_tracking_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("render", help="parameter file (.npz) -> avatar video")
    p.add_argument("params", type=Path, help="a parameter file written by `puppet track`")
    p.add_argument("-o", "--output", type=Path, required=True, help="video to write (.mp4, .mov, .mkv)")
    p.add_argument("--no-progress", action="store_true")
    _add_render_arguments(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("webcam", help="live preview: driver and avatar side by side",
                       description="Live puppeteering in a window. Keys: c recalibrate, n/p next/previous "
                                   "avatar, o overlay on/off, q quit.")
    p.add_argument("--camera", default="0", help="camera index, /dev/videoN, or a video file played in real time")
    p.add_argument("--max-seconds", type=float, help="stop after showing the preview this long")
    _add_render_arguments(p)
    _add_tracking_arguments(p)
    p.set_defaults(func=cmd_webcam)

    p = sub.add_parser("avatars", help="list the built-in avatars")
    p.set_defaults(func=cmd_avatars)

    p = sub.add_parser("bench", help="measure per-stage speed")
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bench_sub.add_parser("track", help="per-stage ms (decode, face, body, solve, smooth) and fps")
    b.add_argument("input", help="video file, image folder or camera")
    b.add_argument("--frames", type=_count(1), default=300, help="frames to time after warm-up (default 300)")
    b.add_argument("--warmup", type=_count(0), default=10)
    b.add_argument("--json", type=Path, help="also save the report as JSON")
    b.add_argument("--no-progress", action="store_true")
    _add_tracking_arguments(b)
    b.set_defaults(func=cmd_bench_track)
    b = bench_sub.add_parser("render", help="engine render time per frame after baking (ms p50/p95, fps)")
    b.add_argument("--engine", choices=("mesh",), default="mesh")
    b.add_argument("--avatar", default=None)
    b.add_argument("--size", type=_count(16), default=512)
    b.add_argument("--frames", type=_count(1), default=200)
    b.add_argument("--warmup", type=_count(0), default=10)
    b.add_argument("--json", type=Path, help="also save the report as JSON")
    b.set_defaults(func=cmd_bench_render)
    return parser


def _quiet_native_logs() -> None:
    """MediaPipe/TFLite log through glog/absl to stderr; keep the terminal for our own messages."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # camera probing prints C++ warnings otherwise
    warnings.filterwarnings("ignore", category=UserWarning, module="google.protobuf")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_native_logs()
    try:
        return args.func(args)
    except PuppetError as exc:
        print(f"puppet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("puppet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
