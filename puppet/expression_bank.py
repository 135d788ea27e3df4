"""The expression bank: expressions and head/shoulder poses tracked from real footage, for the
synthetic dataset (``puppet.synth``) to draw from.

Every ``step``-th frame of each video is tracked through the real path (``puppet.tracking.Tracker``,
raw solver output, no smoothing); frames with a face become rows. Close-ups are tracked in face
mode (expression, neck and head; collars and shoulders at rest, ``body_ok`` false); a clip whose
face is small in the frame (median face height below ``UPPER_BODY_FACE_FRACTION`` of the frame,
e.g. ``lp_s32.mp4``) is an upper-body clip and is tracked again in full mode, so its rows also
carry tracked collars and shoulders where the body was found. Expressions come from MediaPipe's
blendshape network when ``face_landmarker.task`` is found, else from the built-in solver.

Banks are cached as ``.npz`` (no pickles) in ``$PUPPET_CACHE_DIR/synth/`` (default
``~/.cache/puppet``), keyed by the video list (names and sizes), the step, the expression model
and ``BANK_VERSION``. A bank holds numbers only (no images of the people filmed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from puppet.assets import cache_dir, find_face_landmarker
from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, NUM_POSE_JOINTS
from puppet.errors import AssetError, InputError

log = logging.getLogger(__name__)

BANK_FORMAT = "puppet.expression_bank"
BANK_VERSION = 1
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi")
UPPER_BODY_FACE_FRACTION = 0.42
"""A clip whose median face height (landmark box) is below this fraction of the frame height
shows head and shoulders: it is tracked in full mode (the test clips: upper body 0.17 and 0.36,
close-ups 0.50-0.65)."""

ExpressionModel = Literal["mediapipe", "builtin"]

_REPO = Path(__file__).resolve().parents[1]


def default_media_videos() -> Path:
    """Where the project's test footage lives when it is checked out beside the repo
    (``../shared/media/video``); used only when no folder is given."""
    return _REPO.parent / "shared" / "media" / "video"


def default_face_landmarker() -> Path | None:
    """MediaPipe's ``face_landmarker.task``: ``../shared/assets`` beside the repo, else the usual
    places (``$PUPPET_FACE_LANDMARKER``, the cache dir; ``puppet.assets.find_face_landmarker``)."""
    shared = _REPO.parent / "shared" / "assets" / "face_landmarker.task"
    return shared if shared.is_file() else find_face_landmarker()


def list_videos(folder: Path) -> list[Path]:
    """The video files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


