"""Smoothing: One Euro filters, outlier gate, tracking loss, and the measured jitter/lag bars.

Every figure is measured at 30 fps with ``SmoothingOptions()`` defaults on synthetic signals with
fixed seeds. Definitions (see ``puppet.smoothing_metrics``):

- jitter: RMS frame-to-frame change (geodesic angle for rotations) on a still pose with noise;
  smoothing must cut it at least 5x.
- ramp lag: the delay in frames that minimises the RMS difference between output and the
  delayed input, over a window spanning the ramp's start, body and stop; at most 2 frames.
- step lag: frames after the step until the output is half-way (0 = on the step frame); at most
  2. It must also settle within 5 % in at most 6 frames and never overshoot by more than 1 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, Blendshape, SmplJoint, pose_row
from puppet.params import DriverParams
from puppet.rotations import axis_angle_to_quat, quat_angle_between, quat_to_axis_angle
from puppet.smoothing import (
    FilterSettings,
    OneEuroFilter,
    ParamSmoother,
    RotationOneEuroFilter,
    SmoothingOptions,
    loss_weight,
    one_euro_alpha,
    smoothstep,
)
from puppet.smoothing_metrics import (
    jitter_rms,
    lag_frames,
    rotation_jitter_rms,
    rotation_lag_frames,
    step_response,
)

FPS = 30.0
DT = 1.0 / FPS
HEAD = pose_row(SmplJoint.HEAD)
NECK = pose_row(SmplJoint.NECK)
L_SHOULDER = pose_row(SmplJoint.LEFT_SHOULDER)
JAW = int(Blendshape.jawOpen)
DEFAULTS = SmoothingOptions()
YAW_AXIS = np.array([0.0, 1.0, 0.0])


# ------------------------------------------------------------------------------------------------
# Helpers


def _stream(expression: np.ndarray, pose: np.ndarray, t: np.ndarray, face_ok=True, body_ok=True,
            gaze: np.ndarray | None = None, camera: np.ndarray | None = None) -> list[DriverParams]:
    """DriverParams frames from stacked fields: expression (T, 52), pose (T, 6, 3), t (T,)."""
    n = len(t)
    face = np.broadcast_to(face_ok, (n,))
    body = np.broadcast_to(body_ok, (n,))
    gaze = np.zeros((n, 2, 2)) if gaze is None else gaze
    camera = np.zeros((n, 2)) if camera is None else camera
    return [DriverParams(t=t[i], expression=expression[i], pose=pose[i], camera=camera[i], gaze=gaze[i],
                         face_ok=face[i], body_ok=body[i]) for i in range(n)]


def _smooth(frames: list[DriverParams], options: SmoothingOptions = DEFAULTS) -> list[DriverParams]:
    smoother = ParamSmoother(options)
    return [smoother.process(f) for f in frames]


def _field(frames: list[DriverParams], name: str) -> np.ndarray:
    return np.stack([np.asarray(getattr(f, name), dtype=np.float64) for f in frames])


def _head_quats(frames: list[DriverParams]) -> np.ndarray:
    return axis_angle_to_quat(_field(frames, "pose")[:, HEAD])


def _still_with_noise(n: int, seed: int, rot_noise_deg: float = 0.75, expr_noise: float = 0.02):
    """A held pose and face with tracker-like white noise: expression (n, 52), pose (n, 6, 3)."""
    rng = np.random.default_rng(seed)
    expression = rng.uniform(0.2, 0.6, NUM_EXPRESSIONS) + rng.normal(0.0, expr_noise, (n, NUM_EXPRESSIONS))
    base = rng.normal(0.0, 0.2, (NUM_POSE_JOINTS, 3))
    pose = base + np.deg2rad(rot_noise_deg) * rng.normal(size=(n, NUM_POSE_JOINTS, 3))
    return expression, pose


def _flat(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, NUM_EXPRESSIONS), 0.1), np.zeros((n, NUM_POSE_JOINTS, 3))


# ------------------------------------------------------------------------------------------------
# Pure pieces


def test_alpha_is_a_first_order_lowpass_factor():
    assert one_euro_alpha(1.0 / (2 * math.pi), 1.0) == pytest.approx(0.5)
    assert one_euro_alpha(5.0, 0.0) == 0.0  # no time passed: no change, no division by zero
    a = one_euro_alpha(np.array([0.5, 1.0, 10.0]), DT)
    assert np.all(np.diff(a) > 0) and np.all((a > 0) & (a < 1))


def test_smoothstep_and_loss_weight_shapes():
    assert smoothstep(-1.0) == 0.0 and smoothstep(2.0) == 1.0 and smoothstep(0.5) == pytest.approx(0.5)
    assert loss_weight(0.4, hold_s=0.5, ease_s=1.0) == 0.0
    assert loss_weight(1.0, hold_s=0.5, ease_s=1.0) == pytest.approx(0.5)
    assert loss_weight(1.5, hold_s=0.5, ease_s=1.0) == 1.0
    assert loss_weight(0.6, hold_s=0.5, ease_s=0.0) == 1.0


def test_options_reject_nonsense():
    with pytest.raises(ValueError):
        FilterSettings(min_cutoff=0.0, beta=1.0)
    with pytest.raises(ValueError):
        FilterSettings(min_cutoff=1.0, beta=-1.0)
    with pytest.raises(ValueError):
        SmoothingOptions(outlier_frames=0)


def test_metrics_on_known_signals():
    assert jitter_rms(np.array([0.0, 1.0, 0.0, 1.0])) == pytest.approx(1.0)
    q = axis_angle_to_quat(np.deg2rad([[0, 0, 0], [0, 2, 0], [0, 0, 0]]))
    assert rotation_jitter_rms(q) == pytest.approx(np.deg2rad(2.0))
    n = np.arange(120)
    reference = np.sin(2 * np.pi * n / 40.0)
    delayed = np.sin(2 * np.pi * (n - 3.0) / 40.0)
    assert lag_frames(reference[10:], delayed[10:]) == pytest.approx(3.0, abs=0.05)
    ref_q = axis_angle_to_quat(reference[:, None] * YAW_AXIS)
    out_q = axis_angle_to_quat(delayed[:, None] * YAW_AXIS)
    assert rotation_lag_frames(ref_q[10:], out_q[10:]) == pytest.approx(3.0, abs=0.05)
    response = step_response(np.array([0.0, 0.0, 0.3, 0.6, 1.1, 0.99, 1.0]), 0.0, 1.0, step_index=2)
    assert (response.half_frames, response.settle_frames) == (1.0, 3.0)
    assert response.overshoot == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# Filters on their own


def test_scalar_filter_passes_first_sample_and_keeps_constants():
    f = OneEuroFilter(DEFAULTS.expression)
    assert float(f(0.7, 0.0)) == 0.7
    for i in range(1, 30):
        assert float(f(0.7, i * DT)) == pytest.approx(0.7)


def test_vector_filter_any_shape_and_nan_is_missing():
    f = OneEuroFilter(DEFAULTS.gaze)
    first = np.array([[0.1, 0.2], [0.3, 0.4]])
    f(first, 0.0)
    sample = first + 0.05
    sample[0, 1] = np.nan
    out = f(sample, DT)
    assert out.shape == (2, 2) and np.all(np.isfinite(out))
    assert out[0, 1] == first[0, 1]  # a non-finite element is held
    assert np.all(out[[0, 1, 1], [0, 0, 1]] > first[[0, 1, 1], [0, 0, 1]])


def test_rotation_filter_stays_valid_on_wild_input():
    """Large random motion with 180-degree flips and q / -q sign flips, 6 joints at once."""
    rng = np.random.default_rng(7)
    n = 200
    aa = np.cumsum(rng.normal(0.0, 0.4, (n, NUM_POSE_JOINTS, 3)), axis=0)
    aa[50::37] += np.pi * YAW_AXIS  # half-turn flips
    q = axis_angle_to_quat(aa)
    q *= rng.choice([-1.0, 1.0], size=(n, NUM_POSE_JOINTS, 1))
    f = RotationOneEuroFilter(DEFAULTS.head_pose)
    out = np.stack([f(q[i], i * DT) for i in range(n)])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-9)
    back = quat_to_axis_angle(out)
    assert np.all(np.isfinite(back)) and np.all(np.linalg.norm(back, axis=-1) <= math.pi + 1e-9)

    smoothed = _smooth(_stream(np.full((n, NUM_EXPRESSIONS), 0.5), aa, np.arange(n) * DT))
    pose = _field(smoothed, "pose")
    assert np.all(np.isfinite(pose)) and np.all(np.linalg.norm(pose, axis=-1) <= math.pi + 1e-5)


def test_rotation_filter_ignores_quaternion_sign():
    rng = np.random.default_rng(3)
    q = axis_angle_to_quat(np.cumsum(rng.normal(0.0, 0.05, (60, 3)), axis=0))
    signs = rng.choice([-1.0, 1.0], size=(60, 1))
    a, b = RotationOneEuroFilter(DEFAULTS.head_pose), RotationOneEuroFilter(DEFAULTS.head_pose)
    out_a = np.stack([a(q[i], i * DT) for i in range(60)])
    out_b = np.stack([b(q[i] * signs[i], i * DT) for i in range(60)])
    assert np.max(quat_angle_between(out_a, out_b)) < 1e-6


# ------------------------------------------------------------------------------------------------
# The measured bars, through ParamSmoother with default settings


def test_still_jitter_cut_at_least_5x():
    n = 300
    expression, pose = _still_with_noise(n, seed=1)
    raw = _stream(expression, pose, np.arange(n) * DT)
    out = _smooth(raw)
    settled = slice(30, None)  # skip the first second, where the filter starts from one sample
    head_cut = rotation_jitter_rms(_head_quats(raw)[settled]) / rotation_jitter_rms(_head_quats(out)[settled])
    expr_cut = jitter_rms(_field(raw, "expression")[settled]) / jitter_rms(_field(out, "expression")[settled])
    assert head_cut >= 5.0, f"head rotation jitter only cut {head_cut:.1f}x"
    assert expr_cut >= 5.0, f"expression jitter only cut {expr_cut:.1f}x"
    # Still so at the top of the noise range the brief names (1 degree, 0.03).
    expression, pose = _still_with_noise(n, seed=2, rot_noise_deg=1.0, expr_noise=0.03)
    raw = _stream(expression, pose, np.arange(n) * DT)
    out = _smooth(raw)
    assert rotation_jitter_rms(_head_quats(raw)[settled]) >= 5.0 * rotation_jitter_rms(_head_quats(out)[settled])
    assert jitter_rms(_field(raw, "expression")[settled]) >= 5.0 * jitter_rms(_field(out, "expression")[settled])


@pytest.mark.parametrize("slope", [2.0, 0.5])  # weight/s: 0 -> 1 in half a second, in two seconds
def test_expression_ramp_lag_at_most_2_frames(slope):
    start = 20
    n = start + int(math.ceil(0.8 / slope * FPS)) + 20
    weight = np.clip(0.1 + slope * np.maximum(np.arange(n) - start, 0) * DT, 0.1, 0.9)
    expression, pose = _flat(n)
    expression[:, JAW] = weight
    out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT)), "expression")[:, JAW]
    window = slice(start - 5, None)
    lag = lag_frames(weight[window], out[window])
    assert lag <= 2.0, f"expression ramp at {slope}/s lags {lag:.2f} frames"


@pytest.mark.parametrize("deg_per_s", [90.0, 30.0])  # a brisk and a slow head turn
def test_head_ramp_lag_at_most_2_frames(deg_per_s):
    start = 20
    n = start + int(math.ceil(45.0 / deg_per_s * FPS)) + 20
    yaw = np.minimum(np.deg2rad(deg_per_s) * np.maximum(np.arange(n) - start, 0) * DT, np.deg2rad(45.0))
    expression, pose = _flat(n)
    pose[:, HEAD] = yaw[:, None] * YAW_AXIS
    raw = _stream(expression, pose, np.arange(n) * DT)
    out = _smooth(raw)
    window = slice(start - 5, None)
    lag = rotation_lag_frames(_head_quats(raw)[window], _head_quats(out)[window])
    assert lag <= 2.0, f"head ramp at {deg_per_s} deg/s lags {lag:.2f} frames"


@pytest.mark.parametrize("size", [0.5, 0.1])  # a jaw snap and a small twitch
def test_expression_step_lag_settle_overshoot(size):
    start, n = 20, 50
    expression, pose = _flat(n)
    expression[:, JAW] = np.where(np.arange(n) < start, 0.2, 0.2 + size)
    out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT)), "expression")[:, JAW]
    response = step_response(out, 0.2, 0.2 + size, start)
    assert response.half_frames <= 2
    assert response.settle_frames <= 6 if size >= 0.5 else response.settle_frames <= 10
    assert response.overshoot <= 0.01


@pytest.mark.parametrize("degrees", [20.0, 5.0])
def test_head_step_lag_settle_overshoot(degrees):
    start, n = 20, 50
    expression, pose = _flat(n)
    target = np.deg2rad(degrees) * YAW_AXIS
    pose[start:, HEAD] = target
    out = _head_quats(_smooth(_stream(expression, pose, np.arange(n) * DT)))
    progress = quat_angle_between(out, axis_angle_to_quat(np.zeros(3))) / np.deg2rad(degrees)
    response = step_response(progress, 0.0, 1.0, start)
    assert response.half_frames <= 2
    assert response.settle_frames <= 6 if degrees >= 20 else response.settle_frames <= 10
    assert response.overshoot <= 0.01
    off_axis = quat_angle_between(out[-1], axis_angle_to_quat(target))
    assert off_axis < np.deg2rad(0.5)


def test_jittered_and_duplicate_timestamps():
    """Frame intervals drawn in [0.5, 1.5] / 30 s, plus repeated and backward timestamps."""
    rng = np.random.default_rng(11)
    n = 300
    t = np.cumsum(rng.uniform(0.5, 1.5, n) * DT)
    expression, pose = _still_with_noise(n, seed=12)
    # A 90 deg/s head turn in the middle, sampled at the jittered times.
    start = t[150]
    yaw = np.clip(np.deg2rad(90.0) * (t - start), 0.0, np.deg2rad(45.0))
    pose[:, HEAD] = pose[:, HEAD] * 0.0 + yaw[:, None] * YAW_AXIS
    raw = _stream(expression, pose, t)
    out = _smooth(raw)
    expr_cut = jitter_rms(_field(raw, "expression")[30:]) / jitter_rms(_field(out, "expression")[30:])
    assert expr_cut >= 5.0
    # Lag in time on the turn: output yaw behind input yaw, divided by the speed, over the ramp.
    yaw_out = quat_to_axis_angle(_head_quats(out))[:, 1]
    ramp = (yaw > np.deg2rad(10.0)) & (yaw < np.deg2rad(40.0))
    lag_s = np.mean((yaw[ramp] - yaw_out[ramp]) / np.deg2rad(90.0))
    assert 0.0 < lag_s <= 2.0 * DT

    # Duplicates (dt = 0) and a step back in time: no NaN, the previous output comes back.
    smoother = ParamSmoother()
    outputs = [smoother.process(f) for f in raw[:10]]
    again = smoother.process(raw[9].replace(expression=np.ones(NUM_EXPRESSIONS)))
    back = smoother.process(raw[5])
    for frame in (again, back):
        np.testing.assert_array_equal(frame.expression, outputs[-1].expression)
        np.testing.assert_array_equal(frame.pose, outputs[-1].pose)
    nxt = smoother.process(raw[10])
    assert all(np.all(np.isfinite(getattr(nxt, k))) for k in ("expression", "pose", "camera", "gaze"))


# ------------------------------------------------------------------------------------------------
# Outliers


def test_single_frame_head_spike_is_rejected():
    n, spike = 40, 20
    expression, pose = _flat(n)
    pose[:, HEAD] = np.deg2rad(10.0) * YAW_AXIS
    pose[spike, HEAD] = np.deg2rad(100.0) * np.array([1.0, 0.0, 0.0])  # a pose-solver flip
    pose[spike, L_SHOULDER] = np.deg2rad(90.0) * YAW_AXIS
    out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT)), "pose")
    q_out, q_in = axis_angle_to_quat(out), axis_angle_to_quat(pose[0])
    assert np.max(quat_angle_between(q_out[spike:, HEAD], q_in[HEAD])) < np.deg2rad(0.01)
    assert np.max(quat_angle_between(q_out[spike:, L_SHOULDER], q_in[L_SHOULDER])) < np.deg2rad(0.01)


def test_persisting_jump_is_accepted_within_n_frames():
    n, jump = 40, 20
    expression, pose = _flat(n)
    pose[jump:, HEAD] = np.deg2rad(60.0) * YAW_AXIS  # re-detection: a new, stable head pose
    out = _head_quats(_smooth(_stream(expression, pose, np.arange(n) * DT)))
    accepted_at = jump + DEFAULTS.outlier_frames - 1
    before = quat_angle_between(out[jump:accepted_at], axis_angle_to_quat(np.zeros(3)))
    assert np.all(before < np.deg2rad(0.01))  # suspected frames are dropped, not smeared in
    after = quat_angle_between(out[accepted_at:], axis_angle_to_quat(pose[-1, HEAD]))
    assert np.all(after < np.deg2rad(0.01))  # then the filter snaps to it


def test_expression_gate_when_configured():
    """Expression has no gate by default (blinks); a configured one drops a spike, keeps a step."""
    options = SmoothingOptions(expression=FilterSettings(min_cutoff=0.5, beta=3.0, max_speed=6.0))
    n = 40
    expression, pose = _flat(n)
    expression[20, JAW] = 0.9  # a 0.8 jump in one frame is 24/s
    expression[30:, JAW] = 0.9  # and the same jump, kept
    out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT), options), "expression")[:, JAW]
    assert np.max(out[20:30]) == pytest.approx(0.1)
    assert out[30 + options.outlier_frames - 1] == pytest.approx(0.9)
    default_out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT)), "expression")[:, JAW]
    assert default_out[20] > 0.5  # by default the spike is a blink and shows


# ------------------------------------------------------------------------------------------------
# Tracking loss


def _loss_run(n_lost: int, recover_yaw_deg: float = 0.0):
    """30 tracked frames of a held expression and head turn, ``n_lost`` frames without a face,
    then 30 tracked frames with the head at ``recover_yaw_deg``."""
    n = 30 + n_lost + 30
    expression, pose = _flat(n)
    expression[:] = 0.6
    pose[:, HEAD] = np.deg2rad(30.0) * YAW_AXIS
    pose[:, NECK] = np.deg2rad(10.0) * YAW_AXIS
    pose[:, L_SHOULDER] = np.deg2rad(20.0) * np.array([0.0, 0.0, 1.0])
    pose[30 + n_lost:, HEAD] = np.deg2rad(recover_yaw_deg) * YAW_AXIS
    gaze = np.full((n, 2, 2), 0.2)
    face = np.ones(n, bool)
    face[30:30 + n_lost] = False
    t = np.arange(n) * DT
    return t, pose, _smooth(_stream(expression, pose, t, face_ok=face, gaze=gaze))


def test_loss_holds_then_eases_to_neutral():
    opts = DEFAULTS
    n_lost = int(math.ceil((opts.hold_s + opts.ease_s) * FPS)) + 10
    t, pose, out = _loss_run(n_lost)
    last_good = t[29]
    since = t[30:30 + n_lost] - last_good
    expr = _field(out, "expression")[30:30 + n_lost, JAW]
    head = quat_angle_between(_head_quats(out)[30:30 + n_lost], axis_angle_to_quat(np.zeros(3)))
    held = since <= opts.hold_s
    np.testing.assert_allclose(expr[held], expr[0])  # hold
    np.testing.assert_allclose(head[held], head[0])
    assert np.all(np.diff(expr[~held]) <= 1e-12) and np.all(np.diff(head[~held]) <= 1e-12)  # ease, monotone
    gone = since >= opts.hold_s + opts.ease_s
    assert gone.any()
    assert np.all(_field(out, "expression")[30:30 + n_lost][gone] == 0.0)
    assert np.all(_field(out, "gaze")[30:30 + n_lost][gone] == 0.0)
    np.testing.assert_allclose(_field(out, "pose")[30:30 + n_lost][gone][:, [NECK, HEAD]], 0.0, atol=1e-7)
    # Smooth: the eased curve never moves more per frame than smoothstep's peak slope allows.
    max_step = 1.5 * DT / opts.ease_s * expr[0]
    assert np.max(np.abs(np.diff(expr))) <= max_step + 1e-9
    # The body tracker never lost the shoulders: they stay where they were.
    shoulder = _field(out, "pose")[:, L_SHOULDER]
    np.testing.assert_allclose(shoulder, pose[:, L_SHOULDER], atol=1e-6)


@pytest.mark.parametrize("n_lost", [3, 27])  # a dropped frame or two; a loss cut mid-ease
def test_recovery_has_no_pop_and_reacquires(n_lost):
    opts = DEFAULTS
    t, pose, out = _loss_run(n_lost, recover_yaw_deg=-30.0)
    head = _head_quats(out)
    steps = quat_angle_between(head[1:], head[:-1])
    back = 30 + n_lost
    gap = quat_angle_between(head[back - 1], axis_angle_to_quat(pose[back, HEAD]))
    # A raw switch would jump by the whole gap in one frame; the cross-fade spreads it over
    # reacquire_s, at most smoothstep's peak slope (1.5 / reacquire_s) times the gap per second.
    bound = 1.5 * DT / opts.reacquire_s * gap + np.deg2rad(0.01)
    assert np.max(steps[back - 1:]) <= bound
    assert gap > np.deg2rad(20.0)
    # Re-acquired once the cross-fade is over.
    done = back + int(math.ceil(opts.reacquire_s * FPS))
    np.testing.assert_allclose(quat_angle_between(head[done:], axis_angle_to_quat(pose[-1, HEAD])), 0.0, atol=1e-6)


def test_no_face_from_the_start_is_neutral_then_fades_in():
    n = 30
    expression, pose = _flat(n)
    expression[:] = 0.5
    face = np.arange(n) >= 10
    out = _field(_smooth(_stream(expression, pose, np.arange(n) * DT, face_ok=face)), "expression")
    assert np.all(out[:10] == 0.0)
    assert 0.0 < out[10, JAW] < 0.5 and np.all(np.diff(out[10:, JAW]) >= 0)
    assert out[-1, JAW] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# Smoother plumbing


def test_output_contract_disable_and_reset():
    n = 20
    expression, pose = _still_with_noise(n, seed=5)
    expression[:, 0] = np.linspace(-0.2, 1.2, n)  # out-of-range input is clipped on the way out
    raw = _stream(expression, pose, 10.0 + np.arange(n) * DT, body_ok=False)
    smoother = ParamSmoother()
    out = [smoother.process(f) for f in raw]
    for r, o in zip(raw, out):
        assert isinstance(o, DriverParams) and o is not r
        assert (o.t, o.face_ok, o.body_ok) == (r.t, r.face_ok, r.body_ok)
        assert o.expression.dtype == np.float32 and o.pose.shape == (NUM_POSE_JOINTS, 3)
        assert 0.0 <= o.expression.min() and o.expression.max() <= 1.0
    smoother.reset()
    first = smoother.process(raw[5])  # after reset, the first frame is shown as is
    np.testing.assert_allclose(first.expression, np.clip(raw[5].expression, 0, 1), atol=1e-6)
    np.testing.assert_allclose(first.pose[[NECK, HEAD]], raw[5].pose[[NECK, HEAD]], atol=1e-6)

    raw_out = _smooth(raw, SmoothingOptions(enabled=False))
    assert all(o is r for o, r in zip(raw_out, raw))
