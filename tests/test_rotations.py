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


# The textbook formulas, one expression per component: the table-driven versions in
# puppet.rotations must do exactly this arithmetic (bit for bit), whatever the batch shape.


def _textbook_quat_to_matrix(q):
    q = q / np.maximum(np.sqrt(np.add.reduce(q * q, axis=-1, keepdims=True)), 1e-9)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(q.shape[:-1] + (3, 3))


def _textbook_quat_multiply(a, b):
    ax, ay, az, aw = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def _textbook_matrix_to_quat(m):
    """Shepperd: all four candidates, keep the one with the largest pivot."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    cand = np.stack([1 + m00 - m11 - m22, m01 + m10, m02 + m20, m21 - m12,
                     m01 + m10, 1 - m00 + m11 - m22, m12 + m21, m02 - m20,
                     m02 + m20, m12 + m21, 1 - m00 - m11 + m22, m10 - m01,
                     m21 - m12, m02 - m20, m10 - m01, 1 + (m00 + m11 + m22)], -1).reshape(m.shape[:-2] + (4, 4))
    pick = np.argmax(cand[..., (0, 1, 2, 3), (0, 1, 2, 3)], axis=-1)
    q = np.take_along_axis(cand, pick[..., None, None], axis=-2)[..., 0, :]
    q = q / np.maximum(np.sqrt(np.add.reduce(q * q, axis=-1, keepdims=True)), 1e-9)
    return np.where(q[..., 3:4] < 0, -q, q)


def _bitwise_equal(a, b):
    return a.shape == b.shape and np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("shape", [(), (1,), (2,), (3, 5)])
def test_table_driven_formulas_match_the_textbook_bit_for_bit(shape):
    rng = np.random.default_rng(7)
    q, q2 = rng.normal(size=shape + (4,)), rng.normal(size=shape + (4,))
    matrices = [rot.quat_to_matrix(q), rng.normal(size=shape + (3, 3)), np.round(rot.quat_to_matrix(q2), 1),
                np.broadcast_to(np.eye(3), shape + (3, 3)), np.broadcast_to(np.diag([-1.0, -1.0, 1.0]), shape + (3, 3))]
    for m in matrices:
        assert _bitwise_equal(rot.matrix_to_quat(m), _textbook_matrix_to_quat(m))
    for a in (q, np.zeros(shape + (4,)), np.broadcast_to([0.0, -0.0, 0.0, 1.0], shape + (4,))):
        assert _bitwise_equal(rot.quat_to_matrix(a), _textbook_quat_to_matrix(a))
        assert _bitwise_equal(rot.quat_multiply(a, q2), _textbook_quat_multiply(a, q2))
    one = q2.reshape(-1, 4)[0]  # (4,) against the batch: broadcasting
    assert _bitwise_equal(rot.quat_multiply(q, one), _textbook_quat_multiply(q, one))
    assert _bitwise_equal(rot.quat_multiply(one, q), _textbook_quat_multiply(one, q))
