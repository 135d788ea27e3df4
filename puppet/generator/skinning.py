"""Pose deformation of the neural generator (AniPortraitGAN's inverse LBS + D_P, facts §6), in torch.

Per frame, the contract's pose (axis-angle of SMPL joints 12-17) drives the rig's bones exactly as
the mesh engine drives anny's (``avatar_model.driven_rotations``, ``forward_kinematics``), which
gives ``bone_transforms`` (rest -> posed, generator frame). Points sampled along the portrait rays
live in the posed ("target") space; the radiance lives in the canonical (rest) space, so each
point is taken back with the inverse of the skinning transform of its nearest posed skin vertex:

1. per skin vertex, the blended forward matrix ``A_v = sum_k w_vk G_k`` is inverted in closed
   form (blend first, then invert, as APG does);
2. the sample grid ``(B, H, W, S)`` is taken at half resolution (means of 2 x 2 x 2 blocks: the
   block centres, which is where ``align_corners=False`` upsampling puts the half-resolution
   values) and each of its points takes the inverse of its nearest posed skin vertex;
3. the 16 matrix entries form a volume ``(B, 16, S/2, H/2, W/2)`` that ``LbsSmoother`` (D_P, a
   learnable sum-normalised depthwise blur) smooths and brings to full resolution;
4. every sample is mapped with its smoothed matrix.

Everything is written for export (ONNX / TensorRT): static shapes, Python loops only over sizes
fixed by the shapes (bones, query chunks), closed-form inverses (no ``linalg.inv``), gathers but
no scatters, plain matmuls, ``conv3d`` and ``interpolate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from puppet.contract import NUM_EXPRESSIONS, NUM_POSE_JOINTS, SmplJoint, pose_row
from puppet.generator.rig import RigTensors

MATRIX_CHANNELS = 16  # a 4 x 4 matrix per volume cell
DEFAULT_KERNEL_DEPTH = 5  # k_d of APG's LbsSmoother: kernels 5 x 9 x 9 (facts §6.5)
DEFAULT_CHUNK_SIZE = 8192  # queries per nearest-vertex chunk: 8192 x V floats (118 MB at V = 3595)

_SMALL = 1e-8

_NECK, _L_COLLAR, _R_COLLAR, _HEAD, _L_SHOULDER, _R_SHOULDER = (pose_row(j) for j in (
    SmplJoint.NECK, SmplJoint.LEFT_COLLAR, SmplJoint.RIGHT_COLLAR, SmplJoint.HEAD,
    SmplJoint.LEFT_SHOULDER, SmplJoint.RIGHT_SHOULDER))
assert _R_COLLAR == _L_COLLAR + 1 and _R_SHOULDER == _L_SHOULDER + 1  # (left, right) rows are adjacent


# ----------------------------------------------------------------------------- rotations

def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices. ``(..., 3) -> (..., 3, 3)``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix_torch(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, with finite gradients at zero. ``(..., 3) -> (..., 3, 3)``."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)  # sin t / t
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta * theta))  # (1 - cos t) / t^2
    k = _skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion_torch(m: torch.Tensor) -> torch.Tensor:
    """Shepperd's method (each of its four candidates is exact where its pivot is large; the
    largest is taken with a gather). ``(..., 3, 3) -> (..., 4)`` xyzw, unit, w >= 0."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    p0, p1, p2 = 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22
    p3 = 1 + m00 + m11 + m22
    s01, s02, s12 = m01 + m10, m02 + m20, m12 + m21
    d21, d02, d10 = m21 - m12, m02 - m20, m10 - m01
    cand = torch.stack([p0, s01, s02, d21, s01, p1, s12, d02, s02, s12, p2, d10, d21, d02, d10, p3],
                       dim=-1).reshape(m.shape[:-2] + (4, 4))  # row i = 4 q_i q
    pick = torch.stack([p0, p1, p2, p3], dim=-1).argmax(-1)
    q = torch.gather(cand, -2, pick[..., None, None].expand(m.shape[:-2] + (1, 4)))[..., 0, :]
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True).clamp_min(_SMALL))
    return torch.where(q[..., 3:4] < 0, -q, q)


