"""The parameter contract of DESIGN.md: one frame of driving parameters, and sequences of them
saved as ``.npz`` (one array per field, leading axis = frame) with a JSON header inside."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from puppet.contract import ARKIT_NAMES, NUM_EXPRESSIONS, NUM_POSE_JOINTS, POSE_JOINTS
from puppet.errors import InputError, OutputError

FORMAT_NAME = "puppet.params"
FORMAT_VERSION = 1

# field -> (shape per frame without the shape-dependent k, dtype)
_ARRAY_FIELDS: dict[str, tuple[tuple[int, ...] | None, Any]] = {
    "t": ((), np.float64),
    "expression": ((NUM_EXPRESSIONS,), np.float32),
    "pose": ((NUM_POSE_JOINTS, 3), np.float32),
    "camera": ((2,), np.float32),
    "gaze": ((2, 2), np.float32),
    "shape": (None, np.float32),  # (k,), k chosen by the solver
    "face_ok": ((), np.bool_),
    "body_ok": ((), np.bool_),
}
FIELD_NAMES: tuple[str, ...] = tuple(_ARRAY_FIELDS)


@dataclass(frozen=True)
class DriverParams:
    """One frame of driving parameters, as the solvers and smoother produce them.

    expression: float32[52] ARKit weights in [0, 1] (``puppet.contract.ARKIT_NAMES`` order).
    pose: float32[6, 3] axis-angle of SMPL joints 12-17, parent-relative, Y up, +Z forward.
    camera: float32[2] yaw, pitch (radians) of the avatar camera around the head.
    gaze: float32[2, 2] per-eye (left, right) yaw, pitch in radians.
    shape: float32[k] the driver's identity coefficients (recorded, not transferred by default).
    """

    t: float
    expression: np.ndarray
    pose: np.ndarray
    camera: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))
    gaze: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.float32))
    shape: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    face_ok: bool = False
    body_ok: bool = False

    def __post_init__(self) -> None:
        for name, (shape, dtype) in _ARRAY_FIELDS.items():
            if name in ("t", "face_ok", "body_ok"):
                continue
            value = np.asarray(getattr(self, name), dtype=dtype)
            if shape is not None and value.shape != shape:
                raise ValueError(f"DriverParams.{name} must have shape {shape}, got {value.shape}")
            if shape is None and value.ndim != 1:
                raise ValueError(f"DriverParams.{name} must be 1-D, got {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "t", float(self.t))
        object.__setattr__(self, "face_ok", bool(self.face_ok))
        object.__setattr__(self, "body_ok", bool(self.body_ok))

    @classmethod
    def neutral(cls, t: float = 0.0, shape_dim: int = 0) -> "DriverParams":
        """Rest pose, no expression, frontal camera, both trackers marked as lost."""
        return cls(
            t=t,
            expression=np.zeros(NUM_EXPRESSIONS, np.float32),
            pose=np.zeros((NUM_POSE_JOINTS, 3), np.float32),
            shape=np.zeros(shape_dim, np.float32),
        )

    def replace(self, **changes: Any) -> "DriverParams":
        return dataclasses.replace(self, **changes)


class AvatarParams(DriverParams):
    """Parameters after retargeting onto an avatar: same fields as ``DriverParams``."""


@dataclass(frozen=True)
class ParamSequence:
    """Frames of parameters stacked along a leading axis, plus the file header."""

    arrays: dict[str, np.ndarray]
    header: dict[str, Any]

    def __post_init__(self) -> None:
        missing = [n for n in FIELD_NAMES if n not in self.arrays]
        if missing:
            raise ValueError(f"parameter sequence lacks fields {missing}")
        n = len(self.arrays["t"])
        for name in FIELD_NAMES:
            shape, _ = _ARRAY_FIELDS[name]
            a = self.arrays[name]
            if a.shape[0] != n:
                raise ValueError(f"field {name!r} has {a.shape[0]} frames, 't' has {n}")
            if shape is not None and a.shape[1:] != shape:
                raise ValueError(f"field {name!r} has per-frame shape {a.shape[1:]}, expected {shape}")

    def __len__(self) -> int:
        return len(self.arrays["t"])

    def __getitem__(self, i: int) -> DriverParams:
        return DriverParams(**{n: self.arrays[n][i] for n in FIELD_NAMES})

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def fps(self) -> float:
        return float(self.header.get("fps", 0.0))

    @classmethod
    def from_frames(cls, frames: Sequence[DriverParams], header: dict[str, Any] | None = None) -> "ParamSequence":
        header = dict(header or {})
        if frames:
            arrays = {n: np.stack([np.asarray(getattr(f, n)) for f in frames]).astype(_ARRAY_FIELDS[n][1])
                      for n in FIELD_NAMES}
        else:
            arrays = {}
            for n, (shape, dtype) in _ARRAY_FIELDS.items():
                arrays[n] = np.zeros((0,) + (shape if shape is not None else (0,)), dtype)
        return cls(arrays=arrays, header=header)


def make_header(fps: float, source: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON header written into every parameter file."""
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fps": float(fps),
        "source": str(source),
        "fields": list(FIELD_NAMES),
        "expression_names": list(ARKIT_NAMES),
        "pose_joints": {int(j): j.name.lower() for j in POSE_JOINTS},
        "tool_versions": tool_versions(),
    }
    header.update(extra or {})
    return header


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for dist in ("puppet", "mediapipe", "numpy", "av", "anny", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def save_params(path: str | os.PathLike, seq: ParamSequence) -> Path:
    """Write ``seq`` atomically (temp file, then rename) so a crash never leaves half a file."""
    path = Path(path)
    if path.suffix != ".npz":
        raise OutputError(f"parameter files end in .npz: {path}")
    header_bytes = np.frombuffer(json.dumps(seq.header, sort_keys=True).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".partial.npz")
    try:
        np.savez_compressed(tmp, header=header_bytes, **seq.arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def load_params(path: str | os.PathLike) -> ParamSequence:
    """Read a parameter file written by ``save_params`` (never unpickles anything)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such parameter file: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"not a puppet parameter file: {path} (not an .npz archive, or truncated)")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            arrays = {n: data[n] for n in FIELD_NAMES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"not a puppet parameter file: {path} ({exc})") from None
    if header.get("format") != FORMAT_NAME:
        raise InputError(f"not a puppet parameter file: {path}")
    if int(header.get("version", -1)) > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer puppet (format {header['version']})")
    if header.get("expression_names") != list(ARKIT_NAMES):
        raise InputError(f"{path} uses a different expression order than this puppet")
    try:
        return ParamSequence(arrays=arrays, header=header)
    except ValueError as exc:
        raise InputError(f"corrupt parameter file {path}: {exc}") from None


def head_rotation(pose: np.ndarray) -> np.ndarray:
    """The head's rotation relative to the torso, neck then head. ``(..., 6, 3) -> (..., 3, 3)``."""
    from puppet.contract import SmplJoint, pose_row
    from puppet.rotations import axis_angle_to_matrix

    pose = np.asarray(pose, dtype=np.float64)
    return (axis_angle_to_matrix(pose[..., pose_row(SmplJoint.NECK), :])
            @ axis_angle_to_matrix(pose[..., pose_row(SmplJoint.HEAD), :]))
