"""``puppet eval``: how close the neural generator comes to the mesh engine it imitates.

Samples: the last ``samples`` samples of a ``puppet synth`` dataset. They are held out only if
the checkpoint was not trained on that dataset: render a separate one for evaluation (e.g. ``puppet
synth --seed 1``, whose identities and parameters differ). The report says ``held_out: false``
when the checkpoint's own training dataset (its ``extra["dataset"]``) is given, and null when the
checkpoint does not say.

Each sample's parameters (identity, expression, pose, portrait camera) are rendered by the neural
engine (``engines.neural``) at the dataset's size and compared with the dataset's mesh render of
the same parameters, both composited over the same background colour (``EVAL_BACKGROUND``, the
mesh engine's default) with the same integer formula. Figures (per sample, then mean / median):

- **image**: PSNR (dB, 8-bit RGB), SSIM (``ssim``: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03,
  on each RGB channel, averaged) and the IoU of the coverage masks (alpha >= 128).
- **control**: the renders are tracked by puppet's own ``Tracker`` (face mode, no smoothing, the
  renders' field of view given to the solver), identity by identity: ``NEUTRAL_FRAMES`` frames of a
  neutral render (no expression, neck and head at rest, frontal camera) first, then that identity's
  samples. Head rotation error (degrees; median of |yaw|, |pitch|, |roll| differences and of the
  geodesic angle) of the reading relative to the neutral reading (as ``puppet.closed_loop`` and
  the retargeter calibrate) against the true head rotation seen from the sample's camera,
  ``orbit_rotation(camera)^T @ head_rotation(pose)`` (the orbit camera turns the world by the
  inverse of its rotation in the image). Expression errors: mean absolute difference of jawOpen,
  eyeBlink (mean of left and right) and smile (mean of mouthSmileLeft/Right) against the labels,
  with the built-in solver and, when ``face_landmarker.task`` is found, MediaPipe's blendshapes.
  ``face_rate``: the share of samples where a face was found. The same figures for the mesh renders
  themselves are the floor of what the tracker can measure ("mesh" column).
- **identity stability**: for up to ``stability_identities`` identities, the neutral expression is
  rendered under ``STABILITY_VIEWS`` (camera turns and head turns); per render, the mean colour of
  the fully covered pixels (alpha 255). ``within``: RMS over identities of the colour's spread
  across views (std, 8-bit units, channel stds combined as a vector norm); ``between``: the same
  spread of the per-identity mean colours across identities; ``ratio`` = within / between (lower
  = an identity's look holds better across poses, relative to how much identities differ). The
  mesh column gives the values of the ground-truth renderer, which changes colour with view
  only through lighting and what part of the body is visible. A generator that draws every
  identity alike in every view has a small within-spread too, so read the ratio with
  ``colour_error``: the RMS distance (8-bit) between the neural and the mesh render's mean colour,
  over identities and views (does the identity keep looking like its mesh self in every view).

``untrained``: the same figures for a freshly initialised generator of the checkpoint's config
(``torch.manual_seed(seed)``), the baseline a trained generator must beat.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from puppet.errors import InputError, PuppetError

log = logging.getLogger(__name__)

EVAL_FORMAT = "puppet.eval"
EVAL_VERSION = 1
EVAL_BACKGROUND = (0.34, 0.40, 0.47)
NEUTRAL_FRAMES = 30  # one second: the face solver's identity warm-up (identity_warmup_s)
FRAME_RATE = 30.0
MASK_THRESHOLD = 128
STABILITY_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0), (0.35, 0.0, 0.0), (-0.35, 0.0, 0.0), (0.0, 0.2, 0.0), (0.0, -0.2, 0.0),
    (0.0, 0.0, 0.35), (0.0, 0.0, -0.35))
"""(camera yaw, camera pitch, head yaw) in radians of the identity-stability renders."""

EXPRESSION_GROUPS: dict[str, tuple[str, ...]] = {
    "jawOpen": ("jawOpen",),
    "eyeBlink": ("eyeBlinkLeft", "eyeBlinkRight"),
    "smile": ("mouthSmileLeft", "mouthSmileRight"),
}


# ----------------------------------------------------------------------------- image metrics

def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian taps ``(size,)`` (SSIM's window is their outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable filtering of ``x (H, W, ...)`` by ``w`` along H and W, 'valid' region only."""
    k = len(w)
    h, wd = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = sum(w[i] * x[i:i + h] for i in range(k))
    return sum(w[i] * rows[:, i:i + wd] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al. 2004) of two images ``(H, W)`` or ``(H, W, C)``: the mean
    of the SSIM map over the window positions that fit inside the image (no padding) and over the
    channels. Gaussian window ``window`` x ``window`` of ``sigma``, constants ``(k1 L)^2``,
    ``(k2 L)^2`` with L = ``data_range``; population (not sample) variances. 1 for identical images."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3) or min(a.shape[:2]) < window:
        raise ValueError(f"ssim needs (H, W) or (H, W, C) images of at least {window} px, got {a.shape}")
    w = gaussian_window(window, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    var_a = _filter_valid(a * a, w) - mu_a * mu_a
    var_b = _filter_valid(b * b, w) - mu_b * mu_b
    cov = _filter_valid(a * b, w) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of one shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range * data_range / mse)


