"""Rotation math as pure numpy functions (batched over leading axes).

Conventions: axis-angle vectors ``(..., 3)`` (SMPL), rotation matrices ``(..., 3, 3)`` acting on
column vectors, quaternions ``(..., 4)`` in scipy's scalar-last order ``(x, y, z, w)``.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-9


def _norm(v: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(v, axis=-1, keepdims=True)`` for real ``v`` (the same arithmetic, a
    fraction of the call overhead: these functions run several times per frame)."""
    return np.sqrt(np.add.reduce(v * v, axis=-1, keepdims=True))


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues' formula. ``aa: (..., 3) -> (..., 3, 3)``."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = _norm(aa)
    axis = aa / np.maximum(theta, _EPS)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(aa.shape[:-1] + (3, 3))
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + s * k + (1.0 - c) * (k @ k)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """``q: (..., 4) xyzw -> (..., 3, 3)``; ``q`` need not be normalised."""
    q = normalize_quat(q)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Shepperd's method, stable at every angle. ``m: (..., 3, 3) -> (..., 4)`` xyzw with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    # Four candidate solutions (each exact where its pivot 4*q_i^2 is large); keep the best.
    p0, p1, p2, p3 = 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + tr
    s01, s02, s12 = m01 + m10, m02 + m20, m12 + m21
    d21, d02, d10 = m21 - m12, m02 - m20, m10 - m01
    cand = np.stack([p0, s01, s02, d21, s01, p1, s12, d02, s02, s12, p2, d10, d21, d02, d10, p3],
                    -1).reshape(m.shape[:-2] + (4, 4))
    pick = np.argmax(cand[..., (0, 1, 2, 3), (0, 1, 2, 3)], axis=-1)  # the pivots, on the diagonal
    q = np.take_along_axis(cand, pick[..., None, None], axis=-2)[..., 0, :]
    q = normalize_quat(q)
    return np.where(q[..., 3:4] < 0, -q, q)


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """``aa: (..., 3) -> (..., 4)`` xyzw."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = _norm(aa)
    half = 0.5 * theta
    # sin(x/2)/x with its limit 1/2 at zero.
    k = np.where(theta > 1e-6, np.sin(half) / np.maximum(theta, _EPS), 0.5 - theta**2 / 48.0)
    return np.concatenate([aa * k, np.cos(half)], axis=-1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """``q: (..., 4) xyzw -> (..., 3)`` with angle in [0, pi]."""
    q = normalize_quat(q)
    q = np.where(q[..., 3:4] < 0, -q, q)
    v = q[..., :3]
    s = _norm(v)
    theta = 2.0 * np.arctan2(s, q[..., 3:4])
    k = np.where(s > 1e-9, theta / np.maximum(s, _EPS), 2.0 + s**2 / 3.0)
    return v * k


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """``m: (..., 3, 3) -> (..., 3)``."""
    return quat_to_axis_angle(matrix_to_quat(m))


def normalize_quat(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.maximum(_norm(q), _EPS)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` (apply ``b`` first). ``(..., 4), (..., 4) -> (..., 4)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ax, ay, az, aw = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ], axis=-1)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def align_hemisphere(q: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip ``q`` to the reference's hemisphere (``q`` and ``-q`` are the same rotation)."""
    dot = np.sum(np.asarray(q) * np.asarray(reference), axis=-1, keepdims=True)
    return np.where(dot < 0, -q, q)


def quat_angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle in radians between rotations. ``(..., 4), (..., 4) -> (...)``."""
    dot = np.abs(np.sum(normalize_quat(a) * normalize_quat(b), axis=-1))
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


def slerp(a: np.ndarray, b: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Shortest-path spherical interpolation; ``alpha=0`` gives ``a``. ``(..., 4) -> (..., 4)``."""
    a = normalize_quat(a)
    b = align_hemisphere(normalize_quat(b), a)
    alpha = np.asarray(alpha, dtype=np.float64)[..., None] if np.ndim(alpha) else float(alpha)
    dot = np.clip(np.sum(a * b, axis=-1, keepdims=True), -1.0, 1.0)
    omega = np.arccos(dot)
    so = np.sin(omega)
    near = so < 1e-6
    wa = np.where(near, 1.0 - alpha, np.sin((1.0 - alpha) * omega) / np.where(near, 1.0, so))
    wb = np.where(near, alpha, np.sin(alpha * omega) / np.where(near, 1.0, so))
    return normalize_quat(wa * a + wb * b)


def euler_xyz_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Intrinsic X then Y then Z, ``R = Rx @ Ry @ Rz``. ``(..., 3) -> (..., 3, 3)``."""
    angles = np.asarray(angles, dtype=np.float64)
    eye = np.eye(3)
    rx = axis_angle_to_matrix(angles[..., 0:1] * eye[0])
    ry = axis_angle_to_matrix(angles[..., 1:2] * eye[1])
    rz = axis_angle_to_matrix(angles[..., 2:3] * eye[2])
    return rx @ ry @ rz


def yaw_pitch_roll(m: np.ndarray) -> np.ndarray:
    """Head angles of a rotation in the contract's frame (Y up, +Z forward): yaw about Y,
    pitch about X, roll about Z, with ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``. ``(..., 3, 3) -> (..., 3)``.
    """
    m = np.asarray(m, dtype=np.float64)
    pitch = np.arcsin(np.clip(-m[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(m[..., 0, 2], m[..., 2, 2])
    roll = np.arctan2(m[..., 1, 0], m[..., 1, 1])
    return np.stack([yaw, pitch, roll], axis=-1)


def rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smallest rotation taking direction ``u`` to direction ``v``. ``(..., 3), (..., 3) -> (..., 3, 3)``."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), _EPS)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)
    axis = np.cross(u, v)
    s = np.linalg.norm(axis, axis=-1, keepdims=True)
    c = np.sum(u * v, axis=-1, keepdims=True)
    angle = np.arctan2(s, c)
    # Antiparallel: any axis orthogonal to u.
    fallback = np.cross(u, np.where(np.abs(u[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    axis = np.where(s > 1e-9, axis, fallback)
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), _EPS)
    return axis_angle_to_matrix(axis * angle)


def fractional_rotation(m: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """The rotation ``m`` raised to the power ``t`` (same axis, ``t`` times the angle, angle taken
    in [0, pi]): ``fractional_rotation(m, a) @ fractional_rotation(m, b) == fractional_rotation(m, a + b)``.
    ``(..., 3, 3) -> (..., 3, 3)``."""
    aa = matrix_to_axis_angle(m)
    t = np.asarray(t, dtype=np.float64)
    return axis_angle_to_matrix(aa * (t[..., None] if t.ndim else t))
