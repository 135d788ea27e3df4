"""The tracking stage end to end: real footage, and a closed loop on renders with known parameters."""

import itertools

import numpy as np
import pytest

from puppet.contract import Blendshape
from puppet.params import head_rotation
from puppet.rotations import yaw_pitch_roll
from puppet.sources import VideoFileSource
from puppet.tracking import Tracker, TrackingOptions


def _track(path, options, n):
    with VideoFileSource(path) as source, Tracker(options) as tracker:
        return [tracker.process(frame) for frame in itertools.islice(source, n)]


def head_angles(pose):
    return yaw_pitch_roll(head_rotation(pose))


def test_full_tracking_on_upper_body_footage(body_video):
    frames = _track(body_video, TrackingOptions(mode="full"), 30)
    assert [f.index for f in frames] == list(range(30))
    assert all(np.isfinite(f.params.pose).all() for f in frames)
    assert sum(f.params.face_ok for f in frames) >= 28
    assert sum(f.params.body_ok for f in frames) >= 25
    last = frames[-1]
    assert last.params.t == last.t == last.observation.t
    assert set(last.timings_ms) == {"face", "body", "solve", "smooth"}
    assert last.params.expression.min() >= 0 and last.params.expression.max() <= 1
    assert last.params.shape.shape == last.raw.shape.shape and last.params.shape.size > 0


def test_parallel_and_sequential_trackers_agree(body_video):
    a = _track(body_video, TrackingOptions(mode="full", parallel=True), 12)
    b = _track(body_video, TrackingOptions(mode="full", parallel=False), 12)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.raw.pose, y.raw.pose, atol=1e-4)
        np.testing.assert_allclose(x.raw.expression, y.raw.expression, atol=1e-4)


def test_face_mode_skips_the_body(face_video):
    frames = _track(face_video, TrackingOptions(mode="face"), 10)
    assert not any(f.params.body_ok for f in frames)
    assert all(f.observation.body is None for f in frames)
    assert all(f.params.face_ok for f in frames)
    np.testing.assert_array_equal(frames[-1].params.camera, 0)


def test_no_face_still_yields_parameters():
    from puppet.frame import Frame

    with Tracker(TrackingOptions(mode="face")) as tracker:
        tracked = [tracker.process(Frame(np.full((240, 320, 3), 90, np.uint8), t=i / 30, index=i)) for i in range(5)]
    assert not any(t.params.face_ok for t in tracked)
    np.testing.assert_array_equal(tracked[-1].params.expression, 0)


def test_calibrate_and_reset_keep_working(face_video):
    with VideoFileSource(face_video) as source, Tracker(TrackingOptions(mode="face")) as tracker:
        frames = list(itertools.islice(source, 12))
        for f in frames[:6]:
            tracker.process(f)
        tracker.calibrate()
        assert tracker.process(frames[6]).params.face_ok
        tracker.reset()
        assert tracker.process(frames[7]).params.face_ok


@pytest.mark.slow
def test_closed_loop_on_a_rendered_performance(tmp_path):
    """Render anny with known head motion and expressions, track the video, compare."""
    from puppet.synthetic import demo_performance, render_performance

    perf = demo_performance(seconds=4.0)
    clip = render_performance(perf, tmp_path / "perf.mp4")
    frames = _track(clip, TrackingOptions(mode="face"), len(perf.t))
    assert len(frames) == len(perf.t)
    np.testing.assert_allclose([f.t for f in frames], perf.t, atol=1e-3)
    ok = np.array([f.params.face_ok for f in frames])
    assert ok.mean() > 0.95
    pose = np.stack([f.raw.pose for f in frames]).astype(np.float64)
    err = np.degrees(np.abs(head_angles(pose) - perf.head))[ok]
    assert np.median(err[:, 0]) < 3.0, f"yaw error {np.median(err[:, 0]):.1f} deg"
    assert np.median(err[:, 1]) < 3.0, f"pitch error {np.median(err[:, 1]):.1f} deg"
    expr = np.stack([f.params.expression for f in frames])[ok]
    jaw = Blendshape.jawOpen
    assert np.corrcoef(expr[:, jaw], perf.expression[ok, jaw])[0, 1] > 0.7
    blink = Blendshape.eyeBlinkLeft
    assert np.corrcoef(expr[:, blink], perf.expression[ok, blink])[0, 1] > 0.7
