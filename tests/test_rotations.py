"""Rotation maths against scipy's well-tested implementation."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from puppet import rotations as rot


@pytest.fixture
def rotvecs():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(500, 3)) * 1.3
    v[:4] = [[np.pi, 0, 0], [0, np.pi - 1e-7, 0], [0, 0, 0], [1e-9, 0, 0]]
    return v


def _canon(q):
    return np.where(q[..., 3:] < 0, -q, q)


def test_axis_angle_matrix_quat_agree_with_scipy(rotvecs):
    ref = Rotation.from_rotvec(rotvecs)
    np.testing.assert_allclose(rot.axis_angle_to_matrix(rotvecs), ref.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(rot.axis_angle_to_quat(rotvecs) * ref.as_quat(), -1)), 1, atol=1e-12)
    q = rot.matrix_to_quat(ref.as_matrix())
    np.testing.assert_allclose(np.abs(np.sum(q * ref.as_quat(), -1)), 1, atol=1e-9)
    assert np.all(q[:, 3] >= 0)
    back = rot.matrix_to_axis_angle(ref.as_matrix())
    np.testing.assert_allclose(rot.axis_angle_to_matrix(back), ref.as_matrix(), atol=1e-9)
    assert np.all(np.linalg.norm(back, axis=-1) <= np.pi + 1e-9)


def test_quat_product_composes_matrices(rotvecs):
    a, b = rot.axis_angle_to_quat(rotvecs[:250]), rot.axis_angle_to_quat(rotvecs[250:])
    np.testing.assert_allclose(rot.quat_to_matrix(rot.quat_multiply(a, b)),
                               rot.quat_to_matrix(a) @ rot.quat_to_matrix(b), atol=1e-12)


def test_slerp_is_geodesic_and_takes_short_path(rotvecs):
    a = rot.axis_angle_to_quat(rotvecs[10:20])
    b = rot.axis_angle_to_quat(rotvecs[20:30])
    for alpha in (0.0, 0.25, 0.5, 1.0):
        s = rot.slerp(a, -b, alpha)  # -b is the same rotation: must not take the long way
        np.testing.assert_allclose(rot.quat_angle_between(a, s), alpha * rot.quat_angle_between(a, b), atol=1e-9)


def test_yaw_pitch_roll_inverts_ry_rx_rz():
    rng = np.random.default_rng(2)
    ypr = rng.uniform(-1.2, 1.2, size=(100, 3))
    m = Rotation.from_euler("YXZ", ypr).as_matrix()
    np.testing.assert_allclose(rot.yaw_pitch_roll(m), ypr, atol=1e-12)
    # Sign convention: positive yaw turns the face (+Z) towards the person's left (+X).
    face = rot.axis_angle_to_matrix(np.array([0, 0.3, 0])) @ np.array([0, 0, 1.0])
    assert face[0] > 0


def test_rotation_between_including_antiparallel():
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    u[0], v[0] = [1, 0, 0], [-1, 0, 0]
    r = rot.rotation_between(u, v)
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", r, un), vn, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r), 1, atol=1e-12)
