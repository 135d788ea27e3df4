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


def _add_live_source_argument(p: argparse.ArgumentParser) -> None:
    """``--camera`` of the live commands (webcam, stream)."""
    p.add_argument("--camera", default="0", help="camera index, /dev/videoN, or a video file played in real time")


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
    g.add_argument("--engine", choices=("mesh", "neural"), default="mesh",
                   help="mesh: anny rasterised (default); neural: the trained generator (needs --checkpoint)")
    g.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="generator checkpoint for --engine neural (`puppet train`'s generator.safetensors)")
    g.add_argument("--size", type=_count(64), default=512, help="avatar image side in pixels (default 512)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="drive the avatar with absolute values (no neutral calibration over the first second)")


def _render_options(args: argparse.Namespace):
    from puppet.convert import DEFAULT_AVATAR, RenderOptions

    engine_options = {}
    if args.engine == "neural":
        if args.checkpoint is None:
            raise PuppetError("--engine neural needs --checkpoint CKPT (a generator checkpoint from `puppet train`)")
        from puppet.generator.checkpoint import read_checkpoint_metadata

        read_checkpoint_metadata(args.checkpoint)  # a missing or foreign file fails here, before any work
        engine_options = {"checkpoint": args.checkpoint}
    elif args.checkpoint is not None:
        raise PuppetError("--checkpoint is for --engine neural")
    try:
        return RenderOptions(avatar=args.avatar or DEFAULT_AVATAR, engine=args.engine, size=args.size,
                             engine_options=engine_options)
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


def cmd_stream(args: argparse.Namespace) -> int:
    from puppet.sinks.encode import LiveEncoderOptions
    from puppet.stream import StatusLine, StreamOptions, parse_target, stream

    try:
        options = StreamOptions(camera=args.camera, targets=tuple(parse_target(t) for t in args.to), host=args.host,
                                port=args.port, loop=args.loop, render=_render_options(args),
                                tracking=_tracking_options(args), retarget=_retarget_options(args),
                                encoder=LiveEncoderOptions(max_bitrate=args.bitrate * 1000, preset=args.preset),
                                max_seconds=args.max_seconds)
    except ValueError as exc:
        raise PuppetError(str(exc)) from None
    summary = stream(options, StatusLine())
    print(summary.describe())
    return 130 if summary.interrupted else 0


def cmd_synth(args: argparse.Namespace) -> int:
    from puppet.synth import BankOptions, SamplingOptions, SynthOptions, synthesize

    try:
        options = SynthOptions(
            output=args.output, samples=args.n, size=args.size, seed=args.seed, identities=args.identities,
            shard_size=args.shard_size, compress=args.compress, progress=not args.no_progress,
            sampling=SamplingOptions(bank_fraction=args.bank_fraction, pose_bank_fraction=args.pose_bank_fraction),
            bank=BankOptions(use=args.expression_bank, videos=args.bank_videos, step=args.bank_step,
                             face_landmarker=args.face_landmarker),
        )
    except ValueError as exc:
        raise PuppetError(str(exc)) from None
    summary = synthesize(options)
    print(summary.describe())
    return 130 if summary.interrupted else 0


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from puppet.generator.losses import LossWeights
    from puppet.generator.train import TrainOptions, train

    weights = LossWeights()
    if args.r1_gamma is not None:
        weights = dataclasses.replace(weights, r1_gamma=args.r1_gamma)
    if args.gan is not None:
        weights = dataclasses.replace(weights, gan=args.gan)
    try:
        options = TrainOptions(
            data=args.data, out=args.output, config=args.config, stage=args.stage, init=args.init, steps=args.steps,
            batch=args.batch, batch_split=args.batch_split, g_lr=args.g_lr, d_lr=args.d_lr, grad_clip=args.grad_clip, ema=args.ema, seed=args.seed,
            device=args.device, amp=args.amp, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
            grid_every=args.grid_every, resume=args.resume, weights=weights, workers=args.workers,
            threads=args.threads, progress=not args.no_progress)
    except ValueError as exc:
        raise PuppetError(str(exc)) from None
    result = train(options)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one summary, from rank 0
        print(result.describe())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from puppet.evaluate import EvalOptions, evaluate

    try:
        options = EvalOptions(checkpoint=args.checkpoint, data=args.data, samples=args.samples,
                              untrained=args.untrained, seed=args.seed, stability_identities=args.stability_identities,
                              track=not args.no_track, face_landmarker=args.face_landmarker, device=args.device,
                              progress=not args.no_progress)
    except ValueError as exc:
        raise PuppetError(str(exc)) from None
    return _print_report(evaluate(options), args.json)


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


def _neural_runtime_options(args: argparse.Namespace) -> dict:
    """NeuralEngineOptions fields from the bench's runtime arguments (only those given)."""
    out: dict = {}
    for name in ("device", "precision", "onnx", "threads", "compile"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    if getattr(args, "cuda_graphs", False):
        out["cuda_graphs"] = True
    if out and args.engine != "neural":
        raise PuppetError(f"--{next(iter(out)).replace('_', '-')} is for --engine neural")
    return out


def cmd_bench_render(args: argparse.Namespace) -> int:
    from puppet.bench import bench_render

    return _print_report(bench_render(args.engine, avatar=args.avatar or "ada", size=args.size,
                                      frames=args.frames, warmup=args.warmup, backend=args.backend,
                                      checkpoint=args.checkpoint, engine_options=_neural_runtime_options(args)),
                         args.json)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    import dataclasses

    from puppet.bench import bench_pipeline

    render = _render_options(args)
    extra = _neural_runtime_options(args)
    if args.backend is not None:
        if args.engine != "neural":
            raise PuppetError("--backend is for --engine neural")
        extra["runtime"] = args.backend
    if extra:
        render = dataclasses.replace(render, engine_options={**render.engine_options, **extra})
    return _print_report(bench_pipeline(args.input, render, _tracking_options(args), _retarget_options(args),
                                        frames=args.frames, live=args.live), args.json)


def cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.format, args.output, size=args.size, fp16=args.fp16,
                                opset=args.opset, avatar=args.avatar)
    print(summary.describe())
    return 0


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
    _add_live_source_argument(p)
    p.add_argument("--max-seconds", type=float, help="stop after showing the preview this long")
    _add_render_arguments(p)
    _add_tracking_arguments(p)
    p.set_defaults(func=cmd_webcam)

    p = sub.add_parser("stream", help="live avatar to a virtual camera, an RTMP server, HLS or a browser (WebRTC)",
                       description="Stream the live avatar: --to virtualcam (v4l2loopback / OBS Virtual Camera), "
                                   "rtmp://HOST/APP/KEY (H.264 + AAC, reconnects), hls:DIR (1 s segments, served "
                                   "with a viewer page), webrtc (a browser page, lowest latency). Repeat --to for "
                                   "several at once. A status line shows fps, latency and drops; Ctrl-C ends "
                                   "every stream cleanly.")
    _add_live_source_argument(p)
    p.add_argument("--to", action="append", required=True, metavar="TARGET",
                   help="virtualcam[:/dev/videoN] | rtmp://HOST/APP/KEY | hls:DIR | webrtc")
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the viewer pages' web server (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_count(0), default=8080, help="its port (default 8080; 0: any free port)")
    p.add_argument("--loop", action="store_true", help="play the --camera video file over and over")
    p.add_argument("--bitrate", type=_count(100), default=2500, help="RTMP/HLS video bit rate cap, kbit/s (default 2500)")
    p.add_argument("--preset", choices=("ultrafast", "superfast", "veryfast", "faster", "fast"), default="veryfast",
                   help="libx264 speed preset for RTMP/HLS (default veryfast)")
    p.add_argument("--max-seconds", type=float, help="stop after streaming this long")
    _add_render_arguments(p)
    _add_tracking_arguments(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("synth", help="render a synthetic dataset (mesh engine) to train the neural generator",
                       description="Random avatars with expressions (tracked from real footage and random), "
                                   "head/shoulder poses and cameras, rendered by the mesh engine: a portrait and a "
                                   "face-camera image per sample, with all labels, in .npz shards. Running it again "
                                   "resumes; Ctrl-C keeps the finished shards.")
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (created; resumed if it holds "
                                                                    "the same dataset)")
    p.add_argument("--n", type=_count(1), required=True, help="number of samples")
    p.add_argument("--size", type=int, choices=(256, 512), default=256,
                   help="portrait side in pixels; the face image is half (default 256)")
    p.add_argument("--seed", type=_count(0), default=0, help="everything random follows from it (default 0)")
    p.add_argument("--identities", type=_count(1), help="random avatars (default n/32, clamped to [1, 256])")
    p.add_argument("--shard-size", type=_count(1), default=256, help="samples per shard file (default 256)")
    p.add_argument("--compress", action="store_true", help="zlib-compress the shards (smaller, slower)")
    p.add_argument("--expression-bank", choices=("auto", "off"), default="auto",
                   help="auto: draw expressions and poses from tracked footage when it is found; off: random only")
    p.add_argument("--bank-videos", type=Path, metavar="DIR",
                   help="folder of videos for the expression bank (default ../shared/media/video when present)")
    p.add_argument("--bank-step", type=_count(1), default=3, help="track every n-th frame of the footage (default 3)")
    p.add_argument("--bank-fraction", type=_fraction, default=0.7,
                   help="share of expressions taken from the bank, the rest random (default 0.7)")
    p.add_argument("--pose-bank-fraction", type=_fraction, default=0.5,
                   help="share of head poses taken from the bank, the rest random (default 0.5)")
    p.add_argument("--face-landmarker", type=Path, metavar="TASK",
                   help="face_landmarker.task for the bank's expressions (default: found automatically)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train the neural generator on a `puppet synth` dataset",
                       description="Stage 1: the generator without super-resolution (render_direct), three "
                                   "discriminators, deformation and reconstruction losses. Stage 2: the SR net only "
                                   "(--init a stage-1 generator). Writes RUN_DIR/run.json, log.jsonl, grids/ and "
                                   "checkpoint/ (generator.safetensors + training state); --resume continues it. "
                                   "Multi-GPU: torchrun --nproc_per_node N -m puppet.cli train ...")
    p.add_argument("data", type=Path, metavar="DATA_DIR", help="a dataset folder written by `puppet synth`")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="run directory (created)")
    p.add_argument("--config", default="tiny", help="tiny | published | a JSON config file (default tiny)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--init", type=Path, metavar="CKPT", help="stage 2: the stage-1 generator.safetensors")
    p.add_argument("--steps", type=_count(1), default=1000, help="total steps of the run (default 1000)")
    p.add_argument("--batch", type=_count(1), default=4, help="samples per step and GPU (default 4)")
    p.add_argument("--batch-split", type=_count(1), default=1,
                   help="cut each batch into this many micro-batches, gradients accumulated (less memory)")
    p.add_argument("--g-lr", type=float, help="generator learning rate (default 1e-4 stage 1, 2e-4 stage 2)")
    p.add_argument("--d-lr", type=float, default=2e-4, help="discriminator learning rate (default 2e-4)")
    p.add_argument("--r1-gamma", type=float, help="R1 weight gamma (default 1)")
    p.add_argument("--gan", type=float, help="weight of all adversarial terms (default 1; 0: supervised only)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--ema", type=float, default=0.999, help="generator EMA decay, 0 = off (default 0.999)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision (default auto: fp16 + GradScaler on CUDA, off on CPU)")
    p.add_argument("--log-every", type=_count(1), default=10)
    p.add_argument("--checkpoint-every", type=_count(1), default=500)
    p.add_argument("--grid-every", type=_count(1), default=500)
    p.add_argument("--workers", type=_count(0), default=0, help="data-loader worker processes (default 0)")
    p.add_argument("--threads", type=_count(1), help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="compare the neural generator with the mesh renders of a `puppet synth` dataset",
                       description="Render the last --samples samples of a synthetic dataset with the neural engine "
                                   "and compare with the dataset's mesh renders: PSNR, SSIM, mask IoU; control "
                                   "accuracy by re-tracking the renders (head rotation, jawOpen, eyeBlink, smile; the "
                                   "mesh renders' own figures as the floor); identity stability across views. Use a "
                                   "dataset the checkpoint was not trained on (e.g. `puppet synth --seed 1`).")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="generator checkpoint")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="a dataset folder written by `puppet synth`")
    p.add_argument("--samples", type=_count(1), default=64, help="how many of the dataset's last samples (default 64)")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate a freshly initialised generator of the same config (the baseline)")
    p.add_argument("--seed", type=_count(0), default=0, help="initialisation seed of the --untrained generator")
    p.add_argument("--stability-identities", type=_count(0), default=4,
                   help="identities rendered under several views for the stability figure (default 4)")
    p.add_argument("--no-track", action="store_true", help="skip the control-accuracy figures (no tracking)")
    p.add_argument("--face-landmarker", type=Path, metavar="TASK",
                   help="face_landmarker.task for the MediaPipe blendshape figures (default: found automatically)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", type=Path, help="also save the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

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
    b = bench_sub.add_parser("render", help="engine render time per frame after baking (ms p50/p95, fps)",
                             description="Per-frame render time after warm-up: p50/p95 ms, fps, peak GPU memory "
                                         "(CUDA), machine and versions. --engine neural without --checkpoint times a "
                                         "freshly initialised published-config generator (said in the report).")
    b.add_argument("--engine", choices=("mesh", "neural"), default="mesh")
    b.add_argument("--checkpoint", type=Path, metavar="CKPT", help="--engine neural: the generator checkpoint")
    b.add_argument("--avatar", default=None)
    b.add_argument("--size", type=_count(16), default=512)
    b.add_argument("--frames", type=_count(1), default=200)
    b.add_argument("--warmup", type=_count(0), default=10)
    b.add_argument("--json", type=Path, help="also save the report as JSON")
    _add_neural_runtime_arguments(b)
    b.set_defaults(func=cmd_bench_render)
    b = bench_sub.add_parser("pipeline", help="end to end: decode, track, retarget, render (fps, capture-to-sink latency)",
                             description="Runs INPUT through the live pipeline's stages into a sink that drops the "
                                         "frames: per-stage ms, frames per second at the sink and capture-to-sink "
                                         "latency. Lossless by default (throughput); --live paces the file at its "
                                         "frame rate and drops stale frames, as the webcam does.")
    b.add_argument("input", help="video file or image folder")
    b.add_argument("--frames", type=_count(1), default=300, help="frames to read (default 300)")
    b.add_argument("--live", action="store_true", help="pace the file in real time, newest frame only")
    b.add_argument("--json", type=Path, help="also save the report as JSON")
    _add_render_arguments(b)
    _add_tracking_arguments(b)
    _add_neural_runtime_arguments(b)
    b.set_defaults(func=cmd_bench_pipeline)

    p = sub.add_parser("export", help="the neural generator's per-frame render -> ONNX or a TensorRT engine",
                       description="Export the per-frame graph of a generator checkpoint (identity: HR maps and rig "
                                   "as graph inputs, so one file serves every avatar) as ONNX (opset >= 17, static "
                                   "shapes, TensorRT-compatible operators, validated) or build a TensorRT engine "
                                   "from it on this machine's GPU.")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="generator checkpoint (.safetensors)")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--fp16", action="store_true", help="tensorrt: FP16 kernels")
    p.add_argument("-o", "--output", type=Path, help="file to write (default CKPT-SIZE.onnx / CKPT-SIZE-fp32.engine here)")
    p.add_argument("--size", type=_count(16), help="output image side (default the checkpoint's HR size)")
    p.add_argument("--opset", type=_count(17), default=17, help="ONNX opset (default 17)")
    p.add_argument("--avatar", default="ada", help="avatar whose rig gives the skeleton (all anny avatars share it)")
    p.set_defaults(func=cmd_export)
    return parser


def _add_neural_runtime_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("neural runtime")
    g.add_argument("--backend", choices=("torch", "onnx", "tensorrt"), help="--engine neural: runtime (default torch)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--precision", choices=("float32", "float16", "bfloat16"), help="default float32")
    g.add_argument("--onnx", type=Path, metavar="FILE", help="onnx/tensorrt: this `puppet export` file (default: "
                                                              "exported on the fly and cached)")
    g.add_argument("--threads", type=_count(1), help="onnx: ONNX Runtime intra-op threads")
    g.add_argument("--cuda-graphs", action="store_true", help="torch on CUDA: capture the frame in a CUDA graph")
    g.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"), help="torch: torch.compile mode")


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
