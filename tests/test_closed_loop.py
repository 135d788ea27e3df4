"""Closed loop: the mesh engine renders known parameters, the tracker reads them back.

Bars (issue "avatar and mesh engine"): median head yaw and pitch error <= 3 degrees, jawOpen mean
absolute error <= 0.1 with the built-in solver. Pitch is judged after the neutral calibration the
pipeline applies: absolute pitch carries a per-face offset that no constant removes (hair framing
the forehead reads as the head tilted up by up to 5 degrees, ada here; farouk's aged face reads 5
degrees down), see docs/avatar_figures.md; scripts/eval_closed_loop.py reports the absolute figure.
These avatars and seeds are held out from the solver's render calibration
(scripts/derive_render_calibration.py), whose jawOpen gain is checked through the read slope.
"""

import pytest

from puppet.closed_loop import closed_loop

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("avatar, seed", [("ada", 0), ("farouk", 2)])
def test_tracking_recovers_rendered_parameters(avatar, seed, tmp_path):
    result = closed_loop(avatar, seed, seconds=5.0, size=512, workdir=tmp_path)
    assert result["face_rate"] > 0.95
    assert result["head_error_deg"]["yaw"]["median"] <= 3.0
    assert result["head_error_calibrated_deg"]["yaw"]["median"] <= 3.0
    assert result["head_error_calibrated_deg"]["pitch"]["median"] <= 3.0
    assert result["expression"]["jawOpen"]["mae"] <= 0.1
    assert 0.75 <= result["expression"]["jawOpen"]["slope"] <= 1.3  # uncorrected: 0.60 (ada), 0.67 (farouk)
    assert result["expression"]["jawOpen"]["r"] > 0.8
    assert result["expression"]["eyeBlinkLeft"]["r"] > 0.7
    assert result["body_rate"] > 0.9
    errors = result["joint_error_deg_median"]
    assert errors["left_collar"] < 15 and errors["right_collar"] < 15