@dataclass(frozen=True, eq=False)
class ExpressionBank:
    """Tracked frames of real footage: M rows.

    expression: (M, 52) float32 contract weights; pose: (M, 6, 3) float32 SMPL joints 12-17
    axis-angle (neck and head always tracked; collars and shoulders tracked where ``body_ok``,
    else at the tracker's rest); body_ok: (M,) bool; video: (M,) int32 index into ``videos``;
    t: (M,) float64 frame time in its video (s). videos: file names; step: every step-th frame
    was tracked; expression_model: "mediapipe" or "builtin".
    """

    expression: np.ndarray
    pose: np.ndarray
    body_ok: np.ndarray
    video: np.ndarray
    t: np.ndarray
    videos: tuple[str, ...]
    step: int
    expression_model: ExpressionModel

    def __post_init__(self) -> None:
        m = len(self.expression)
        if self.expression.shape != (m, NUM_EXPRESSIONS) or self.pose.shape != (m, NUM_POSE_JOINTS, 3):
            raise ValueError(f"bank arrays must be (M, 52) and (M, 6, 3), got {self.expression.shape} "
                             f"{self.pose.shape}")
        for name in ("body_ok", "video", "t"):
            if getattr(self, name).shape != (m,):
                raise ValueError(f"bank {name} must be ({m},), got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.expression)

    @property
    def upper_body_rows(self) -> int:
        return int(self.body_ok.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"expression": self.expression, "pose": self.pose, "body_ok": self.body_ok,
                "video": self.video, "t": self.t}

    def header(self) -> dict:
        return {"format": BANK_FORMAT, "version": BANK_VERSION, "videos": list(self.videos), "step": self.step,
                "expression_model": self.expression_model, "expression_names": list(ARKIT_NAMES)}

    def sha256(self) -> str:
        """A digest of the rows and header: equal digests, equal banks."""
        h = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for name, a in self.arrays().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """What the dataset manifest says about the bank."""
        per_video = np.bincount(self.video, minlength=len(self.videos))
        return {"rows": len(self), "rows_with_body": self.upper_body_rows, "step": self.step,
                "expression_model": self.expression_model,
                "videos": {name: int(n) for name, n in zip(self.videos, per_video)}, "sha256": self.sha256()}


def save_bank(bank: ExpressionBank, path: Path) -> Path:
    """Write ``bank`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    header = np.frombuffer(json.dumps(bank.header(), sort_keys=True).encode(), np.uint8)
    with open(tmp, "wb") as f:
        np.savez(f, header=header, **bank.arrays())
    os.replace(tmp, path)
    return path


def load_bank(path: Path) -> ExpressionBank:
    """Read a bank written by ``save_bank``; ``AssetError`` when it is not one."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise AssetError(f"not an expression bank: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            arrays = {k: data[k] for k in ("expression", "pose", "body_ok", "video", "t")}
        if header.get("format") != BANK_FORMAT or header.get("version") != BANK_VERSION:
            raise ValueError("foreign format or version")
        if header.get("expression_names") != list(ARKIT_NAMES):
            raise ValueError("different expression order")
        return ExpressionBank(videos=tuple(header["videos"]), step=int(header["step"]),
                              expression_model=header["expression_model"], **arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise AssetError(f"not an expression bank: {path} ({exc})") from None


def _tracker_data_digest() -> str:
    """A digest of the trackers' data files (landmark basis, render calibration): when the
    solvers' data change, cached banks are stale."""
    import trackers

    h = hashlib.sha256()
    folder = Path(trackers.__file__).resolve().parent / "data"
    for path in sorted(folder.glob("*")) if folder.is_dir() else ():
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def bank_key(videos: list[Path], step: int, expression_model: str) -> str:
    """Cache key: the videos' names and sizes, the step, the expression model, the upper-body
    threshold, the trackers' data files and the bank version."""
    doc = {"videos": [(p.name, p.stat().st_size) for p in videos], "step": step,
           "expression_model": expression_model, "upper_body": UPPER_BODY_FACE_FRACTION,
           "trackers": _tracker_data_digest(), "version": BANK_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _tracking_options(mode: str, face_landmarker: Path | None):
    from puppet.smoothing import SmoothingOptions
    from puppet.tracking import TrackingOptions
    from trackers.face import FaceTrackerOptions
    from trackers.face_solver import FaceSolverOptions

    face = FaceTrackerOptions(face_landmarker=None if face_landmarker is None else str(face_landmarker),
                              blendshapes="off" if face_landmarker is None else "auto")
    source = "builtin" if face_landmarker is None else "auto"
    return TrackingOptions(mode=mode, face=face, face_solver=FaceSolverOptions(expression_source=source),
                           smoothing=SmoothingOptions(enabled=False))


@dataclass(frozen=True)
class _ClipRows:
    expression: list[np.ndarray]
    pose: list[np.ndarray]
    body_ok: list[bool]
    t: list[float]
    face_fraction: float
    blendshapes: bool


def track_clip(path: Path, mode: str, step: int, face_landmarker: Path | None) -> _ClipRows:
    """Every ``step``-th frame of ``path`` tracked in ``mode``: the frames with a face, and the
    clip's median face height as a fraction of the frame height."""
    from puppet.sources import VideoFileSource
    from puppet.tracking import Tracker

    rows = _ClipRows([], [], [], [], 0.0, False)
    fractions: list[float] = []
    blendshapes = False
    with VideoFileSource(path) as source, Tracker(_tracking_options(mode, face_landmarker)) as tracker:
        for frame in source:
            if frame.index % step:
                continue
            tracked = tracker.process(frame)
            face = tracked.observation.face
            if face is None or not tracked.raw.face_ok:
                continue
            blendshapes = blendshapes or face.blendshapes is not None
            ys = face.landmarks[:, 1]
            fractions.append(float(ys.max() - ys.min()) / frame.size[1])
            rows.expression.append(np.asarray(tracked.raw.expression, np.float32))
            rows.pose.append(np.asarray(tracked.raw.pose, np.float32))
            rows.body_ok.append(bool(tracked.raw.body_ok) and mode == "full")
            rows.t.append(frame.t)
    return _ClipRows(rows.expression, rows.pose, rows.body_ok, rows.t,
                     float(np.median(fractions)) if fractions else 0.0, blendshapes)


def build_bank(videos: list[Path], step: int = 3, face_landmarker: Path | None = None,
               progress: bool = False) -> ExpressionBank:
    """Track ``videos`` into a bank (see the module docstring); a few tens of seconds for the
    project's 14 test clips on 2 cores."""
    from tqdm import tqdm

    expression, pose, body_ok, video, t = [], [], [], [], []
    used_blendshapes = False
    for k, path in enumerate(tqdm(videos, desc="expression bank", unit="video", leave=False,
                                  disable=None if progress else True)):
        clip = track_clip(path, "face", step, face_landmarker)
        if clip.expression and clip.face_fraction < UPPER_BODY_FACE_FRACTION:
            log.info("%s: face %.0f%% of the frame height: upper body, tracked in full mode",
                     path.name, 100 * clip.face_fraction)
            clip = track_clip(path, "full", step, face_landmarker)
        used_blendshapes = used_blendshapes or clip.blendshapes
        expression += clip.expression
        pose += clip.pose
        body_ok += clip.body_ok
        t += clip.t
        video += [k] * len(clip.expression)
        log.info("%s: %d rows (%d with body)", path.name, len(clip.expression), sum(clip.body_ok))
    m = len(expression)
    return ExpressionBank(
        expression=np.stack(expression).astype(np.float32) if m else np.zeros((0, NUM_EXPRESSIONS), np.float32),
        pose=np.stack(pose).astype(np.float32) if m else np.zeros((0, NUM_POSE_JOINTS, 3), np.float32),
        body_ok=np.array(body_ok, bool), video=np.array(video, np.int32), t=np.array(t, np.float64),
        videos=tuple(p.name for p in videos), step=step,
        expression_model="mediapipe" if used_blendshapes else "builtin",
    )


def expression_bank(videos_dir: Path, step: int = 3, face_landmarker: Path | None = None,
                    progress: bool = False, cache: Path | None = None) -> ExpressionBank:
    """The bank of the videos in ``videos_dir``, from the cache or built (and cached).
    ``InputError`` when the folder has no videos."""
    if not Path(videos_dir).is_dir():
        raise InputError(f"no such folder of videos: {videos_dir}")
    videos = list_videos(videos_dir)
    if not videos:
        raise InputError(f"no videos in {videos_dir}")
    model = "builtin" if face_landmarker is None else "mediapipe"
    path = (cache or cache_dir() / "synth") / f"expression-bank-{bank_key(videos, step, model)}.npz"
    if path.is_file():
        try:
            bank = load_bank(path)
            log.info("expression bank: %d rows from %s", len(bank), path)
            return bank
        except AssetError as exc:
            log.warning("%s; building it again", exc)
    bank = build_bank(videos, step, face_landmarker, progress)
    if len(bank) == 0:
        raise InputError(f"no face was found in the videos of {videos_dir}")
    try:
        save_bank(bank, path)
    except OSError as exc:
        log.warning("cannot cache the expression bank at %s: %s", path, exc.strerror or exc)
    return bank
