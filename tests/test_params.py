"""The parameter contract and its file format."""

import json

import numpy as np
import pytest

from puppet.contract import ARKIT_NAMES, MEDIAPIPE_BLENDSHAPE_NAMES, Blendshape, SmplJoint, pose_row
from puppet.errors import InputError, OutputError
from puppet.params import DriverParams, ParamSequence, load_params, make_header, save_params


def _frames(n=5):
    rng = np.random.default_rng(0)
    return [
        DriverParams(
            t=i / 30,
            expression=rng.uniform(0, 1, 52).astype(np.float32),
            pose=rng.normal(0, 0.2, (6, 3)).astype(np.float32),
            camera=rng.normal(0, 0.1, 2).astype(np.float32),
            gaze=rng.normal(0, 0.1, (2, 2)).astype(np.float32),
            shape=rng.normal(0, 1, 10).astype(np.float32),
            face_ok=bool(i % 2),
            body_ok=True,
        )
        for i in range(n)
    ]


def test_contract_indices_match_design():
    assert len(ARKIT_NAMES) == 52
    assert Blendshape.browDownLeft == 0 and Blendshape.jawOpen == 24 and Blendshape.tongueOut == 51
    assert MEDIAPIPE_BLENDSHAPE_NAMES[0] == "_neutral" and len(MEDIAPIPE_BLENDSHAPE_NAMES) == 52
    assert [int(j) for j in SmplJoint] == [12, 13, 14, 15, 16, 17]
    assert pose_row(SmplJoint.HEAD) == 3


def test_contract_order_is_annys():
    anny_actions = pytest.importorskip("anny.models.facial_actions")
    assert list(ARKIT_NAMES) == anny_actions.FACIAL_ACTION_LABELS


def test_driver_params_validates_shapes_and_freezes():
    p = DriverParams.neutral(t=1.5, shape_dim=10)
    assert p.expression.shape == (52,) and p.pose.shape == (6, 3) and p.shape.shape == (10,)
    with pytest.raises(ValueError, match="expression"):
        DriverParams(t=0, expression=np.zeros(51), pose=np.zeros((6, 3)))
    with pytest.raises(ValueError, match="pose"):
        DriverParams(t=0, expression=np.zeros(52), pose=np.zeros((5, 3)))
    with pytest.raises(ValueError):
        p.expression[0] = 1.0  # arrays are read-only: frames are values
    q = p.replace(face_ok=True)
    assert q.face_ok and not p.face_ok


def test_round_trip(tmp_path):
    frames = _frames()
    seq = ParamSequence.from_frames(frames, make_header(30.0, "clip.mp4", {"mode": "full"}))
    path = save_params(tmp_path / "p.npz", seq)
    back = load_params(path)
    assert len(back) == 5 and back.fps == 30.0
    for a, b in zip(frames, back):
        assert a.t == b.t and a.face_ok == b.face_ok
        np.testing.assert_array_equal(a.expression, b.expression)
        np.testing.assert_array_equal(a.pose, b.pose)
        np.testing.assert_array_equal(a.shape, b.shape)
    assert back.header["expression_names"] == list(ARKIT_NAMES)
    assert back.header["pose_joints"]["15"] == "head"
    assert back.header["mode"] == "full"
    assert not list(tmp_path.glob("*.partial*")), "the temporary file must be renamed away"


def test_empty_sequence_round_trips(tmp_path):
    seq = ParamSequence.from_frames([], make_header(25.0, "x"))
    back = load_params(save_params(tmp_path / "e.npz", seq))
    assert len(back) == 0 and back.arrays["expression"].shape == (0, 52)


def test_load_rejects_missing_foreign_and_pickled(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_params(tmp_path / "nope.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a puppet parameter file"):
        load_params(tmp_path / "foreign.npz")
    # A file carrying pickled objects must not be unpickled.
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": "puppet.params"}], dtype=object))
    with pytest.raises(InputError):
        load_params(tmp_path / "pickled.npz")
    (tmp_path / "garbage.npz").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError):
        load_params(tmp_path / "garbage.npz")


def test_load_rejects_other_expression_order(tmp_path):
    seq = ParamSequence.from_frames(_frames(2), make_header(30.0, "x"))
    seq.header["expression_names"] = list(reversed(ARKIT_NAMES))
    path = tmp_path / "p.npz"
    np.savez(path, header=np.frombuffer(json.dumps(seq.header).encode(), np.uint8), **seq.arrays)
    with pytest.raises(InputError, match="expression order"):
        load_params(path)


def test_save_rejects_wrong_suffix_and_missing_folder(tmp_path):
    seq = ParamSequence.from_frames(_frames(1), make_header(30.0, "x"))
    with pytest.raises(OutputError):
        save_params(tmp_path / "p.txt", seq)
    with pytest.raises(OutputError):
        save_params(tmp_path / "missing" / "p.npz", seq)
