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


# quat_to_matrix's entries from the products q_i q_j (flat index 4 i + j, xyzw): the diagonal is
# ``1 - 2 (a + b)``, the rest ``2 (a +- b)``, in row-major order.
_Q2M_A = np.array([5, 1, 2, 1, 0, 6, 2, 6, 0])  # yy xy xz / xy xx yz / xz yz xx
_Q2M_B = np.array([10, 11, 7, 11, 10, 3, 7, 3, 5])  # zz zw yw / zw zz xw / yw xw yy
_Q2M_SIGNS = np.array([1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
_Q2M_SCALE = np.array([-2.0, 2.0, 2.0, 2.0, -2.0, 2.0, 2.0, 2.0, -2.0])
_DIAGONAL = (0, 4, 8)


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All products ``a_i b_j``: ``(..., 4), (..., 4) -> (..., 16)`` at index ``4 i + j``."""
    p = a[..., :, None] * b[..., None, :]
    return p.reshape(p.shape[:-2] + (16,))


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """``q: (..., 4) xyzw -> (..., 3, 3)``; ``q`` need not be normalised."""
    q = normalize_quat(q)
    p = _products(q, q)
    # Entry by entry the arithmetic of 1 - 2 (y y + z z), 2 (x y - z w), ... (x + (-y) is x - y).
    m = ((p[..., _Q2M_A] + _Q2M_SIGNS * p[..., _Q2M_B]) * _Q2M_SCALE)
    m[..., _DIAGONAL] = 1.0 + m[..., _DIAGONAL]
    return m.reshape(q.shape[:-1] + (3, 3))


# Shepperd's candidates, written as ``4 q_i q_j``: the pivots ``4 q_i^2`` on the diagonal (their
# signs on m00, m11, m22 below), the sums and differences of mirrored entries elsewhere. The
# candidate matrix indexes the 10 distinct values (4 pivots, then s01 s02 s12 d21 d02 d10).
_PIVOT_SIGNS = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
_MIRROR_A = np.array([1, 2, 5, 7, 2, 3])  # flat (row-major) index: m01 m02 m12 m21 m02 m10
_MIRROR_B = np.array([3, 6, 7, 5, 6, 1])  # ... plus or minus m10 m20 m21 m12 m20 m01
_MIRROR_SIGNS = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
_CANDIDATES = np.array([[0, 4, 5, 7], [4, 1, 6, 8], [5, 6, 2, 9], [7, 8, 9, 3]])


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Shepperd's method, stable at every angle. ``m: (..., 3, 3) -> (..., 4)`` xyzw with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    flat = m.reshape(m.shape[:-2] + (9,))
    diag = flat[..., 0::4]  # m00, m11, m22
    # Four candidate solutions (each exact where its pivot 4*q_i^2 is large); keep the best.
    signed = diag[..., None, :] * _PIVOT_SIGNS  # exact: x + (-y) is x - y
    pivots = ((1.0 + signed[..., 0]) + signed[..., 1]) + signed[..., 2]  # 1 +- m00 +- m11 +- m22
    trace = (diag[..., 0] + diag[..., 1]) + diag[..., 2]
    mirrored = flat[..., _MIRROR_A] + _MIRROR_SIGNS * flat[..., _MIRROR_B]
    values = np.concatenate([pivots, (1.0 + trace)[..., None], mirrored], axis=-1)
    pick = np.argmax(values[..., :4], axis=-1)  # the largest pivot
    rows = _CANDIDATES[pick]
    q = values[rows] if values.ndim == 1 else np.take_along_axis(values, rows, axis=-1)
    q = normalize_quat(q)
    return np.where(q[..., 3:4] < 0, -q, q)


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """``aa: (..., 3) -> (..., 4)`` xyzw."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = _norm(aa)
    half = 0.5 * theta
    # sin(x/2)/x with its limit 1/2 at zero (the series only computed where it is used).
    k = np.sin(half) / np.maximum(theta, _EPS)
    small = ~(theta > 1e-6)
    if small.any():
        k = np.where(small, 0.5 - theta**2 / 48.0, k)
    return np.concatenate([aa * k, np.cos(half)], axis=-1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """``q: (..., 4) xyzw -> (..., 3)`` with angle in [0, pi]."""
    q = normalize_quat(q)
    q = np.where(q[..., 3:4] < 0, -q, q)
    v = q[..., :3]
    s = _norm(v)
    theta = 2.0 * np.arctan2(s, q[..., 3:4])
    k = theta / np.maximum(s, _EPS)
    small = ~(s > 1e-9)
    if small.any():  # the series 2 + s^2/3, only computed where it is used
        k = np.where(small, 2.0 + s**2 / 3.0, k)
    return v * k


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """``m: (..., 3, 3) -> (..., 3)``."""
    return quat_to_axis_angle(matrix_to_quat(m))


def normalize_quat(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.maximum(_norm(q), _EPS)


# The Hamilton product's terms, products a_i b_j at 4 i + j (xyzw) with their signs, summed left to
# right: x = aw bx + ax bw + ay bz - az by, y = aw by - ax bz + ay bw + az bx, ...
_MUL_TERMS = np.array([[12, 3, 6, 9], [13, 2, 7, 8], [14, 1, 4, 11], [15, 0, 5, 10]])
_MUL_SIGNS = np.array([[1.0, 1.0, 1.0, -1.0], [1.0, -1.0, 1.0, 1.0],
                       [1.0, 1.0, -1.0, 1.0], [1.0, -1.0, -1.0, -1.0]])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` (apply ``b`` first). ``(..., 4), (..., 4) -> (..., 4)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    terms = _products(a, b)[..., _MUL_TERMS] * _MUL_SIGNS
    return ((terms[..., 0] + terms[..., 1]) + terms[..., 2]) + terms[..., 3]


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def align_hemisphere(q: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip ``q`` to the reference's hemisphere (``q`` and ``-q`` are the same rotation)."""
    dot = np.add.reduce(np.asarray(q) * np.asarray(reference), axis=-1, keepdims=True)  # np.sum, less overhead
    return np.where(dot < 0, -q, q)


def quat_angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle in radians between rotations. ``(..., 4), (..., 4) -> (...)``."""
    dot = np.abs(np.add.reduce(normalize_quat(a) * normalize_quat(b), axis=-1))
    return 2.0 * np.arccos(np.minimum(np.maximum(dot, 0.0), 1.0))  # np.clip


def slerp(a: np.ndarray, b: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Shortest-path spherical interpolation; ``alpha=0`` gives ``a``. ``(..., 4) -> (..., 4)``."""
    a = normalize_quat(a)
    b = align_hemisphere(normalize_quat(b), a)
    alpha = np.asarray(alpha, dtype=np.float64)[..., None] if np.ndim(alpha) else float(alpha)
    dot = np.minimum(np.maximum(np.add.reduce(a * b, axis=-1, keepdims=True), -1.0), 1.0)  # np.clip
    omega = np.arccos(dot)
    so = np.sin(omega)
    near = so < 1e-6
    if near.any():
        wa = np.where(near, 1.0 - alpha, np.sin((1.0 - alpha) * omega) / np.where(near, 1.0, so))
        wb = np.where(near, alpha, np.sin(alpha * omega) / np.where(near, 1.0, so))
    else:  # the same weights, without the nearly-parallel branch
        wa = np.sin((1.0 - alpha) * omega) / so
        wb = np.sin(alpha * omega) / so
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