def mask_iou(alpha_a: np.ndarray, alpha_b: np.ndarray, threshold: int = MASK_THRESHOLD) -> float:
    """Intersection over union of two coverage masks (uint8 alpha >= ``threshold``); 1 when both are empty."""
    ma, mb = np.asarray(alpha_a) >= threshold, np.asarray(alpha_b) >= threshold
    union = np.count_nonzero(ma | mb)
    return 1.0 if union == 0 else np.count_nonzero(ma & mb) / union


def over_background(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """A premultiplied RGBA uint8 image over an RGB ``background`` ((3,) or (H, W, 3) uint8) ->
    uint8 (H, W, 3), with the mesh engine's formula (``engines.mesh.composite_over``)."""
    from engines.mesh import composite_over

    return composite_over(rgba, np.asarray(background, dtype=np.uint8))[..., :3]


def covered_mean_colour(image: np.ndarray) -> np.ndarray:
    """Mean RGB of the fully covered pixels (alpha 255) of an RGBA uint8 image, ``(3,)`` (NaN if none)."""
    full = image[..., 3] == 255
    if not full.any():
        return np.full(3, np.nan)
    return image[..., :3][full].astype(np.float64).mean(axis=0)


def identity_spread(colours: np.ndarray) -> dict[str, float]:
    """``colours (identities, views, 3)`` -> within / between / ratio (module docstring)."""
    colours = np.asarray(colours, dtype=np.float64)
    ok = ~np.isnan(colours).any(axis=(1, 2))
    colours = colours[ok]
    if len(colours) == 0:
        return {"within": math.nan, "between": math.nan, "ratio": math.nan, "identities": 0}
    within = float(np.sqrt(np.mean(np.sum(colours.var(axis=1), axis=-1))))
    between = float(np.linalg.norm(colours.mean(axis=1).std(axis=0))) if len(colours) > 1 else math.nan
    ratio = within / between if len(colours) > 1 and between > 0 else math.nan
    return {"within": within, "between": between, "ratio": ratio, "identities": int(len(colours))}


def colour_error(colours: np.ndarray, reference: np.ndarray) -> float:
    """RMS over identities and views of the distance between two renderers' covered mean colours
    ``(identities, views, 3)`` (8-bit units; NaN entries skipped)."""
    d = np.linalg.norm(np.asarray(colours, np.float64) - np.asarray(reference, np.float64), axis=-1)
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d * d))) if len(d) else math.nan


# ----------------------------------------------------------------------------- options and report

@dataclass(frozen=True)
class EvalOptions:
    """One ``puppet eval`` run.

    checkpoint: the generator checkpoint; data: a ``puppet synth`` folder; samples: how many of
    its last samples; untrained: also evaluate a freshly initialised generator (``seed``);
    stability_identities: identities of the stability test; track: measure control accuracy (the
    tracker runs on every render); face_landmarker: MediaPipe's bundle for the blendshape figures
    (None: found automatically when present); device: the neural engine's device.
    """

    checkpoint: Path
    data: Path
    samples: int = 64
    untrained: bool = False
    seed: int = 0
    stability_identities: int = 4
    track: bool = True
    face_landmarker: Path | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "data", Path(self.data))
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.stability_identities < 0:
            raise ValueError(f"stability_identities must be >= 0, got {self.stability_identities}")