def quaternion_to_matrix_torch(q: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` unit xyzw -> ``(..., 3, 3)``."""
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def fractional_rotation_torch(m: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``m`` to the power ``t`` (same axis, ``t`` times its angle in [0, pi]), as
    ``rotations.fractional_rotation``. ``(..., 3, 3), t scalar or (...) -> (..., 3, 3)``."""
    q = matrix_to_quaternion_torch(m)
    v, w = q[..., :3], q[..., 3:4]
    s2 = (v * v).sum(-1, keepdim=True)
    small = s2 < 1e-12
    s = torch.sqrt(torch.where(small, torch.ones_like(s2), s2))
    half = torch.atan2(s, w)  # half the angle, in [0, pi/2]
    t = t.to(m.dtype) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=m.dtype, device=m.device)
    t = t[..., None] if t.ndim else t
    ratio = torch.where(small, t * torch.ones_like(s), torch.sin(t * half) / s)  # sin(t h) / sin(h)
    return quaternion_to_matrix_torch(torch.cat([v * ratio, torch.cos(t * half)], dim=-1))


def driven_rotations_torch(pose: torch.Tensor, corrections: torch.Tensor,
                           shoulder_share: torch.Tensor | float) -> torch.Tensor:
    """Local rotations of the ``DRIVEN_BONES`` (``avatar_model.driven_rotations``, batched).

    ``pose (B, 6, 3)`` axis-angle (contract rows), ``corrections (B, 6, 3, 3)`` or ``(6, 3, 3)``,
    ``shoulder_share (B,)`` or a float -> ``(B, 10, 3, 3)``.
    """
    b = pose.shape[0]
    r = axis_angle_to_matrix_torch(torch.cat([pose, pose[:, _NECK:_NECK + 1] / 3.0], dim=1))  # B x 7 x 3 x 3
    c = corrections.expand(b, NUM_POSE_JOINTS, 3, 3)
    ct = c.transpose(-1, -2)
    # Slices, not lists: indexing with a Python list makes an index tensor on the host and copies
    # it to the device on every call (a sync in eager mode; forbidden inside CUDA-graph capture).
    collars, shoulders = slice(_L_COLLAR, _R_COLLAR + 1), slice(_L_SHOULDER, _R_SHOULDER + 1)
    s = c[:, collars] @ r[:, shoulders] @ ct[:, shoulders]  # B x 2 x 3 x 3
    if isinstance(shoulder_share, torch.Tensor):  # (a traced input must stay an input)
        share = shoulder_share.to(pose.dtype).reshape(-1, 1).expand(b, 2)
    else:
        share = torch.tensor(float(shoulder_share), dtype=pose.dtype, device=pose.device)
    part = fractional_rotation_torch(s, share)
    neck = r[:, 6:7].expand(b, 3, 3, 3)
    head = (c[:, _NECK] @ r[:, _HEAD] @ ct[:, _HEAD])[:, None]
    collar = r[:, collars] @ ct[:, collars]
    upper = part.transpose(-1, -2) @ s
    return torch.cat([neck, head, collar, part, upper], dim=1)  # the order of DRIVEN_BONES


# ----------------------------------------------------------------------------- kinematics

def forward_kinematics_torch(local: torch.Tensor, heads: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Skinning transforms (``avatar_model.forward_kinematics``, batched, homogeneous).

    ``local (B, K, 3, 3)`` rotations in each bone's axis-aligned rest frame, ``heads (B, K, 3)``
    rest joints, ``parents`` (K Python ints, parents first, -1 = world) -> ``(B, K, 4, 4)`` with
    ``x_posed = G[:3, :3] x_rest + G[:3, 3]``.
    """
    glob: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    for k, p in enumerate(parents):  # static: the tree is fixed
        if p < 0:
            glob.append(local[:, k])
            pos.append(heads[:, k])
        else:
            glob.append(glob[p] @ local[:, k])
            pos.append((glob[p] @ (heads[:, k] - heads[:, p])[..., None])[..., 0] + pos[p])
    rot = torch.stack(glob, dim=1)
    trans = torch.stack(pos, dim=1) - (rot @ heads[..., None])[..., 0]
    return homogeneous(rot, trans)


def homogeneous(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """``rot (..., 3, 3), trans (..., 3) -> (..., 4, 4)`` with last row (0, 0, 0, 1)."""
    top = torch.cat([rot, trans[..., None]], dim=-1)
    zero = torch.zeros_like(trans[..., None, :])  # (..., 1, 3)
    bottom = torch.cat([zero, torch.ones_like(zero[..., :1])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def bone_transforms(rig: RigTensors, pose: torch.Tensor) -> torch.Tensor:
    """Rest -> posed transforms of the rig's bones in the generator frame.
    ``pose (B, 6, 3)`` axis-angle -> ``(B, K, 4, 4)``."""
    _check(pose, (rig.batch_size, NUM_POSE_JOINTS, 3), "pose")
    driven = driven_rotations_torch(pose, rig.corrections, rig.shoulder_share)
    slot = {bone: j for j, bone in enumerate(rig.driven)}
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device).expand(pose.shape[0], 3, 3)
    local = torch.stack([driven[:, slot[k]] if k in slot else eye for k in range(rig.num_bones)], dim=1)
    return forward_kinematics_torch(local, rig.heads, rig.parents)


def blend_transforms(weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Per-vertex blended transforms ``A_v = sum_k w_vk G_k``.
    ``weights (B, V, K), transforms (B, K, 4, 4) -> (B, V, 4, 4)``."""
    b, k = transforms.shape[:2]
    return (weights @ transforms.reshape(b, k, 16)).reshape(b, -1, 4, 4)


def apply_affine(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``m[..., :3, :3] p + m[..., :3, 3]``. ``(..., 4, 4) or (..., 3, 4), (..., 3) -> (..., 3)``."""
    return (m[..., :3, :3] * points[..., None, :]).sum(-1) + m[..., :3, 3]


def posed_skin(rig: RigTensors, pose: torch.Tensor) -> torch.Tensor:
    """The rig's skin vertices posed (no expression), generator frame. ``(B, 6, 3) -> (B, V, 3)``."""
    return apply_affine(blend_transforms(rig.skin_weights, bone_transforms(rig, pose)), rig.skin_rest)


def expression_offsets(rig: RigTensors, expression: torch.Tensor) -> torch.Tensor:
    """Faceunit displacements of the rig's face vertices at rest (generator units).
    ``expression (B, 52) -> (B, F, 3)``."""
    _check(expression, (rig.batch_size, NUM_EXPRESSIONS), "expression")
    b, f = rig.face_basis.shape[:2]
    basis = rig.face_basis.permute(0, 1, 3, 2).reshape(b, f * 3, NUM_EXPRESSIONS)
    return (basis @ expression[..., None]).reshape(b, f, 3)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of affine 4 x 4 matrices (last row 0, 0, 0, 1): ``R^-1 = adj(R) / det R``,
    ``t' = -R^-1 t``. ``(..., 4, 4) -> (..., 4, 4)``. A near-singular ``R`` (|det| < 1e-8) is
    divided by +-1e-8 rather than 0."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    co00, co01, co02 = e * i - f * h, f * g - d * i, d * h - e * g  # cofactors of the first row
    det = a * co00 + b * co01 + c * co02
    one = torch.ones_like(det)
    det = torch.where(det.abs() < _SMALL, torch.where(det < 0, -one, one) * _SMALL, det)
    adj = torch.stack([
        co00, c * h - b * i, b * f - c * e,
        co01, a * i - c * g, c * d - a * f,
        co02, b * g - a * h, a * e - b * d,
    ], dim=-1).reshape(m.shape[:-2] + (3, 3))
    rinv = adj / det[..., None, None]
    tinv = -(rinv @ m[..., :3, 3:4])[..., 0]
    return homogeneous(rinv, tinv)


# ----------------------------------------------------------------------------- nearest vertex

def half_resolution(points: torch.Tensor) -> torch.Tensor:
    """The sample grid at half resolution: means of 2 x 2 x 2 blocks (H, W, S even).
    ``(B, H, W, S, C) -> (B, H/2, W/2, S/2, C)``."""
    b, h, w, s, c = points.shape
    if h % 2 or w % 2 or s % 2:
        raise ValueError(f"the sample grid needs even H, W, S, got {(h, w, s)}")
    return points.reshape(b, h // 2, 2, w // 2, 2, s // 2, 2, c).mean(dim=(2, 4, 6))


def nearest_vertex(queries: torch.Tensor, vertices: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Index of the nearest vertex to each query, by ``argmin |v|^2 - 2 q.v`` (``|q - v|^2``
    without the per-query constant ``|q|^2``), ``chunk_size`` queries at a time so that the
    distance block stays ``chunk_size x V``. ``queries (B, N, 3), vertices (B, V, 3) -> (B, N)`` int64."""
    v2 = (vertices * vertices).sum(-1)[:, None, :]  # B x 1 x V
    vt = vertices.transpose(1, 2)
    n = queries.shape[1]
    out = []
    for start in range(0, n, chunk_size):  # static: N is fixed by the grid
        q = queries[:, start:start + chunk_size]
        out.append(torch.baddbmm(v2, q, vt, alpha=-2.0).argmin(-1))
    return torch.cat(out, dim=1)


def inverse_skinning_volume(rig: RigTensors, pose: torch.Tensor, points: torch.Tensor,
                            chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """The inverse-LBS matrices of the half-resolution sample grid (steps 1-2 of the module
    docstring). ``pose (B, 6, 3), points (B, H, W, S, 3)`` (posed space, generator frame)
    -> ``(B, 16, S/2, H/2, W/2)``, row-major matrix entries as channels."""
    b = rig.batch_size
    _check(points, (b, None, None, None, 3), "points")
    forward = blend_transforms(rig.skin_weights, bone_transforms(rig, pose))  # B x V x 4 x 4
    posed = apply_affine(forward, rig.skin_rest)
    inverse = invert_affine(forward).reshape(b, -1, MATRIX_CHANNELS)
    grid = half_resolution(points)  # B x H2 x W2 x S2 x 3
    _, h2, w2, s2, _ = grid.shape
    idx = nearest_vertex(grid.reshape(b, -1, 3), posed, chunk_size)
    cells = torch.gather(inverse, 1, idx[..., None].expand(b, idx.shape[1], MATRIX_CHANNELS))
    return cells.reshape(b, h2, w2, s2, MATRIX_CHANNELS).permute(0, 4, 3, 1, 2)


def apply_volume(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map each sample with its matrix. ``volume (B, 16, S, H, W), points (B, H, W, S, 3) -> (B, H, W, S, 3)``."""
    b, h, w, s, _ = points.shape
    m = volume.permute(0, 3, 4, 2, 1).reshape(b, h, w, s, 4, 4)
    return apply_affine(m, points)


# ----------------------------------------------------------------------------- D_P

def _reflect_pad(x: torch.Tensor, kd: int) -> torch.Tensor:
    """Reflect padding for a ``kd x (2kd-1) x (2kd-1)`` kernel. On the CPU the result is made
    channels-last: oneDNN then runs the depthwise conv3d, whose default CPU kernel is ~2x slower
    forward and 10-20x slower forward + backward (measured: 4.2 s vs 0.3 s at 16 x 16 x 32 x 32).
    Skipped while tracing (the TorchScript ONNX exporter refuses layouts)."""
    ks = 2 * kd - 1
    x = F.pad(x, (ks // 2, ks // 2, ks // 2, ks // 2, kd // 2, kd // 2), mode="reflect")
    if x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


class LbsSmoother(nn.Module):
    """D_P (facts §6.5): two depthwise, sum-normalised ``kd x (2kd-1) x (2kd-1)`` blurs (depth
    along the rays) of the 16-channel transform volume, reflect padding, no bias; block 1 at half
    resolution, trilinear x2 upsampling (align_corners=False), block 2 at full resolution.
    Weights start uniform and are renormalised to sum 1 on every forward, so the output is always
    a weighted average of neighbouring matrices. ``(B, 16, D, H, W) -> (B, 16, 2D, 2H, 2W)``."""

    def __init__(self, kernel_depth: int = DEFAULT_KERNEL_DEPTH, channels: int = MATRIX_CHANNELS) -> None:
        super().__init__()
        if kernel_depth < 1 or kernel_depth % 2 == 0:
            raise ValueError(f"kernel_depth must be odd and positive, got {kernel_depth}")
        self.kernel_depth = kernel_depth  # k_d: kernel kd x (2 kd - 1) x (2 kd - 1)
        self.channels = channels  # one depthwise kernel per matrix entry
        ks = 2 * kernel_depth - 1
        shape = (channels, 1, kernel_depth, ks, ks)
        self.weight1 = nn.Parameter(torch.full(shape, 1.0 / (kernel_depth * ks * ks)))  # half resolution
        self.weight2 = nn.Parameter(torch.full(shape, 1.0 / (kernel_depth * ks * ks)))  # full resolution

    def extra_repr(self) -> str:
        ks = 2 * self.kernel_depth - 1
        return f"channels={self.channels}, kernel=({self.kernel_depth}, {ks}, {ks})"

    def normalized_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both kernels scaled to sum 1 per channel."""
        return tuple(w / w.sum(dim=(1, 2, 3, 4), keepdim=True) for w in (self.weight1, self.weight2))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        _check(volume, (None, self.channels, None, None, None), "volume")
        w1, w2 = self.normalized_weights()
        x = F.conv3d(_reflect_pad(volume, self.kernel_depth), w1, groups=self.channels)
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return F.conv3d(_reflect_pad(x, self.kernel_depth), w2, groups=self.channels)


def smoothness_target(raw: torch.Tensor, kernel_depth: int = DEFAULT_KERNEL_DEPTH) -> torch.Tensor:
    """AvgPool(T) of L_pose_smooth = ||D_P(T) - AvgPool(T)||^2 (facts eq. 11): ``LbsSmoother``
    with its kernels fixed at the uniform average (what D_P starts as), so the loss keeps the
    learnt smoothing near a plain blur. ``(B, 16, D, H, W) -> (B, 16, 2D, 2H, 2W)``."""
    ks = 2 * kernel_depth - 1
    kernel = (kernel_depth, ks, ks)
    x = F.avg_pool3d(_reflect_pad(raw, kernel_depth), kernel, stride=1)
    x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    return F.avg_pool3d(_reflect_pad(x, kernel_depth), kernel, stride=1)


@dataclass(frozen=True, eq=False)
class PoseDeformation:
    """What ``PoseDeformer`` gives: ``canonical (B, H, W, S, 3)`` the samples taken to canonical
    (rest) space; ``raw (B, 16, S/2, H/2, W/2)`` the nearest-vertex inverse matrices and
    ``smoothed (B, 16, S, H, W)`` after D_P (both for the smoothness loss)."""

    canonical: torch.Tensor
    raw: torch.Tensor
    smoothed: torch.Tensor


class PoseDeformer(nn.Module):
    """Inverse LBS with nearest-vertex skinning and the learnable D_P (module docstring).
    ``forward(rig, pose (B, 6, 3), points (B, H, W, S, 3)) -> PoseDeformation``; H, W, S even,
    and the half-resolution grid larger than the padding (S/2 > kd // 2, H/2 and W/2 > kd - 1:
    S >= 6, H, W >= 10 for kd = 5)."""

    def __init__(self, kernel_depth: int = DEFAULT_KERNEL_DEPTH, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.smoother = LbsSmoother(kernel_depth)
        self.chunk_size = chunk_size  # queries per nearest-vertex block (memory, not results)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"

    def forward(self, rig: RigTensors, pose: torch.Tensor, points: torch.Tensor) -> PoseDeformation:
        raw = inverse_skinning_volume(rig, pose, points, self.chunk_size)
        smoothed = self.smoother(raw)
        return PoseDeformation(canonical=apply_volume(smoothed, points), raw=raw, smoothed=smoothed)


def _check(t: torch.Tensor, shape: tuple[int | None, ...], name: str) -> None:
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_KERNEL_DEPTH", "LbsSmoother", "MATRIX_CHANNELS", "PoseDeformation", "PoseDeformer",
    "apply_affine", "apply_volume", "axis_angle_to_matrix_torch", "blend_transforms", "bone_transforms",
    "driven_rotations_torch", "expression_offsets", "forward_kinematics_torch", "fractional_rotation_torch",
    "half_resolution", "homogeneous", "inverse_skinning_volume", "invert_affine", "matrix_to_quaternion_torch",
    "nearest_vertex", "posed_skin", "quaternion_to_matrix_torch", "smoothness_target",
]
