"""The neural generator (AniPortraitGAN adapted, docs/neural_generator.md): identity -> baked
radiance maps once, then (expression, pose, camera) -> RGBA frames.

Per identity (``bake``): the mapping networks give the styles; an orthographic canonical pass over
the map grid (x, y in +-``map_extent``, z from +``map_depth`` to -``map_depth``, looking down -Z)
finds every level's first crossing, the radiance net is evaluated there with the fixed view
direction (0, 0, -1), giving LR maps of rgb, alpha and features per level (facts §5.1), and the
StyleRRDB super-resolves them into HR rgba maps (sigmoid, §5.2). Map texels sit at texel
centres (``x_i = (-1 + (2 i + 1) / R) * extent``, row 0 at the lowest y), so ``grid_sample`` with
``align_corners=False`` reads them exactly (APG's grid has a half-texel offset, facts §5.3; we have
no checkpoint to match).

Per frame (``render``): LR rays (``ray_resolution``) -> ``coarse_samples`` uniform samples between
near and far -> inverse LBS + D_P (``skinning.PoseDeformer``) -> both the posed and the canonical
samples refined to ``fine_samples`` by linear interpolation -> D_e displacement -> manifold
predictor -> first crossings of every level -> LR intersections upsampled to the output size
(bilinear, align_corners=True, on our pixel-centre ray lattice, ``rays``) -> one 4-D grid_sample of
each level's HR map (levels folded into the batch; border padding, align_corners=False) -> validity
(upsampled LR validity > 0.99) -> sort by target-space depth and composite (RGBA, premultiplied).
No network runs per output pixel. Static shapes given the config and the size, no ``.item()``,
no Python branching on tensor values: ``FrameRenderModule`` wraps it for ``torch.onnx.export``.

Stage-1 training (``render_direct``): the same trace at LR ray resolution, then the radiance net
at the canonical intersections with the real (target-space) view directions, no baking.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from puppet.generator.config import EXPRESSION_DIM, POSE_JOINTS, GeneratorConfig
from puppet.generator.manifolds import alpha_from_sigma, composite, first_crossings
from puppet.generator.networks import (ExpressionDeformNet, ManifoldPredictor, MappingNetwork, RadianceNet,
                                       StyleRRDBNet)
from puppet.generator.rays import RayCamera, camera_rays, ray_points, sample_distances
from puppet.generator.rig import RigTensors
from puppet.generator.skinning import PoseDeformation, PoseDeformer

FAR_AWAY = 1.0e4
"""Depth given to invalid intersections so they sort behind every valid one (alpha 0 anyway)."""


@dataclass(frozen=True, eq=False)
class IdentityStyles:
    """Per-identity outputs of the mapping networks: ``z_id (B, identity_dim)`` (D_e needs it per
    frame), ``radiance (B, 2 (layers + 1) width)`` raw FiLM frequencies then phases, ``sr (B, style_dim)``."""

    z_id: torch.Tensor
    radiance: torch.Tensor
    sr: torch.Tensor


@dataclass(frozen=True, eq=False)
class BakedIdentity:
    """What ``bake`` computes once per identity: ``z_id (B, identity_dim)``, ``lr_maps
    (B, L, 4 + feature_dim, R, R)`` (rgb, alpha, features; row 0 = lowest y), ``hr_maps
    (B, L, 4, R s, R s)`` rgba in (0, 1)."""

    z_id: torch.Tensor
    lr_maps: torch.Tensor
    hr_maps: torch.Tensor

    @property
    def batch(self) -> int:
        return self.z_id.shape[0]


@dataclass(frozen=True, eq=False)
class RenderAux:
    """Intermediate tensors for the deformation losses, at the LR ray grid ``g x g``:
    ``neutral_points (B, g g S_f, 3)`` the fine samples after inverse LBS (D_e's input),
    ``displacement (B, g g S_f, 3)`` D_e's output there (canonical = neutral + displacement),
    ``intersections (B, g g, L, 3)`` canonical intersections, ``valid (B, g g, L)``, ``s (B, g g, S_f)``
    the manifold field along the rays, ``pose`` the ``PoseDeformation`` (raw and smoothed volumes;
    None without pose deformation)."""

    neutral_points: torch.Tensor
    displacement: torch.Tensor
    intersections: torch.Tensor
    valid: torch.Tensor
    s: torch.Tensor
    pose: PoseDeformation | None


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """A rendered batch: ``rgb (B, 3, H, W)`` in [0, 1] premultiplied by ``alpha (B, 1, H, W)``
    (coverage), ``depth (B, 1, H, W)`` the weight-averaged distance from the camera along the ray
    (meaningful where alpha > 0), ``aux`` for the losses."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    aux: RenderAux

    @property
    def rgba(self) -> torch.Tensor:
        """``(B, 4, H, W)`` premultiplied."""
        return torch.cat([self.rgb, self.alpha], dim=1)


@dataclass(frozen=True, eq=False)
class _Trace:
    grid: int
    dirs: torch.Tensor  # (B, g, g, 3)
    target: torch.Tensor  # (B, g g, L, 3) target-space intersections
    canonical: torch.Tensor  # (B, g g, L, 3)
    valid: torch.Tensor  # (B, g g, L)
    depth: torch.Tensor  # (B, g g, L) distance of the target intersection from the camera
    aux: RenderAux


def texel_centers(resolution: int, extent: float, device: torch.device | None = None) -> torch.Tensor:
    """Coordinates of ``resolution`` texel centres over [-extent, extent]. ``-> (resolution,)``."""
    return (torch.arange(resolution, device=device, dtype=torch.float32) * 2.0 + 1.0 - resolution) / resolution * extent


def _linear_refine_indices(coarse: int, fine: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constant gather indices and weights of a linear, align_corners=True resampling of ``coarse``
    samples to ``fine``."""
    pos = torch.linspace(0.0, coarse - 1.0, fine, dtype=torch.float64)
    lo = pos.floor().clamp(max=coarse - 2).long()
    return lo, lo + 1, (pos - lo).float()


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``fn`` over ``x (B, N, C)`` in static chunks of N (memory only; the same result)."""
    if chunk is None or x.shape[1] <= chunk:
        return fn(x)
    return torch.cat([fn(x[:, i:i + chunk]) for i in range(0, x.shape[1], chunk)], dim=1)


class Generator(nn.Module):
    """The neural generator (module docstring). Build with a ``GeneratorConfig``.

    ``point_chunk``: evaluate the per-point networks (D_e, manifold predictor, radiance net) over at
    most this many points at a time (CPU memory at published sizes); None = all at once (export).
    """

    def __init__(self, config: GeneratorConfig, point_chunk: int | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.point_chunk = point_chunk
        latent = c.identity_dim + c.noise_dim
        self.radiance = RadianceNet(c.radiance_layers, c.radiance_width, c.feature_dim)
        self.radiance_mapping = MappingNetwork(latent, c.mapping_width, self.radiance.modulation_dim,
                                               c.mapping_layers, last_scale=0.25)
        self.manifold = ManifoldPredictor(c.manifold_width, c.manifold_layers, c.manifold_center, c.manifold_radii,
                                          (c.level_max, c.level_min))
        self.deform = ExpressionDeformNet(c.identity_dim + c.expression_dim, c.deform_input_dim, c.deform_width,
                                          c.deform_layers, c.deform_mapping_width, c.mapping_layers)
        self.sr = StyleRRDBNet(c.map_channels, 4, c.sr_nf, c.sr_nb, c.sr_gc, c.sr_up_channels)
        assert self.sr.style_dim == c.sr_style_dim and self.sr.scale == c.sr_scale
        self.sr_mapping = MappingNetwork(latent, c.mapping_width, c.sr_style_dim, c.mapping_layers, last_scale=1.0)
        self.pose_deformer = PoseDeformer(c.pose_kernel_depth) if c.use_pose_deformation else None
        self.register_buffer("levels", torch.tensor(c.level_values, dtype=torch.float32), persistent=False)
        lo, hi, w = _linear_refine_indices(c.coarse_samples, c.fine_samples)
        self.register_buffer("refine_lo", lo, persistent=False)
        self.register_buffer("refine_hi", hi, persistent=False)
        self.register_buffer("refine_w", w, persistent=False)

    # ------------------------------------------------------------------ identity
    def styles(self, z_id: torch.Tensor, noise: torch.Tensor) -> IdentityStyles:
        """Mapping networks: ``z_id (B, identity_dim)``, ``noise (B, noise_dim)`` -> ``IdentityStyles``."""
        c = self.config
        _check(z_id, (None, c.identity_dim), "z_id")
        _check(noise, (z_id.shape[0], c.noise_dim), "noise")
        latent = torch.cat([z_id, noise], dim=-1)
        return IdentityStyles(z_id=z_id, radiance=self.radiance_mapping(latent), sr=self.sr_mapping(latent))

    def bake(self, z_id: torch.Tensor, noise: torch.Tensor) -> BakedIdentity:
        """Styles, the orthographic canonical pass and super-resolution (module docstring)."""
        return self.bake_styles(self.styles(z_id, noise))

    def bake_styles(self, styles: IdentityStyles) -> BakedIdentity:
        """``bake`` from precomputed (e.g. truncated) styles."""
        c = self.config
        b, r, n_lv = styles.z_id.shape[0], c.map_resolution, c.levels
        device = styles.z_id.device
        coords = texel_centers(r, c.map_extent, device)
        zs = torch.linspace(c.map_depth, -c.map_depth, c.map_samples, device=device)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # row = y (row 0 lowest), column = x
        pts = torch.stack([xx[..., None].expand(r, r, c.map_samples), yy[..., None].expand(r, r, c.map_samples),
                           zs.expand(r, r, c.map_samples)], dim=-1).reshape(1, r * r, c.map_samples, 3)
        s = _chunked(self.manifold, pts.reshape(1, -1, 3), self.point_chunk).reshape(1, r * r, c.map_samples)
        cross = first_crossings(s, self.levels, (pts,), c.min_gap)  # identity-independent (M has no latent)
        inter = cross.values[0].reshape(1, -1, 3).expand(b, -1, 3)
        view = torch.tensor([0.0, 0.0, -1.0], device=device).expand(b, inter.shape[1], 3)
        rgb, sigma, feat = self._radiance(inter, view, styles.radiance)
        alpha = alpha_from_sigma(sigma, c.alpha_delta) * cross.valid.reshape(1, -1, 1)
        lr = torch.cat([rgb, alpha, feat], dim=-1).reshape(b, r, r, n_lv, c.map_channels).permute(0, 3, 4, 1, 2)
        hr = self.sr(lr.reshape(b * n_lv, c.map_channels, r, r), styles.sr.repeat_interleave(n_lv, dim=0))
        rh = c.hr_map_resolution
        return BakedIdentity(z_id=styles.z_id, lr_maps=lr, hr_maps=hr.reshape(b, n_lv, 4, rh, rh))

    # ------------------------------------------------------------------ per frame
    def expression_displacement(self, points: torch.Tensor, z_id: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """D_e: displacement target -> canonical at ``points (B, N, 3)`` (gen units) -> ``(B, N, 3)``."""
        _check(expression, (z_id.shape[0], self.config.expression_dim), "expression")
        cond = torch.cat([z_id, expression], dim=-1)
        return _chunked(lambda p: self.deform(p, cond), points, self.point_chunk)

    def render(self, baked: BakedIdentity, rig: RigTensors | None, expression: torch.Tensor, pose: torch.Tensor,
               camera: RayCamera, size: int, use_lr_maps: bool = False) -> RenderOutput:
        """The per-frame path (module docstring): ``expression (B, 52)``, ``pose (B, 6, 3)``
        axis-angle, ``camera`` B cameras -> ``RenderOutput`` of ``size`` x ``size``.
        ``use_lr_maps``: read the LR maps' rgba instead of the HR maps (the LR preview, for the
        stage-2 consistency loss). ``rig`` may be None only without pose deformation."""
        c = self.config
        b = baked.batch
        maps = baked.lr_maps[:, :, :4] if use_lr_maps else baked.hr_maps
        tr = self._trace(baked.z_id, rig, expression, pose, camera, size)
        g, n_lv = tr.grid, c.levels

        def up(x: torch.Tensor) -> torch.Tensor:  # (B, g g, L, C) -> (B, L, C, size, size)
            ch = x.shape[-1]
            x = x.reshape(b, g, g, n_lv * ch).permute(0, 3, 1, 2)
            if g != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
            return x.reshape(b, n_lv, ch, size, size)

        canon = up(tr.canonical)
        valid = up(tr.valid.unsqueeze(-1))[:, :, 0] > c.hr_valid_threshold
        depth = up(tr.depth.unsqueeze(-1))[:, :, 0]  # raw distances: no FAR_AWAY leaking into neighbours
        grid = (canon[:, :, :2] / c.map_extent).permute(0, 1, 3, 4, 2).reshape(b * n_lv, size, size, 2)
        rm = maps.shape[-1]
        rgba = F.grid_sample(maps.reshape(b * n_lv, 4, rm, rm), grid, mode="bilinear", padding_mode="border",
                             align_corners=False).reshape(b, n_lv, 4, size, size)
        alpha = rgba[:, :, 3] * valid.to(rgba.dtype)
        depth = torch.where(valid, depth, torch.full_like(depth, FAR_AWAY))
        comp = composite(rgba[:, :, :3].permute(0, 3, 4, 1, 2), alpha.permute(0, 2, 3, 1), depth.permute(0, 2, 3, 1))
        return RenderOutput(rgb=comp.rgb.permute(0, 3, 1, 2), alpha=comp.alpha.unsqueeze(1),
                            depth=comp.depth.unsqueeze(1), aux=tr.aux)

    def render_direct(self, styles: IdentityStyles, rig: RigTensors | None, expression: torch.Tensor,
                      pose: torch.Tensor, camera: RayCamera, size: int, jitter: bool = False,
                      generator: torch.Generator | None = None) -> RenderOutput:
        """Stage-1 training path: the radiance net at the canonical intersections of the LR rays
        (``min(ray_resolution, size)`` per side) with the real view directions, composited, then
        upsampled to ``size`` (bilinear, align_corners=True: the ray lattice spans the output's
        pixel centres). ``jitter``: stratified sample jitter along the rays (``generator`` seeds it)."""
        c = self.config
        tr = self._trace(styles.z_id, rig, expression, pose, camera, size, jitter, generator)
        b, g, n_lv = styles.z_id.shape[0], tr.grid, c.levels
        dirs = tr.dirs.reshape(b, g * g, 1, 3).expand(b, g * g, n_lv, 3).reshape(b, -1, 3)
        rgb, sigma, _ = self._radiance(tr.canonical.reshape(b, -1, 3), dirs, styles.radiance)
        alpha = alpha_from_sigma(sigma, c.alpha_delta).reshape(b, g * g, n_lv) * tr.valid
        depth = torch.where(tr.valid > 0, tr.depth, torch.full_like(tr.depth, FAR_AWAY))
        comp = composite(rgb.reshape(b, g * g, n_lv, 3), alpha, depth)

        def image(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(b, g, g, -1).permute(0, 3, 1, 2)
            return x if g == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)

        return RenderOutput(rgb=image(comp.rgb), alpha=image(comp.alpha.unsqueeze(-1)),
                            depth=image(comp.depth.unsqueeze(-1)), aux=tr.aux)

    # ------------------------------------------------------------------ internals
    def ray_grid(self, size: int) -> int:
        """Rays per side for an output of ``size``: ``ray_resolution``, or fewer (even) for small outputs."""
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"render size must be an int >= 2, got {size!r}")
        return min(self.config.ray_resolution, size - size % 2)

    def _radiance(self, points: torch.Tensor, dirs: torch.Tensor, modulation: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.point_chunk is None or points.shape[1] <= self.point_chunk:
            return self.radiance(points, dirs, modulation)
        k = self.point_chunk
        parts = [self.radiance(points[:, i:i + k], dirs[:, i:i + k], modulation) for i in range(0, points.shape[1], k)]
        return tuple(torch.cat(p, dim=1) for p in zip(*parts))  # type: ignore[return-value]

    def _refine(self, x: torch.Tensor) -> torch.Tensor:
        """Linear resampling along the samples axis (-2) from coarse to fine."""
        w = self.refine_w.to(x.dtype).unsqueeze(-1)
        return x.index_select(-2, self.refine_lo) * (1.0 - w) + x.index_select(-2, self.refine_hi) * w

    def _trace(self, z_id: torch.Tensor, rig: RigTensors | None, expression: torch.Tensor, pose: torch.Tensor,
               camera: RayCamera, size: int, jitter: bool = False, generator: torch.Generator | None = None) -> _Trace:
        c = self.config
        b = z_id.shape[0]
        g = self.ray_grid(size)
        if camera.batch != b:
            raise ValueError(f"camera batch {camera.batch} != identity batch {b}")
        _check(pose, (b, POSE_JOINTS, 3), "pose")
        _check(expression, (b, EXPRESSION_DIM), "expression")
        origins, dirs = camera_rays(camera, size, g)
        t = sample_distances(camera.near, camera.far, c.coarse_samples, generator, jitter, shape=(g, g))
        pts = ray_points(origins, dirs, t)  # (B, g, g, S_c, 3) target space
        deformation = None
        if self.pose_deformer is not None:
            if rig is None:
                raise ValueError("this generator deforms by pose: render needs the rig")
            deformation = self.pose_deformer(rig, pose, pts)
            neutral = deformation.canonical
        else:
            neutral = pts
        target_f = self._refine(pts).reshape(b, g * g, c.fine_samples, 3)
        neutral_f = self._refine(neutral).reshape(b, -1, 3)
        disp = self.expression_displacement(neutral_f, z_id, expression)
        canon = neutral_f + disp
        s = _chunked(self.manifold, canon, self.point_chunk).reshape(b, g * g, c.fine_samples)
        cross = first_crossings(s, self.levels, (target_f, canon.reshape(b, g * g, c.fine_samples, 3)), c.min_gap)
        target, canonical = cross.values
        depth = torch.linalg.vector_norm(target - origins[:, None, None, :], dim=-1)
        aux = RenderAux(neutral_points=neutral_f, displacement=disp, intersections=canonical, valid=cross.valid,
                        s=s, pose=deformation)
        return _Trace(grid=g, dirs=dirs, target=target, canonical=canonical, valid=cross.valid, depth=depth, aux=aux)

    def extra_repr(self) -> str:
        c = self.config
        return (f"levels={c.levels}, rays={c.ray_resolution}x{c.ray_resolution}x{c.coarse_samples}->{c.fine_samples}, "
                f"maps={c.map_resolution}->{c.hr_map_resolution}")


class FrameRenderModule(nn.Module):
    """``Generator.render`` with flat tensor inputs, for ``torch.onnx.export`` / TensorRT.

    Static per instance: ``size``, the camera's ``fov_deg`` and the rig's skeleton topology
    (``parents``, ``driven``, ``head_bone`` of ``rig_template``). ``forward(hr_maps (B, L, 4, R, R),
    z_id, expression (B, 52), pose (B, 6, 3), cam2world (B, 4, 4), near (B,), far (B,), *rig tensors
    in ``RIG_TENSOR_FIELDS`` order)`` -> ``rgb (B, 3, size, size)``, ``alpha (B, 1, size, size)``.
    """

    RIG_TENSOR_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RigTensors)
                                               if f.name not in ("parents", "driven", "head_bone"))

    def __init__(self, generator: Generator, size: int, fov_deg: float, rig_template: RigTensors | None) -> None:
        super().__init__()
        self.generator, self.size, self.fov_deg = generator, size, float(fov_deg)
        self.topology = None if rig_template is None else {
            "parents": rig_template.parents, "driven": rig_template.driven, "head_bone": rig_template.head_bone}

    def rig_inputs(self, rig: RigTensors) -> tuple[torch.Tensor, ...]:
        """The rig's tensors in the order ``forward`` takes them."""
        return tuple(getattr(rig, name) for name in self.RIG_TENSOR_FIELDS)

    def forward(self, hr_maps: torch.Tensor, z_id: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                cam2world: torch.Tensor, near: torch.Tensor, far: torch.Tensor, *rig: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        rig_t = None
        if self.topology is not None:
            rig_t = RigTensors(**dict(zip(self.RIG_TENSOR_FIELDS, rig)), **self.topology)
        baked = BakedIdentity(z_id=z_id, lr_maps=hr_maps, hr_maps=hr_maps)  # lr_maps unused here
        out = self.generator.render(baked, rig_t, expression, pose, RayCamera(cam2world, self.fov_deg, near, far),
                                    self.size)
        return out.rgb, out.alpha


def _check(t: torch.Tensor, shape: tuple[int | None, ...], name: str) -> None:
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
