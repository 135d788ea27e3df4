"""Temporal smoothing of driving parameters: One Euro filters on vectors and on SO(3), outlier
rejection, and hold-then-ease when the tracker loses the person.

Why: held still, MediaPipe's estimates jitter by about a degree of head rotation and a few
hundredths of a blendshape weight per frame, and the avatar shimmers. A fixed low-pass trades that
for lag on every move. The One Euro filter (Casiez, Roussel, Vogel, CHI 2012) adapts its cutoff to
the signal's speed, ``cutoff = min_cutoff + beta * |speed|``: stills are smoothed hard, fast moves
pass with about a frame of lag. Time comes from the real timestamps (variable frame rate works);
a sample whose timestamp does not advance is ignored and the last output returned.

Defaults (``SmoothingOptions()``), measured at 30 fps by ``tests/test_smoothing.py``:

=========== ========== ========= ======== ========= ==================================================
field       min_cutoff beta      d_cutoff max_speed what it means for users
=========== ========== ========= ======== ========= ==================================================
expression  0.5 Hz     3 per     1 Hz     off       still face: weight noise of 0.02 cut ~7x; a 0 -> 1
                       (1/s)                        rise in 0.5 s lags under a frame, in 2 s about
                                                    1.5 frames. No outlier gate: a blink really goes
                                                    from 0 to 1 between two frames.
head_pose   0.5 Hz     3 per     1 Hz     15 rad/s  neck, head: 0.75 deg noise cut ~7x; a 90 deg/s turn
                       (rad/s)                      lags under a frame, 15 deg/s under 2. A jump faster
                                                    than 860 deg/s (a pose flip) is dropped unless it
                                                    lasts ``outlier_frames``.
body_pose   0.5 Hz     3         1 Hz     15 rad/s  collars, shoulders: same trade-off as head_pose.
camera      0.5 Hz     3         1 Hz     15 rad/s  avatar camera yaw, pitch (rad): as head_pose.
gaze        0.5 Hz     3         1 Hz     30 rad/s  eye yaw, pitch (rad); saccades are fast, so the gate
                                                    only drops jumps of a radian within a frame.
=========== ========== ========= ======== ========= ==================================================

Lower ``min_cutoff`` for less jitter when still (more lag on slow moves), raise ``beta`` for less
lag on fast moves (more jitter while moving). ``outlier_frames = 3``: an implausible jump that
persists this many frames is a real move (or a re-detection) and the filter snaps to it.
Tracking loss: the last output is held ``hold_s = 0.5`` s after the last good frame, then eased
to neutral over ``ease_s = 1.0`` s (smoothstep). When tracking returns the filter restarts from
the new measurement and the output cross-fades from the eased value to it over
``reacquire_s = 0.2`` s (smoothstep), so the avatar re-acquires within a few frames and never pops.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, SmplJoint, pose_row
from puppet.params import DriverParams
from puppet.rotations import (
    align_hemisphere,
    axis_angle_to_quat,
    normalize_quat,
    quat_angle_between,
    quat_conjugate,
    quat_multiply,
    quat_to_axis_angle,
    slerp,
)

logger = logging.getLogger(__name__)

# Pose rows driven by the face tracker (head rotation) and by the body tracker.
FACE_POSE_ROWS: tuple[int, ...] = (pose_row(SmplJoint.NECK), pose_row(SmplJoint.HEAD))
BODY_POSE_ROWS: tuple[int, ...] = tuple(
    pose_row(j) for j in (SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR,
                          SmplJoint.LEFT_SHOULDER, SmplJoint.RIGHT_SHOULDER))

_IDENTITY_QUAT = np.array([0.0, 0.0, 0.0, 1.0])


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class FilterSettings:
    """One Euro settings of one field.

    min_cutoff: Hz, cutoff when the signal is still; lower = less jitter, more lag on slow moves.
    beta: Hz per (unit/s), how fast the cutoff rises with speed; higher = less lag on fast moves.
    d_cutoff: Hz, cutoff of the speed estimate itself; higher = reacts sooner to a move, but the
        speed (hence the cutoff) is noisier when still.
    max_speed: units/s (rad/s for rotations), outlier gate: a sample that moved faster than this
        since the last accepted one is dropped unless the jump persists; ``inf`` disables the gate.
    """

    min_cutoff: float
    beta: float
    d_cutoff: float = 1.0
    max_speed: float = math.inf

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0 and self.max_speed > 0):
            raise ValueError(f"filter settings need min_cutoff, d_cutoff, max_speed > 0 and beta >= 0: {self}")


@dataclass(frozen=True)
class SmoothingOptions:
    """Settings of ``ParamSmoother``; the defaults are tabled in the module docstring.

    enabled: False passes parameters through untouched (raw output, benchmarking).
    outlier_frames: consecutive implausible but mutually consistent samples after which the jump
        is accepted and the filter reset to it.
    hold_s, ease_s: on tracking loss, hold the last output this long after the last good frame,
        then ease to neutral over ``ease_s`` (seconds).
    reacquire_s: when tracking returns, cross-fade from the shown value to the live one over this.
    """

    enabled: bool = True
    expression: FilterSettings = FilterSettings(min_cutoff=0.5, beta=3.0, d_cutoff=1.0)
    head_pose: FilterSettings = FilterSettings(min_cutoff=0.5, beta=3.0, d_cutoff=1.0, max_speed=15.0)
    body_pose: FilterSettings = FilterSettings(min_cutoff=0.5, beta=3.0, d_cutoff=1.0, max_speed=15.0)
    camera: FilterSettings = FilterSettings(min_cutoff=0.5, beta=3.0, d_cutoff=1.0, max_speed=15.0)
    gaze: FilterSettings = FilterSettings(min_cutoff=0.5, beta=3.0, d_cutoff=1.0, max_speed=30.0)
    outlier_frames: int = 3
    hold_s: float = 0.5
    ease_s: float = 1.0
    reacquire_s: float = 0.2

    def __post_init__(self) -> None:
        if self.outlier_frames < 1:
            raise ValueError(f"outlier_frames must be >= 1, got {self.outlier_frames}")
        if self.hold_s < 0 or self.ease_s < 0 or self.reacquire_s < 0:
            raise ValueError("hold_s, ease_s and reacquire_s must be >= 0")


# --------------------------------------------------------------------------------------------
# Pure math


def one_euro_alpha(cutoff: np.ndarray | float, dt: np.ndarray | float) -> np.ndarray:
    """Smoothing factor of a first-order low-pass with ``cutoff`` (Hz) sampled ``dt`` (s) apart.

    ``alpha = r / (1 + r)`` with ``r = 2 pi cutoff dt`` (the paper's ``1 / (1 + tau / dt)``,
    written so that ``dt = 0`` gives 0 rather than a division by zero). Broadcasts; in [0, 1).
    """
    r = 2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * np.asarray(dt, dtype=np.float64)
    return r / (1.0 + r)


def one_euro_step(x: np.ndarray, x_hat: np.ndarray, dx_hat: np.ndarray, dt: np.ndarray | float,
                  settings: FilterSettings) -> tuple[np.ndarray, np.ndarray]:
    """One step of the One Euro filter, element-wise.

    x, x_hat, dx_hat: (...) new sample, previous output, previous filtered speed (units/s).
    dt: seconds since the previous sample, > 0, broadcastable to ``x``.
    The speed is measured from the previous *output* as in the paper's algorithm, so during a move
    it includes the filter's own lag and opens the cutoff sooner. Returns ``(x_hat, dx_hat)``.
    """
    dx = (x - x_hat) / dt
    dx_hat = dx_hat + one_euro_alpha(settings.d_cutoff, dt) * (dx - dx_hat)
    cutoff = settings.min_cutoff + settings.beta * np.abs(dx_hat)
    return x_hat + one_euro_alpha(cutoff, dt) * (x - x_hat), dx_hat


def so3_one_euro_step(q: np.ndarray, q_hat: np.ndarray, w_hat: np.ndarray, dt: np.ndarray | float,
                      settings: FilterSettings) -> tuple[np.ndarray, np.ndarray]:
    """One step of the One Euro filter on rotations.

    q, q_hat: (..., 4) xyzw new sample and previous output; w_hat: (..., 3) previous filtered
    angular velocity (rad/s, in the frame of ``q_hat``); dt: (...) or scalar seconds, > 0.
    The angular velocity is the rotation vector from ``q_hat`` to ``q`` over ``dt``; it is
    low-passed as a vector (noise averages out, unlike its norm), its norm drives the cutoff, and
    the output moves toward ``q`` by slerp, so it is a unit quaternion whatever the input's sign.
    Returns ``(q_hat, w_hat)``.
    """
    q_hat = normalize_quat(q_hat)
    q = align_hemisphere(normalize_quat(q), q_hat)
    dt = np.asarray(dt, dtype=np.float64)
    dt3 = dt[..., None] if dt.ndim else dt
    w = quat_to_axis_angle(quat_multiply(quat_conjugate(q_hat), q)) / dt3
    w_hat = w_hat + one_euro_alpha(settings.d_cutoff, dt3) * (w - w_hat)
    cutoff = settings.min_cutoff + settings.beta * np.sqrt(np.add.reduce(w_hat * w_hat, axis=-1))  # |w_hat|
    alpha = np.broadcast_to(one_euro_alpha(cutoff, dt), q.shape[:-1])
    return slerp(q_hat, q, alpha), w_hat


def smoothstep(u: np.ndarray | float) -> np.ndarray:
    """``3u^2 - 2u^3`` on ``u`` clipped to [0, 1]: starts and ends with zero velocity."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def loss_weight(since_last_good: float, hold_s: float, ease_s: float) -> float:
    """Weight of neutral in the output ``since_last_good`` seconds after the last good frame:
    0 while holding, a smoothstep from 0 to 1 during the ease, 1 afterwards."""
    if ease_s <= 0:
        return 1.0 if since_last_good > hold_s else 0.0
    return float(smoothstep((since_last_good - hold_s) / ease_s))


