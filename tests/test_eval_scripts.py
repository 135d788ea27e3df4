"""The evaluation scripts' own arithmetic: what the published figures are computed with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_affine_ceiling_forgives_per_video_level_and_gain_only() -> None:
    ev = _load("eval_expression_solver")
    rng = np.random.default_rng(0)
    theirs = [rng.uniform(0, 1, (200, 2)) for _ in range(3)]
    # Column 0: each video's (b) is (a) at its own gain and level: pooled r suffers, the ceiling not.
    # Column 1: (b) is (a) plus as much independent noise: no per-video line can remove that.
    ours = [np.stack([g * t[:, 0] + o, t[:, 1] + rng.normal(0, 0.29, 200)], axis=1)
            for t, g, o in zip(theirs, (0.3, 1.0, 2.5), (0.8, 0.0, -1.0))]
    pooled, _ = ev.correlations(ours, theirs)
    ceiling = ev.per_video_affine_ceiling(ours, theirs)
    assert pooled[0] < 0.8 and ceiling[0] == pytest.approx(1.0)
    assert ceiling[1] == pytest.approx(pooled[1], abs=0.02) and 0.6 < ceiling[1] < 0.8


def test_affine_ceiling_of_a_constant_video_is_its_mean() -> None:
    ev = _load("eval_expression_solver")
    theirs = [np.array([[0.0], [1.0], [0.0], [1.0]]), np.array([[0.2], [0.3], [0.4], [0.5]])]
    ours = [np.zeros((4, 1)), np.array([[1.0], [2.0], [3.0], [4.0]])]
    # Video 1 maps to 0.5 throughout, video 2 exactly onto (a).
    expected = np.corrcoef(np.r_[[0.5] * 4, [0.2, 0.3, 0.4, 0.5]], np.r_[0, 1, 0, 1, 0.2, 0.3, 0.4, 0.5])[0, 1]
    assert ev.per_video_affine_ceiling(ours, theirs)[0] == pytest.approx(expected)


def _yaw_quats(degrees: np.ndarray) -> np.ndarray:
    half = np.radians(degrees) / 2
    return np.stack([np.zeros_like(half), np.sin(half), np.zeros_like(half), np.cos(half)], axis=1)


def test_held_still_excludes_a_slow_drift_that_the_loose_criterion_calls_still() -> None:
    ev = _load("eval_smoothing")
    rng = np.random.default_rng(0)
    fps, n = 30.0, 90
    # 0.3 degrees of jitter per frame throughout; frames 0-44 hold still, 45-89 drift at 5 deg/s.
    drift = np.where(np.arange(n) < 45, 0.0, 5.0 * (np.arange(n) - 45) / fps)
    quats = _yaw_quats(drift + rng.normal(0, 0.3, n))
    quats[::7] *= -1  # q and -q are the same rotation: the averages must not care
    expression = 0.2 + rng.normal(0, 0.005, (n, 3))
    loose = ev.still_runs(quats, expression, fps, 8.0, 0.6, 10, width=5)
    held = ev.still_runs(quats, expression, fps, 3.0, 0.2, 10, width=15)
    def frames(runs):
        return {i for r in runs for i in range(r.start, r.stop)}

    drifting = set(range(53, n))  # the 15-frame average reaches 7 frames into the drift
    assert len(frames(loose) & drifting) >= 20
    assert not frames(held) & drifting
    assert len(frames(held)) >= 35


def test_segment_jitter_pools_runs_by_their_steps() -> None:
    ev = _load("eval_smoothing")
    raw = np.zeros((30, 1))
    raw[::2] = 1.0  # every step is 1
    smoothed = raw * 0.1  # every step is 0.1
    yaw = raw[:, 0] * 2.0  # degrees
    runs = [slice(0, 10), slice(15, 30)]
    s = ev.segment_jitter(runs, _yaw_quats(yaw), _yaw_quats(yaw / 4), _yaw_quats(yaw / 8), raw, smoothed, raw * 0.5)
    assert s["still_frames"] == 25
    assert s["head_jitter_raw_deg"] == pytest.approx(2.0)
    assert s["head_jitter_reduction"] == pytest.approx(4.0)
    assert s["head_jitter_reduction_centred15"] == pytest.approx(8.0)
    assert s["expression_jitter_reduction"] == pytest.approx(10.0)
    assert s["expression_jitter_reduction_centred15"] == pytest.approx(2.0)
    assert ev.flat_items({"a": {"b": 1.234, "c": 3}}) == ["a.b = 1.23", "a.c = 3"]
