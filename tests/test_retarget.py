"""Retargeting: neutral calibration, relative motion, limits and gains."""

import numpy as np
import pytest

from puppet.contract import Blendshape, SmplJoint, pose_row
from puppet.params import AvatarParams, DriverParams
from puppet.retarget import RetargetOptions, Retargeter, limit_rotation, mean_rotation, relative_expression
from puppet.rotations import axis_angle_to_matrix, matrix_to_axis_angle, quat_angle_between, matrix_to_quat
from trackers.body_solver import RestSkeleton

HEAD = pose_row(SmplJoint.HEAD)
NECK = pose_row(SmplJoint.NECK)
L_ARM = pose_row(SmplJoint.LEFT_SHOULDER)


def _params(t, head_aa=(0, 0, 0), expression=None, camera=(0, 0), face_ok=True, body_ok=True):
    pose = np.zeros((6, 3), np.float32)
    pose[HEAD] = head_aa
    pose[L_ARM] = matrix_to_axis_angle(RestSkeleton().rest_arm(True))
    pose[pose_row(SmplJoint.RIGHT_SHOULDER)] = matrix_to_axis_angle(RestSkeleton().rest_arm(False))
    e = np.zeros(52, np.float32) if expression is None else np.asarray(expression, np.float32)
    return DriverParams(t=t, expression=e, pose=pose, camera=np.asarray(camera, np.float32),
                        face_ok=face_ok, body_ok=body_ok)


def _angle(a, b):
    return np.degrees(quat_angle_between(matrix_to_quat(axis_angle_to_matrix(a)), matrix_to_quat(axis_angle_to_matrix(b))))


def test_pure_helpers():
    r = axis_angle_to_matrix(np.array([0, np.radians(80), 0]))
    np.testing.assert_allclose(np.degrees(np.linalg.norm(matrix_to_axis_angle(limit_rotation(r, np.radians(30))))), 30, atol=1e-6)
    np.testing.assert_allclose(limit_rotation(np.eye(3), 0.1), np.eye(3), atol=1e-12)
    rots = axis_angle_to_matrix(np.array([[0, 0.1, 0], [0, 0.3, 0], [0, 0.2, 0]]))
    np.testing.assert_allclose(matrix_to_axis_angle(mean_rotation(rots)), [0, 0.2, 0], atol=1e-3)
    np.testing.assert_allclose(relative_expression(np.array([0.3, 1.0, 0.1]), np.array([0.3, 0.3, 0.2])), [0, 1, 0])


def test_neutral_is_learned_then_motion_is_relative():
    rt = Retargeter(RetargetOptions(calibration_s=1.0))
    tilt = np.array([0.0, 0.0, np.radians(10)])  # the driver holds the head tilted 10 degrees
    squint = np.zeros(52)
    squint[Blendshape.eyeSquintLeft] = 0.3
    for i in range(31):
        out = rt.process(_params(i / 30, head_aa=tilt, expression=squint, camera=(0.0, -0.2)))
    assert rt.calibrated
    assert isinstance(out, AvatarParams)
    np.testing.assert_allclose(out.pose[HEAD], 0, atol=1e-6)  # the held tilt is the neutral
    np.testing.assert_allclose(out.camera, 0, atol=1e-6)  # MediaPipe's forward lean is removed
    assert out.expression[Blendshape.eyeSquintLeft] == pytest.approx(0)
    # A 20 degree yaw away from the neutral drives the avatar by 20 degrees.
    yawed = matrix_to_axis_angle(axis_angle_to_matrix(tilt) @ axis_angle_to_matrix(np.array([0, np.radians(20), 0])))
    out = rt.process(_params(1.1, head_aa=yawed, expression=squint))
    assert _angle(out.pose[HEAD], np.zeros(3)) == pytest.approx(20, abs=0.01)
    # The arms keep the avatar's natural rest.
    np.testing.assert_allclose(axis_angle_to_matrix(out.pose[L_ARM]), RestSkeleton().rest_arm(True), atol=1e-5)


def test_calibrate_on_demand_and_absolute_mode():
    rt = Retargeter(RetargetOptions(calibration_s=0.0))
    out = rt.process(_params(0.0, head_aa=(0, 0.3, 0)))
    np.testing.assert_allclose(out.pose[HEAD], [0, 0.3, 0], atol=1e-6)  # no neutral: absolute
    rt = Retargeter(RetargetOptions(calibration_s=0.5))
    for i in range(20):
        rt.process(_params(i / 30, head_aa=(0, 0.3, 0)))
    rt.calibrate()
    assert not rt.calibrated
    out = rt.process(_params(1.0, head_aa=(0, -0.2, 0)))
    np.testing.assert_allclose(out.pose[HEAD], 0, atol=1e-6)  # the new first frame is the new neutral


def test_frames_without_face_do_not_calibrate():
    rt = Retargeter(RetargetOptions(calibration_s=0.5))
    for i in range(30):
        rt.process(_params(i / 30, head_aa=(0, 0.5, 0), face_ok=False))
    assert not rt.calibrated
    out = rt.process(_params(1.0, head_aa=(0, 0.1, 0)))
    np.testing.assert_allclose(out.pose[HEAD], 0, atol=1e-6)


def test_limits_and_gains():
    rt = Retargeter(RetargetOptions(calibration_s=0.0, expression_gains={"jawOpen": 2.0},
                                    joint_limits_deg={SmplJoint.HEAD: 30.0}))
    e = np.zeros(52)
    e[Blendshape.jawOpen] = 0.3
    e[Blendshape.mouthSmileLeft] = 0.4
    out = rt.process(_params(0.0, head_aa=(0, np.radians(70), 0), expression=e, camera=(1.5, -1.0)))
    assert _angle(out.pose[HEAD], np.zeros(3)) == pytest.approx(30, abs=1e-3)
    assert out.expression[Blendshape.jawOpen] == pytest.approx(0.6)
    assert out.expression[Blendshape.mouthSmileLeft] == pytest.approx(0.4)
    np.testing.assert_allclose(np.degrees(out.camera), [45, -30], atol=1e-4)
    with pytest.raises(ValueError):
        RetargetOptions(expression_gains={"notAShape": 1.0})