def lerp(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """``a + w (b - a)``: the blend of vector fields."""
    return a + w * (b - a)


def abs_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``|a - b|``: the outlier distance of vector fields. (...), (...) -> (...)."""
    return np.abs(a - b)


# --------------------------------------------------------------------------------------------
# State


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Broadcast a per-element mask ``(...)`` over the trailing value axes of ``like``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


class OutlierGate:
    """Per-element plausibility gate in front of a filter.

    A sample is implausible when its distance to the last *accepted* sample exceeds ``max_speed``
    times the interval since the previous sample. Measuring from the last accepted sample rather
    than from the filter output keeps the filter's own lag out of the test, so ``max_speed`` is a
    real speed of the person; using the frame interval (not the time since the last accepted
    sample) keeps a persisting jump suspect until it has lasted ``persist_frames``, when it is
    accepted and flagged so the filter can snap to it instead of sliding. A suspect sample
    extends the run when it agrees with the previous suspect one (within ``max_speed`` over the
    interval) and starts a new run otherwise. Non-finite samples are treated as missing.
    """

    def __init__(self, max_speed: float, persist_frames: int,
                 distance: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.max_speed = max_speed  # units/s
        self.persist_frames = persist_frames
        self.distance = distance  # (..., *value), (..., *value) -> (...)
        self._ref: np.ndarray | None = None  # last accepted sample, per element
        self._candidate: np.ndarray | None = None  # previous suspect sample, where count > 0
        self._count = np.zeros(0, int)  # length of the current run of suspect samples
        self._t_prev = 0.0

    def reset(self, x: np.ndarray, t: float) -> None:
        """Trust ``x`` at time ``t`` and forget any pending jump."""
        self._ref = x.copy()
        self._candidate = x.copy()
        self._count = np.zeros(self.distance(x, x).shape, int)
        self._t_prev = float(t)

    def check(self, x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Judge sample ``x`` at time ``t`` (after the previous one). Returns boolean masks over
        elements ``(accepted, persisted)``; ``persisted`` elements are also ``accepted``."""
        if self._ref is None:
            raise RuntimeError("OutlierGate.check before reset")
        allowance = self.max_speed * (t - self._t_prev)
        self._t_prev = float(t)
        jump = self.distance(x, self._ref)
        finite = np.isfinite(jump)
        suspect = finite & ~(jump <= allowance)
        if not suspect.any():  # the common case: what the general path below gives, for less
            self._count = np.zeros(suspect.shape, int)
            self._ref = np.where(_expand(finite, x), x, self._ref)
            return finite, suspect
        consistent = (self._count > 0) & (self.distance(x, self._candidate) <= allowance)
        self._count = np.where(suspect, np.where(consistent, self._count + 1, 1), 0)
        self._candidate = np.where(_expand(suspect, x), x, self._candidate)
        persisted = suspect & (self._count >= self.persist_frames)
        accepted = (finite & ~suspect) | persisted
        if np.any(persisted):
            logger.debug("t=%.3f: a jump persisted %d frames, accepted", t, self.persist_frames)
        self._count = np.where(persisted, 0, self._count)
        self._ref = np.where(_expand(accepted, x), x, self._ref)
        return accepted, persisted


class _GatedOneEuro:
    """Shared bookkeeping of the vector and rotation filters: first sample, timestamps, gate."""

    def __init__(self, settings: FilterSettings, outlier_frames: int,
                 distance: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.settings = settings
        self._gate = OutlierGate(settings.max_speed, outlier_frames, distance)
        self._value: np.ndarray | None = None  # filtered output
        self._speed: np.ndarray | None = None  # filtered speed state
        self._t_accepted = np.zeros(0)  # per element: time of its last accepted sample
        self._t_last: float | None = None  # time of the last sample seen

    @property
    def value(self) -> np.ndarray | None:
        """The current output, or None before the first sample."""
        return None if self._value is None else self._value.copy()

    def reset(self, x: np.ndarray | None = None, t: float | None = None) -> None:
        """Forget everything, or restart from sample ``x`` taken at ``t`` (output = ``x``)."""
        if x is None:
            self._value = self._speed = self._t_last = None
            return
        if t is None:
            raise ValueError("reset to a value needs its timestamp")
        x = self._prepare(x)
        self._value = x.copy()
        self._speed = self._zero_speed(x)
        self._gate.reset(x, t)
        self._t_accepted = np.full(self._gate.distance(x, x).shape, float(t))
        self._t_last = float(t)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds) and return the new output."""
        t = float(t)
        if self._value is None:
            self.reset(x, t)
            return self._value.copy()
        x = self._prepare(x)
        if x.shape != self._value.shape:
            raise ValueError(f"sample shape {x.shape} differs from the filter's {self._value.shape}")
        if not t > self._t_last:
            logger.debug("t=%.6f does not advance past %.6f: sample ignored", t, self._t_last)
            return self._value.copy()
        self._t_last = t
        accepted, persisted = self._gate.check(x, t)
        dt = np.maximum(t - self._t_accepted, 1e-9)  # > 0 since t > every accepted time
        if accepted.all() and not persisted.any():  # the common case, as the general path below
            self._value, self._speed = self._step(x, dt)
            self._t_accepted = np.full(self._t_accepted.shape, t)
            return self._value.copy()
        value, speed = self._step(np.where(_expand(accepted, x), x, self._value), dt)
        keep_value, keep_speed = _expand(accepted, value), _expand(accepted, speed)
        self._value = np.where(keep_value, value, self._value)
        self._speed = np.where(keep_speed, speed, self._speed)
        self._value = np.where(_expand(persisted, x), x, self._value)
        self._speed = np.where(_expand(persisted, speed), 0.0, self._speed)
        self._t_accepted = np.where(accepted, t, self._t_accepted)
        return self._value.copy()

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _zero_speed(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step(self, x: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class OneEuroFilter(_GatedOneEuro):
    """Causal One Euro filter of a scalar or an array of any shape, per element.

    ``f(x, t)`` takes a sample ``x: (...)`` and its timestamp in seconds and returns the filtered
    ``(...)`` float64 array (0-d for a scalar). The first sample passes through unchanged.
    """

    def __init__(self, settings: FilterSettings, outlier_frames: int = 3) -> None:
        super().__init__(settings, outlier_frames, abs_distance)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64)

    def _zero_speed(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def _step(self, x: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return one_euro_step(x, self._value, self._speed, dt, self.settings)


class RotationOneEuroFilter(_GatedOneEuro):
    """One Euro filter on SO(3) for a batch of rotations, each with its own speed.

    ``f(q, t)`` takes unit quaternions ``q: (..., 4)`` xyzw (sign free: ``q`` and ``-q`` are
    the same rotation) and returns filtered unit quaternions ``(..., 4)`` in the hemisphere of the
    previous output. ``settings`` speeds are in rad/s. Convert SMPL axis-angle ``(6, 3)`` with
    ``puppet.rotations.axis_angle_to_quat`` first.
    """

    def __init__(self, settings: FilterSettings, outlier_frames: int = 3) -> None:
        super().__init__(settings, outlier_frames, quat_angle_between)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = normalize_quat(x)
        if x.shape[-1:] != (4,):
            raise ValueError(f"rotations must be (..., 4) quaternions, got {x.shape}")
        return x if self._value is None else align_hemisphere(x, self._value)

    def _zero_speed(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(x.shape[:-1] + (3,))

    def _step(self, x: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return so3_one_euro_step(x, self._value, self._speed, dt, self.settings)


class TrackedChannel:
    """One field group following one tracker flag: filter while tracked, hold then ease to
    neutral while lost, cross-fade back when tracking returns.

    On recovery the filter restarts from the new measurement (so it neither lags behind the
    person nor drags stale speed along) and the output cross-fades from what was last shown to
    the filter's output over ``reacquire_s`` with a smoothstep: no pop, and the person is
    re-acquired in a few frames. Before the first tracked frame the output is ``neutral``; the
    first tracked frame is shown as is (nothing was shown before it).

    blend(a, b, w): the value ``w`` of the way from ``a`` to ``b`` (lerp, or slerp for rotations).
    """

    def __init__(self, filt: OneEuroFilter | RotationOneEuroFilter, neutral: np.ndarray,
                 blend: Callable[[np.ndarray, np.ndarray, float], np.ndarray],
                 options: SmoothingOptions) -> None:
        self.filter = filt
        self.neutral = np.asarray(neutral, dtype=np.float64)
        self.blend = blend
        self.options = options
        self.reset()

    def reset(self) -> None:
        self.filter.reset()
        self._output = self.neutral.copy()
        self._t_last: float | None = None
        self._t_last_good: float | None = None
        self._lost = True  # nothing tracked yet
        self._held = self.neutral.copy()
        self._fade_from: np.ndarray | None = None
        self._t_fade_start = 0.0

    def update(self, value: np.ndarray | None, t: float, ok: bool) -> np.ndarray:
        """Feed this frame's raw ``value`` (ignored when not ``ok``, may then be None) at time
        ``t``; return the smoothed value to show."""
        t = float(t)
        if self._t_last is not None and not t > self._t_last:
            return self._output.copy()
        if ok:
            self._output = self._tracked(value, t)
            self._t_last_good = t
        else:
            self._output = self._untracked(t)
        self._t_last = t
        return self._output.copy()

    def _tracked(self, value: np.ndarray, t: float) -> np.ndarray:
        if self._lost:
            self._lost = False
            self.filter.reset(value, t)
            if self._t_last is None:
                return self.filter.value  # very first frame: nothing shown yet to fade from
            self._fade_from = self._output.copy()
            self._t_fade_start = self._t_last if self._t_last is not None else t
            live = self.filter.value
        else:
            live = self.filter(value, t)
        if self._fade_from is None:
            return live
        w = 1.0 if self.options.reacquire_s <= 0 else float(
            smoothstep((t - self._t_fade_start) / self.options.reacquire_s))
        if w >= 1.0:
            self._fade_from = None
            return live
        return self.blend(self._fade_from, live, w)

    def _untracked(self, t: float) -> np.ndarray:
        if not self._lost:
            self._lost = True
            self._held = self._output.copy()
            self._fade_from = None
            logger.debug("t=%.3f: tracking lost, holding", t)
        if self._t_last_good is None:
            return self.neutral.copy()
        w = loss_weight(t - self._t_last_good, self.options.hold_s, self.options.ease_s)
        return self.blend(self._held, self.neutral, w)


def _vector_channel(settings: FilterSettings, shape: tuple[int, ...], options: SmoothingOptions) -> TrackedChannel:
    return TrackedChannel(OneEuroFilter(settings, options.outlier_frames), np.zeros(shape), lerp, options)


def _rotation_channel(settings: FilterSettings, n: int, options: SmoothingOptions) -> TrackedChannel:
    return TrackedChannel(RotationOneEuroFilter(settings, options.outlier_frames),
                          np.tile(_IDENTITY_QUAT, (n, 1)), slerp, options)


class _AxisAngleCache:
    """``quat_to_axis_angle`` that reuses its last result while the input is bit-identical: an
    untracked channel shows the same rotations frame after frame (the body in face-only mode)."""

    def __init__(self) -> None:
        self._key: tuple[tuple[int, ...], bytes] | None = None
        self._value = np.zeros((0, 3))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        key = (q.shape, q.tobytes())
        if key != self._key:
            self._key, self._value = key, quat_to_axis_angle(q)
        return self._value


class ParamSmoother:
    """Smooths a stream of ``DriverParams`` field by field.

    expression (clipped to [0, 1]), gaze and the neck/head pose rows follow ``face_ok``; the
    collar/shoulder rows and the camera follow ``body_ok``. Each group is a ``TrackedChannel``.
    ``process`` returns a new ``DriverParams`` with the same ``t``, ``shape`` and flags.
    """

    def __init__(self, options: SmoothingOptions = SmoothingOptions()) -> None:
        self.options = options
        self._expression = _vector_channel(options.expression, (NUM_EXPRESSIONS,), options)
        self._gaze = _vector_channel(options.gaze, (2, 2), options)
        self._camera = _vector_channel(options.camera, (2,), options)
        self._head = _rotation_channel(options.head_pose, len(FACE_POSE_ROWS), options)
        self._body = _rotation_channel(options.body_pose, len(BODY_POSE_ROWS), options)
        self._head_axis_angle, self._body_axis_angle = _AxisAngleCache(), _AxisAngleCache()

    def reset(self) -> None:
        """Forget the stream: the next frame starts afresh."""
        for channel in (self._expression, self._gaze, self._camera, self._head, self._body):
            channel.reset()

    def process(self, params: DriverParams) -> DriverParams:
        """Smooth one frame; frames must come in increasing ``t`` (a repeated ``t`` returns the
        previous values)."""
        if not self.options.enabled:
            return params
        pose = np.asarray(params.pose, dtype=np.float64)
        if pose.shape != (NUM_POSE_JOINTS, 3):
            raise ValueError(f"pose must be ({NUM_POSE_JOINTS}, 3), got {pose.shape}")
        t, face, body = params.t, params.face_ok, params.body_ok
        out_pose = np.zeros((NUM_POSE_JOINTS, 3))
        # Rows are converted only for a channel that reads them (an untracked one ignores its value).
        head_rows, body_rows = list(FACE_POSE_ROWS), list(BODY_POSE_ROWS)
        head_in = axis_angle_to_quat(pose[head_rows]) if face else None
        body_in = axis_angle_to_quat(pose[body_rows]) if body else None
        out_pose[head_rows] = self._head_axis_angle(self._head.update(head_in, t, face))
        out_pose[body_rows] = self._body_axis_angle(self._body.update(body_in, t, body))
        return params.replace(
            expression=np.clip(self._expression.update(params.expression, t, face), 0.0, 1.0),
            pose=out_pose,
            camera=self._camera.update(params.camera, t, body),
            gaze=self._gaze.update(params.gaze, t, face),
        )