@dataclass(frozen=True)
class EvalReport:
    """What ``evaluate`` measured: ``results`` maps "trained" (the checkpoint), "untrained" (when
    asked) and "mesh" (the oracle's own figures) to ``{"image", "control", "identity"}``."""

    checkpoint: str
    checkpoint_extra: dict[str, Any]
    data: str
    held_out: bool | None
    samples: int
    identities: int
    size: int
    render_path: str
    engine: dict[str, Any]
    expression_sources: tuple[str, ...]
    results: dict[str, dict[str, Any]]
    seconds: float
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {"format": EVAL_FORMAT, "version": EVAL_VERSION, **dataclasses.asdict(self)}
        doc["expression_sources"] = list(self.expression_sources)
        return _json_safe(doc)

    def save(self, path: str | Path) -> Path:
        from puppet.errors import OutputError

        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def table(self) -> str:
        models = list(self.results)
        held = {True: "held out", False: "NOT held out (the checkpoint's training data)", None: "held out: unknown"}
        lines = [f"puppet eval: {self.checkpoint} on {self.samples} samples of {self.data} ({held[self.held_out]}), "
                 f"{self.identities} identit{'y' if self.identities == 1 else 'ies'}, {self.size}x{self.size}, {self.render_path} path, "
                 f"{self.engine.get('device')}",
                 "(head errors: medians, degrees; expression: mean absolute error of the weights)",
                 f"{'metric':<36}" + "".join(f"{m:>12}" for m in models)]

        def row(label: str, get: Callable[[dict[str, Any]], Any], fmt: str = "{:.3f}") -> None:
            cells = []
            for m in models:
                try:
                    v = get(self.results[m])
                except (KeyError, TypeError):
                    v = None
                cells.append(f"{'-' if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v):>12}")
            lines.append(f"{label:<36}" + "".join(cells))

        row("PSNR dB (mean)", lambda r: r["image"]["psnr_mean"], "{:.2f}")
        row("PSNR dB (median)", lambda r: r["image"]["psnr_median"], "{:.2f}")
        row("SSIM (mean)", lambda r: r["image"]["ssim_mean"])
        row("mask IoU (mean)", lambda r: r["image"]["mask_iou_mean"])
        for source in self.expression_sources:
            row(f"[{source}] face found", lambda r, s=source: r["control"][s]["face_rate"], "{:.2f}")
            if source == "builtin":
                for axis in ("yaw", "pitch", "roll", "geodesic"):
                    row(f"[{source}] head {axis} error",
                        lambda r, s=source, a=axis: r["control"][s]["head_error_deg"][a], "{:.2f}")
            for name in EXPRESSION_GROUPS:
                row(f"[{source}] {name} MAE", lambda r, s=source, n=name: r["control"][s]["expression_mae"][n])
        row("identity colour within-id (8 bit)", lambda r: r["identity"]["within"], "{:.2f}")
        row("identity colour between-id (8 bit)", lambda r: r["identity"]["between"], "{:.2f}")
        row("identity within / between", lambda r: r["identity"]["ratio"])
        row("identity colour vs mesh (8 bit RMS)", lambda r: r["identity"]["colour_error"], "{:.2f}")
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    """Non-finite floats -> None (strict JSON), numpy scalars -> Python, paths -> str."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


# ----------------------------------------------------------------------------- samples

def last_samples(dataset, n: int) -> list[dict[str, np.ndarray]]:
    """The last ``n`` samples of a ``SynthDataset`` (fewer if it is smaller), in dataset order,
    reading shards from the end."""
    picked: list[dict[str, np.ndarray]] = []
    for k in reversed(range(dataset.num_shards)):
        shard = dataset.shard(k)
        take = min(n - len(picked), shard.count)
        picked = [shard.sample(j) for j in range(shard.count - take, shard.count)] + picked
        if len(picked) >= n:
            break
    return picked


def neutral_pose(pose: np.ndarray) -> np.ndarray:
    """``pose (6, 3)`` with the neck and head at rest (collars and shoulders kept: the canonical
    arms are not the contract's zero pose)."""
    from puppet.contract import SmplJoint, pose_row

    out = np.array(pose, dtype=np.float32)
    out[pose_row(SmplJoint.NECK)] = 0.0
    out[pose_row(SmplJoint.HEAD)] = 0.0
    return out


def _params(expression: np.ndarray, pose: np.ndarray, camera, t: float = 0.0):
    from puppet.params import AvatarParams

    return AvatarParams(t=t, expression=np.asarray(expression, np.float32), pose=np.asarray(pose, np.float32),
                        camera=np.asarray(camera, np.float32), face_ok=True, body_ok=True)


def _held_out(extra: dict[str, Any], data: Path) -> bool | None:
    trained_on = extra.get("dataset")
    if not trained_on:
        return None
    try:
        return Path(trained_on).resolve() != data.resolve()
    except OSError:
        return None


# ----------------------------------------------------------------------------- control (tracking)

@dataclass(frozen=True)
class _Reading:
    face_ok: bool
    head: np.ndarray  # (3, 3) head rotation read from the pose
    expression: np.ndarray  # (52,)


def _tracking_options(source: str, face_landmarker: Path | None):
    from engines.mesh import MeshEngineOptions
    from puppet.smoothing import SmoothingOptions
    from puppet.tracking import TrackingOptions
    from trackers.face import FaceTrackerOptions
    from trackers.face_solver import FaceSolverOptions

    if source == "builtin":
        face = FaceTrackerOptions(blendshapes="off")
    else:
        face = FaceTrackerOptions(face_landmarker=str(face_landmarker), blendshapes="auto")
    return TrackingOptions(mode="face", parallel=False, face=face,
                           face_solver=FaceSolverOptions(expression_source=source,
                                                         camera_fov_deg=MeshEngineOptions().fov_deg),
                           smoothing=SmoothingOptions(enabled=False))


def track_sequences(sequences: list[tuple[np.ndarray, list[np.ndarray]]], source: str,
                    face_landmarker: Path | None) -> list[tuple[_Reading, list[_Reading]]]:
    """Per identity ``(neutral RGB, [sample RGB...])`` -> ``(neutral reading, [sample readings])``:
    the tracker is reset per identity, sees the neutral render ``NEUTRAL_FRAMES`` times (its
    identity estimate settles), then the samples, 1 / ``FRAME_RATE`` s apart."""
    from puppet.frame import Frame
    from puppet.params import head_rotation
    from puppet.tracking import Tracker

    def reading(tracked) -> _Reading:
        raw = tracked.raw
        return _Reading(face_ok=bool(raw.face_ok), head=head_rotation(raw.pose), expression=np.asarray(raw.expression))

    out = []
    with Tracker(_tracking_options(source, face_landmarker)) as tracker:
        for neutral, images in sequences:
            tracker.reset()
            t, index = 0.0, 0
            last = None
            for _ in range(NEUTRAL_FRAMES):
                last = reading(tracker.process(Frame(np.ascontiguousarray(neutral), t, index)))
                t, index = t + 1.0 / FRAME_RATE, index + 1
            rows = []
            for image in images:
                rows.append(reading(tracker.process(Frame(np.ascontiguousarray(image), t, index))))
                t, index = t + 1.0 / FRAME_RATE, index + 1
            out.append((last, rows))
    return out


def control_metrics(readings: list[tuple[_Reading, list[_Reading]]], samples: list[list[dict[str, np.ndarray]]],
                    head: bool) -> dict[str, Any]:
    """Errors of the readings against the samples' labels (module docstring); ``samples`` grouped
    like ``readings``. ``head``: also the head rotation errors."""
    from engines.mesh import orbit_rotation
    from puppet.contract import Blendshape
    from puppet.params import head_rotation
    from puppet.rotations import matrix_to_quat, quat_angle_between, yaw_pitch_roll

    found, total = 0, 0
    head_err: list[np.ndarray] = []
    geodesic: list[float] = []
    expr_err: dict[str, list[float]] = {k: [] for k in EXPRESSION_GROUPS}
    for (neutral, rows), group in zip(readings, samples):
        for r, s in zip(rows, group):
            total += 1
            if not r.face_ok:
                continue
            found += 1
            for name, units in EXPRESSION_GROUPS.items():
                idx = [int(Blendshape[u]) for u in units]
                expr_err[name].append(abs(float(np.mean(r.expression[idx])) - float(np.mean(s["expression"][idx]))))
            if head and neutral.face_ok:
                calibrated = neutral.head.T @ r.head
                cam = np.asarray(s["camera"], dtype=np.float64)
                truth = orbit_rotation(float(cam[0]), float(cam[1])).T @ head_rotation(s["pose"])
                d = np.degrees(yaw_pitch_roll(calibrated) - yaw_pitch_roll(truth))
                head_err.append(np.abs((d + 180.0) % 360.0 - 180.0))
                geodesic.append(float(np.degrees(quat_angle_between(matrix_to_quat(calibrated), matrix_to_quat(truth)))))
    result: dict[str, Any] = {
        "face_rate": found / total if total else math.nan,
        "expression_mae": {k: float(np.mean(v)) if v else math.nan for k, v in expr_err.items()},
    }
    if head:
        e = np.array(head_err).reshape(-1, 3)
        result["head_error_deg"] = {
            **{axis: float(np.median(e[:, i])) if len(e) else math.nan for i, axis in enumerate(("yaw", "pitch", "roll"))},
            "geodesic": float(np.median(geodesic)) if geodesic else math.nan,
            "geodesic_p90": float(np.percentile(geodesic, 90)) if geodesic else math.nan,
            "frames": len(geodesic)}
    return result


# ----------------------------------------------------------------------------- the run

def _summary(values: list[float]) -> dict[str, float]:
    v = np.array(values, dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else math.nan, "median": float(np.median(v)) if len(v) else math.nan}


def evaluate(options: EvalOptions) -> EvalReport:
    """Run the evaluation of the module docstring; user mistakes raise ``PuppetError`` first."""
    import torch

    from engines.mesh import MeshEngine, MeshEngineOptions
    from engines.neural import NeuralEngine, NeuralEngineOptions, background_array
    from puppet.bench import machine_info
    from puppet.dataset import SynthDataset
    from puppet.expression_bank import default_face_landmarker
    from puppet.generator.checkpoint import load_checkpoint
    from puppet.generator.model import Generator
    from puppet.generator.rig import rig_from_model

    start = time.perf_counter()
    dataset = SynthDataset(options.data)
    if len(dataset) == 0:
        raise InputError(f"{options.data} holds no samples")
    generator, extra = load_checkpoint(options.checkpoint)
    config = generator.config
    size = dataset.size
    background = (*EVAL_BACKGROUND, 1.0)
    bg = background_array(background, size)
    landmarker = None
    if options.track:
        from puppet.assets import find_face_landmarker

        landmarker = (find_face_landmarker(options.face_landmarker) if options.face_landmarker is not None
                      else default_face_landmarker())
    sources = (("builtin", "mediapipe") if landmarker is not None else ("builtin",)) if options.track else ()

    samples = last_samples(dataset, options.samples)
    avatars = dataset.identities
    order: list[int] = []
    groups: dict[int, list[dict[str, np.ndarray]]] = {}
    for s in samples:
        j = int(s["identity"])
        if j not in groups:
            order.append(j)
            groups[j] = []
        groups[j].append(s)
    grouped = [groups[j] for j in order]

    engine_options = NeuralEngineOptions(checkpoint=options.checkpoint, size=size, background=background,
                                         device=options.device)
    try:
        neural = {"trained": NeuralEngine(engine_options, generator=generator, extra=extra)}
        if options.untrained:
            torch.manual_seed(options.seed)
            neural["untrained"] = NeuralEngine(engine_options, generator=Generator(config), extra=extra)
    except ValueError as exc:  # e.g. device "cuda" on a machine without one
        raise PuppetError(str(exc)) from None
    models = [*neural, "mesh"]
    renders: dict[str, dict[int, list[np.ndarray]]] = {m: {} for m in models}  # RGBA per sample
    neutrals: dict[str, dict[int, np.ndarray]] = {m: {} for m in models}
    stability: dict[str, list[list[np.ndarray]]] = {m: [] for m in models}
    stability_ids = set(order[:options.stability_identities])

    from tqdm import tqdm

    bar = tqdm(total=len(samples), unit="sample", desc="evaluating", leave=False,
               disable=None if options.progress else True)
    with MeshEngine(MeshEngineOptions(size=size, background=background)) as mesh:
        for j in order:
            avatar = avatars[j]
            mesh_baked = mesh.bake(avatar)
            rig = rig_from_model(mesh_baked.model, mesh_baked.framing, mesh.options.fov_deg,
                                 config.skin_vertices, config.face_vertices)
            bakes = {m: e.bake(avatar, rig=rig) for m, e in neural.items()}
            base = neutral_pose(groups[j][0]["pose"])
            rest = _params(np.zeros(52), base, (0.0, 0.0))
            draw: dict[str, Callable[[Any], np.ndarray]] = {m: (lambda p, e=e, b=bakes[m]: e.render(b, p).image)
                                                            for m, e in neural.items()}
            draw["mesh"] = lambda p, b=mesh_baked: mesh.render(b, p).image
            for m in models:
                neutrals[m][j] = draw[m](rest)
            for m in neural:
                renders[m][j] = [draw[m](_params(s["expression"], s["pose"], s["camera"])) for s in groups[j]]
            renders["mesh"][j] = [np.concatenate([over_background(s["portrait"], bg), s["portrait"][..., 3:]], -1)
                                  for s in groups[j]]
            if j in stability_ids:
                from puppet.contract import SmplJoint, pose_row

                views = []
                for cam_yaw, cam_pitch, head_yaw in STABILITY_VIEWS:
                    pose = base.copy()
                    pose[pose_row(SmplJoint.HEAD)] = (0.0, head_yaw, 0.0)
                    views.append(_params(np.zeros(52), pose, (cam_yaw, cam_pitch)))
                for m in models:
                    stability[m].append([covered_mean_colour(draw[m](v)) for v in views])
            bar.update(len(groups[j]))
    bar.close()

    results: dict[str, dict[str, Any]] = {}
    for m in models:
        res: dict[str, Any] = {}
        if m in neural:
            p, s_, iou = [], [], []
            for j in order:
                for gen, sample in zip(renders[m][j], groups[j]):
                    target = over_background(sample["portrait"], bg)
                    p.append(psnr(gen[..., :3], target))
                    s_.append(ssim(gen[..., :3], target))
                    iou.append(mask_iou(gen[..., 3], sample["portrait"][..., 3]))
            ps, ss, ii = _summary(p), _summary(s_), _summary(iou)
            res["image"] = {"psnr_mean": ps["mean"], "psnr_median": ps["median"], "ssim_mean": ss["mean"],
                            "ssim_median": ss["median"], "mask_iou_mean": ii["mean"]}
        if sources:
            res["control"] = {}
            sequences = [(neutrals[m][j][..., :3], [r[..., :3] for r in renders[m][j]]) for j in order]
            for source in sources:
                readings = track_sequences(sequences, source, landmarker)
                res["control"][source] = control_metrics(readings, grouped, head=source == "builtin")
        colours = np.array(stability[m], dtype=np.float64).reshape(-1, len(STABILITY_VIEWS), 3)
        res["identity"] = identity_spread(colours)
        if m != "mesh":
            res["identity"]["colour_error"] = colour_error(
                colours, np.array(stability["mesh"], dtype=np.float64).reshape(colours.shape))
        results[m] = res
    info = neural["trained"].info()
    path = neural["trained"].path
    for e in neural.values():
        e.close()
    return EvalReport(
        checkpoint=str(options.checkpoint), checkpoint_extra=extra, data=str(options.data),
        held_out=_held_out(extra, options.data), samples=len(samples), identities=len(order), size=size,
        render_path=path, engine=dataclasses.asdict(info), expression_sources=sources, results=results,
        seconds=time.perf_counter() - start, machine=machine_info())
