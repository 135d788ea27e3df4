"""Cameras and rays in the generator frame (facts §2; docs/neural_generator.md "Frames").

``RayCamera``: ``cam2world (B, 4, 4)`` (columns right, up, backward, position; the camera looks
down its -Z, OpenGL), vertical ``fov_deg``, ``near`` / ``far`` ``(B,)`` distances along unit rays.

Ray lattice. An image of ``size`` pixels per side is rendered from a ``grid`` x ``grid`` lattice of
rays (``grid <= size``) whose corner rays pass through the centres of the image's corner pixels;
bilinear upsampling with ``align_corners=True`` then lands every output pixel exactly on its
pixel centre (the rasteriser's convention). At ``grid == size`` the rays are the pixel centres.
(APG's rays span NDC -1..1 edge to edge; ours are half a pixel in, so neural and mesh renders of
the same camera line up.)

``orbit_camera_generator`` is ``engines.mesh.orbit_camera`` in the generator frame: contract
camera (yaw, pitch), frontal (0, 0), the frontal camera turned rigidly about the pivot (head joint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from puppet.generator.rig import RigTensors


@dataclass(frozen=True)
class RayCamera:
    """A batch of pinhole cameras in the generator frame (see the module docstring)."""

    cam2world: torch.Tensor
    fov_deg: float
    near: torch.Tensor
    far: torch.Tensor

    def __post_init__(self) -> None:
        c = self.cam2world
        if c.ndim != 3 or c.shape[1:] != (4, 4):
            raise ValueError(f"RayCamera.cam2world must be (B, 4, 4), got {tuple(c.shape)}")
        b = c.shape[0]
        for name in ("near", "far"):
            v = getattr(self, name)
            if v.shape != (b,):
                raise ValueError(f"RayCamera.{name} must be ({b},), got {tuple(v.shape)}")
        if not 0.0 < float(self.fov_deg) < 180.0:
            raise ValueError(f"RayCamera.fov_deg must be in (0, 180), got {self.fov_deg}")
        object.__setattr__(self, "fov_deg", float(self.fov_deg))

    @property
    def batch(self) -> int:
        return self.cam2world.shape[0]

    @property
    def origin(self) -> torch.Tensor:
        """Camera positions ``(B, 3)``."""
        return self.cam2world[:, :3, 3]


def lattice_ndc(size: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """NDC coordinates ``(grid,)`` of a ray lattice for an image of ``size`` pixels: from the
    first pixel centre ``-1 + 1/size`` to the last ``1 - 1/size`` (module docstring)."""
    if not 1 <= grid <= size:
        raise ValueError(f"ray grid {grid} must be in [1, size={size}]")
    edge = 1.0 - 1.0 / size
    if grid == 1:
        return torch.zeros(1, device=device)
    return torch.linspace(-edge, edge, grid, device=device)


def camera_rays(camera: RayCamera, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of a ``grid x grid`` lattice for a ``size`` x ``size`` image: ``origins (B, 3)`` and unit
    ``directions (B, grid, grid, 3)`` in the generator frame, row 0 at the top of the image."""
    device, dtype = camera.cam2world.device, camera.cam2world.dtype
    ndc = lattice_ndc(size, grid, device).to(dtype)
    tan = math.tan(math.radians(camera.fov_deg) / 2.0)
    x = ndc * tan  # square images: aspect 1
    y = -ndc * tan  # rows go down, +Y goes up
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    d_cam = torch.stack([xx, yy, -torch.ones_like(xx)], dim=-1)
    d_cam = d_cam / torch.linalg.vector_norm(d_cam, dim=-1, keepdim=True)
    rot = camera.cam2world[:, :3, :3]
    dirs = (d_cam.reshape(1, grid * grid, 3) @ rot.transpose(1, 2)).reshape(-1, grid, grid, 3)
    return camera.origin, dirs


def sample_distances(near: torch.Tensor, far: torch.Tensor, samples: int,
                     generator: torch.Generator | None = None, jitter: bool = False,
                     shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Distances along the rays: ``samples`` uniform values from ``near`` to ``far`` (both
    included), ``(B, *shape, samples)``. ``jitter`` (training) moves each by up to half a step
    (``generator`` for reproducibility); order and the [near, far] range are kept."""
    steps = torch.linspace(0.0, 1.0, samples, device=near.device, dtype=near.dtype)
    view = (-1,) + (1,) * len(shape) + (1,)
    n, f = near.reshape(view), far.reshape(view)
    t = n + (f - n) * steps
    t = t.expand((near.shape[0],) + tuple(shape) + (samples,))
    if jitter and samples > 1:
        u = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype) - 0.5
        t = torch.minimum(torch.maximum(t + u * (f - n) / (samples - 1), n), f)
    return t


def ray_points(origins: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``origins (B, 3)``, ``dirs (B, H, W, 3)``, ``t (B, H, W, S)`` -> points ``(B, H, W, S, 3)``."""
    return origins[:, None, None, None, :] + dirs.unsqueeze(-2) * t.unsqueeze(-1)


def orbit_rotation(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """``Ry(-yaw) @ Rx(pitch)`` batched (``engines.mesh.orbit_rotation``): ``(B,), (B,) -> (B, 3, 3)``."""
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    z, o = torch.zeros_like(yaw), torch.ones_like(yaw)
    ry = torch.stack([cy, z, -sy, z, o, z, sy, z, cy], dim=-1).reshape(-1, 3, 3)
    rx = torch.stack([o, z, z, z, cp, -sp, z, sp, cp], dim=-1).reshape(-1, 3, 3)
    return ry @ rx


def orbit_camera_generator(target: torch.Tensor, pivot: torch.Tensor, distance: torch.Tensor,
                           yaw: torch.Tensor, pitch: torch.Tensor, fov_deg: float,
                           half_depth: float) -> RayCamera:
    """The portrait camera of ``engines.mesh.orbit_camera`` in the generator frame, batched.

    ``target, pivot (B, 3)``, ``distance (B,)`` (the rig's portrait framing in gen units),
    ``yaw, pitch (B,)`` radians (contract camera, frontal (0, 0)). The frontal camera sits at
    ``target + (0, 0, distance)`` looking at ``target``; both turn by ``orbit_rotation`` about
    ``pivot``, so the camera-to-world rotation IS the orbit rotation. near/far = ``distance -/+
    half_depth`` (the look-at point stays at ``distance``)."""
    r = orbit_rotation(yaw, pitch).to(target.dtype)
    eye0 = target.clone()
    eye0[:, 2] = eye0[:, 2] + distance
    eye = pivot + torch.einsum("bij,bj->bi", r, eye0 - pivot)
    c2w = torch.zeros(target.shape[0], 4, 4, dtype=target.dtype, device=target.device)
    c2w[:, :3, :3] = r
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return RayCamera(cam2world=c2w, fov_deg=fov_deg, near=distance - half_depth, far=distance + half_depth)


def portrait_camera(rig: "RigTensors", yaw: torch.Tensor, pitch: torch.Tensor, fov_deg: float,
                    half_depth: float) -> RayCamera:
    """The mesh engine's portrait camera of each rig in the batch for contract cameras
    ``(yaw, pitch)`` ``(B,)`` (``orbit_camera_generator`` on the rig's portrait framing)."""
    return orbit_camera_generator(rig.portrait_target, rig.portrait_pivot, rig.portrait_distance,
                                  yaw.to(rig.portrait_target.dtype), pitch.to(rig.portrait_target.dtype),
                                  fov_deg, half_depth)
