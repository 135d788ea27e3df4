"""Figures of merit for smoothed parameter streams: frame-to-frame jitter, lag, step response.

Pure functions over arrays with a leading frame axis, so the same code scores synthetic signals in
the tests and real videos (smoothed against raw tracker output) in benchmarks. Rotations are
quaternions ``(..., 4)`` xyzw, as in ``puppet.rotations``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from puppet.rotations import quat_angle_between, slerp


def jitter_rms(values: np.ndarray) -> float:
    """RMS of the frame-to-frame change, over frames and elements.

    values: (T, ...) with T >= 2; every element counts alike, so for an expression stream this is
    the typical per-blendshape change between consecutive frames (in weight units).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"jitter needs at least 2 frames, got {values.shape[0]}")
    return float(np.sqrt(np.mean(np.diff(values, axis=0) ** 2)))


def rotation_jitter_rms(quats: np.ndarray) -> float:
    """RMS geodesic angle (radians) between consecutive frames, over frames and joints.

    quats: (T, ..., 4) xyzw with T >= 2; ``q`` and ``-q`` count as the same rotation.
    """
    quats = np.asarray(quats, dtype=np.float64)
    if quats.shape[0] < 2 or quats.shape[-1] != 4:
        raise ValueError(f"rotation jitter needs (T>=2, ..., 4) quaternions, got {quats.shape}")
    angles = quat_angle_between(quats[1:], quats[:-1])
    return float(np.sqrt(np.mean(angles**2)))


def _delay_grid(max_lag: float, resolution: float) -> np.ndarray:
    if max_lag <= 0 or resolution <= 0:
        raise ValueError("max_lag and resolution must be positive")
    return np.arange(0.0, max_lag + 0.5 * resolution, resolution)


def _delayed_index(n_frames: int, delay: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``i0, i1`` and weight ``f`` such that frame ``n - delay`` lies between them (clamped)."""
    pos = np.clip(np.arange(n_frames) - delay, 0.0, n_frames - 1.0)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_frames - 1)
    return i0, i1, pos - i0


def lag_frames(reference: np.ndarray, output: np.ndarray, max_lag: float = 10.0,
               resolution: float = 0.05) -> float:
    """The delay, in frames, that best aligns ``output`` to ``reference``.

    Lag is the ``tau`` in ``[0, max_lag]`` minimising ``RMS_n(output[n] - reference(n - tau))``,
    with ``reference`` interpolated linearly between frames (and held at its first frame before the
    start). For a ramp this is the steady-state offset divided by the slope; for a real video,
    pass the raw tracker stream as reference and the smoothed one as output.

    reference, output: (T, ...) of equal shape. Returns frames, to within ``resolution``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if reference.shape != output.shape or reference.shape[0] < 2:
        raise ValueError(f"lag needs two (T>=2, ...) arrays of one shape, got {reference.shape}, {output.shape}")
    n = reference.shape[0]
    ref = reference.reshape(n, -1)
    out = output.reshape(n, -1)
    errors = []
    for delay in _delay_grid(max_lag, resolution):
        i0, i1, f = _delayed_index(n, delay)
        delayed = ref[i0] * (1.0 - f)[:, None] + ref[i1] * f[:, None]
        errors.append(np.mean((out - delayed) ** 2))
    return float(_delay_grid(max_lag, resolution)[int(np.argmin(errors))])


def rotation_lag_frames(reference: np.ndarray, output: np.ndarray, max_lag: float = 10.0,
                        resolution: float = 0.05) -> float:
    """``lag_frames`` for rotations: the delay minimising the RMS geodesic angle between
    ``output[n]`` and ``reference`` slerped at frame ``n - tau``.

    reference, output: (T, ..., 4) xyzw quaternions of equal shape. Returns frames.
    """
    reference = np.asarray(reference, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if reference.shape != output.shape or reference.shape[0] < 2 or reference.shape[-1] != 4:
        raise ValueError(f"rotation lag needs two (T>=2, ..., 4) arrays, got {reference.shape}, {output.shape}")
    n = reference.shape[0]
    errors = []
    for delay in _delay_grid(max_lag, resolution):
        i0, i1, f = _delayed_index(n, delay)
        f = f.reshape((n,) + (1,) * (reference.ndim - 2))
        delayed = slerp(reference[i0], reference[i1], np.broadcast_to(f, reference.shape[:-1]))
        errors.append(np.mean(quat_angle_between(output, delayed) ** 2))
    return float(_delay_grid(max_lag, resolution)[int(np.argmin(errors))])


@dataclass(frozen=True)
class StepResponse:
    """How a scalar output answers a step of its input at frame ``step_index``.

    half_frames: frames after the step until the output first reaches half the step (0: on the
        step frame itself); ``inf`` if it never does.
    settle_frames: frames after the step until the output enters, and stays within,
        ``tolerance * |step|`` of the final value; ``inf`` if it never settles.
    overshoot: largest excursion beyond the final value, as a fraction of the step (>= 0).
    """

    half_frames: float
    settle_frames: float
    overshoot: float


def step_response(output: np.ndarray, before: float, after: float, step_index: int,
                  tolerance: float = 0.05) -> StepResponse:
    """Score ``output: (T,)`` whose input stepped from ``before`` to ``after`` at ``step_index``."""
    output = np.asarray(output, dtype=np.float64)
    if output.ndim != 1 or not 0 <= step_index < len(output) or after == before:
        raise ValueError("step_response needs a 1-D output, a step index inside it and a non-zero step")
    progress = (output[step_index:] - before) / (after - before)  # 0 before, 1 once there
    reached = np.flatnonzero(progress >= 0.5)
    half = float(reached[0]) if reached.size else math.inf
    outside = np.flatnonzero(np.abs(progress - 1.0) > tolerance)
    if outside.size == 0:
        settle = 0.0
    elif outside[-1] == len(progress) - 1:
        settle = math.inf
    else:
        settle = float(outside[-1] + 1)
    overshoot = float(max(0.0, np.max(progress) - 1.0))
    return StepResponse(half_frames=half, settle_frames=settle, overshoot=overshoot)
