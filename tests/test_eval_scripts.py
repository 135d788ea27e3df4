"""The evaluation scripts' own arithmetic: what the published figures are computed with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
