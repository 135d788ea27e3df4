"""The generator's configuration: every size and constant of the networks and the renderer.

``GeneratorConfig.published()`` follows AniPortraitGAN's released settings (facts sheet
``../shared/notes/aniportraitgan_facts.md``, cited "facts §n"), adapted to our contract (identity
code, 52 expression weights, our generator frame and cameras); ``GeneratorConfig.tiny()`` is the
same architecture at toy widths and resolutions, for tests and CPU experiments.

A config is saved inside every checkpoint as JSON (``to_dict`` / ``from_dict``); ``from_dict``
rejects unknown or missing keys and wrong types with a one-line ``ValueError``, so a foreign or
hand-edited config fails loudly instead of building a different network.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

EXPRESSION_DIM = 52
"""ARKit blendshape weights of the contract."""

POSE_JOINTS = 6
"""SMPL joints 12-17 of the contract, axis-angle each."""

WARP_SCALE = 2.0 / 0.24
"""APG's ``UniformBoxWarp(0.24)``: generator units -> the SIREN input scale (facts §3.1, §4).
Applied ONCE everywhere (no double warp, see ``networks.ManifoldPredictor``)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and constants of the generator (published defaults: facts § in brackets).

    identity / latents
      identity_dim: length of z_id (``identity.IDENTITY_DIM``); noise_dim: length of the noise
      epsilon (80, §1.1); expression_dim: 52 (contract).
    mapping networks (§1.2-1.4): ``mapping_layers`` linear layers (4) of width ``mapping_width``
      (256) for the radiance net and the SR style; ``deform_mapping_width`` (128) for D_e.
    radiance net (§4): ``radiance_layers`` (8) FiLM-SIREN layers of ``radiance_width`` (256),
      a colour FiLM layer, multi-exit heads, ``feature_dim`` (32) features for the SR maps.
    manifold predictor (§3.1): MLP 3 -> ``manifold_width`` x ``manifold_layers`` -> 1 (3-128-128-128-1);
      ``levels`` iso-levels linspace(``level_max``, ``level_min``) (24 levels, 23 -> 8, §3.2);
      ``manifold_center`` / ``manifold_radii``: where the levels start, as spheres about the centre
      with radii from ``manifold_radii[1]`` (level_max) to ``manifold_radii[0]`` (level_min), gen units
      (our geometric init, see ``networks.ManifoldPredictor``); ``min_gap`` (0.05, §3.3).
    expression deformation D_e (§7): input ``deform_input_dim`` (7: point and 4 zeros, as APG),
      ``deform_layers`` (3) FiLM layers of ``deform_width`` (128).
    rays (§2.2): ``ray_resolution`` (128) LR ray grid per side; ``coarse_samples`` (64) uniform samples
      per ray, refined to ``fine_samples`` (256) by linear interpolation; ``ray_half_depth`` (0.22):
      near/far = distance to the look-at point -/+ this (gen units).
    maps (§5.1): ``map_resolution`` (128) LR map texels per side over x, y in +-``map_extent`` (0.22),
      ``map_samples`` (64) orthographic samples over z in +-``map_depth`` (0.2).
    super-resolution (§5.2): ``sr_scale`` (4), StyleRRDB ``sr_nf`` (64), ``sr_nb`` (4), ``sr_gc`` (32),
      ``sr_up_channels`` ((64, 32), one per x2 step).
    rendering: ``alpha_delta`` (0.04, softplus, §4); ``hr_valid_threshold`` (0.99, §3.3).
    cameras: ``portrait_fov_deg`` (14, ours = the mesh engine's), ``face_fov_deg`` (12, §2.3).
    rig: ``skin_vertices`` (3595, §6.4), ``face_vertices`` (1024, ``rig.DEFAULT_FACE_VERTICES``);
      ``pose_kernel_depth`` (5: D_P kernels 5 x 9 x 9, §6.5); ``use_pose_deformation`` (inverse LBS +
      D_P, ``skinning.PoseDeformer``); off only for tests of the rest of the renderer.
    """

    identity_dim: int
    noise_dim: int = 80
    expression_dim: int = EXPRESSION_DIM
    mapping_layers: int = 4
    mapping_width: int = 256
    deform_mapping_width: int = 128
    radiance_layers: int = 8
    radiance_width: int = 256
    feature_dim: int = 32
    manifold_width: int = 128
    manifold_layers: int = 3
    levels: int = 24
    level_max: float = 23.0
    level_min: float = 8.0
    manifold_center: tuple[float, float, float] = (0.0, 0.0, -0.6)
    manifold_radii: tuple[float, float] = (0.5, 0.75)
    min_gap: float = 0.05
    deform_input_dim: int = 7
    deform_layers: int = 3
    deform_width: int = 128
    ray_resolution: int = 128
    coarse_samples: int = 64
    fine_samples: int = 256
    ray_half_depth: float = 0.22
    map_resolution: int = 128
    map_samples: int = 64
    map_extent: float = 0.22
    map_depth: float = 0.2
    sr_scale: int = 4
    sr_nf: int = 64
    sr_nb: int = 4
    sr_gc: int = 32
    sr_up_channels: tuple[int, ...] = (64, 32)
    alpha_delta: float = 0.04
    hr_valid_threshold: float = 0.99
    portrait_fov_deg: float = 14.0
    face_fov_deg: float = 12.0
    skin_vertices: int = 3595
    face_vertices: int = 1024
    pose_kernel_depth: int = 5
    use_pose_deformation: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        object.__setattr__(self, "manifold_center", tuple(float(v) for v in self.manifold_center))
        object.__setattr__(self, "manifold_radii", tuple(float(v) for v in self.manifold_radii))
        object.__setattr__(self, "sr_up_channels", tuple(int(v) for v in self.sr_up_channels))
        for name in ("level_max", "level_min", "min_gap", "ray_half_depth", "map_extent", "map_depth",
                     "alpha_delta", "hr_valid_threshold", "portrait_fov_deg", "face_fov_deg"):
            object.__setattr__(self, name, float(getattr(self, name)))
        positive = ("identity_dim", "expression_dim", "mapping_layers", "mapping_width", "deform_mapping_width",
                    "radiance_layers", "radiance_width", "feature_dim", "manifold_width", "manifold_layers",
                    "levels", "deform_layers", "deform_width", "ray_resolution", "map_resolution", "sr_nf",
                    "sr_nb", "sr_gc", "skin_vertices", "face_vertices", "pose_kernel_depth", "min_gap", "ray_half_depth",
                    "map_extent", "map_depth", "alpha_delta")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"generator config: {name} must be > 0, got {getattr(self, name)!r}")
        if self.noise_dim < 0:
            raise ValueError(f"generator config: noise_dim must be >= 0, got {self.noise_dim}")
        if self.mapping_layers < 2:
            raise ValueError(f"generator config: mapping_layers must be >= 2, got {self.mapping_layers}")
        if self.radiance_layers < 2:
            raise ValueError(f"generator config: radiance_layers must be >= 2, got {self.radiance_layers}")
        if self.level_max <= self.level_min:
            raise ValueError(f"generator config: level_max ({self.level_max}) must exceed level_min ({self.level_min})")
        if not 0.0 < self.manifold_radii[0] < self.manifold_radii[1]:
            raise ValueError(f"generator config: manifold_radii must be 0 < inner < outer, got {self.manifold_radii}")
        if self.pose_kernel_depth % 2 == 0:
            raise ValueError(f"generator config: pose_kernel_depth must be odd, got {self.pose_kernel_depth}")
        if self.deform_input_dim < 3:
            raise ValueError(f"generator config: deform_input_dim must be >= 3, got {self.deform_input_dim}")
        for name in ("coarse_samples", "ray_resolution"):
            if getattr(self, name) < 2 or getattr(self, name) % 2:
                raise ValueError(f"generator config: {name} must be even and >= 2 (the pose deformer "
                                 f"works on a half-resolution grid), got {getattr(self, name)}")
        if self.use_pose_deformation and (self.ray_resolution // 2 <= self.pose_kernel_depth - 1
                                          or self.coarse_samples // 2 <= self.pose_kernel_depth // 2):
            raise ValueError(f"generator config: D_P's padding needs ray_resolution > {2 * self.pose_kernel_depth - 2} "
                             f"and coarse_samples > {2 * (self.pose_kernel_depth // 2)} for pose_kernel_depth "
                             f"{self.pose_kernel_depth}, got {self.ray_resolution} and {self.coarse_samples}")
        if self.fine_samples < self.coarse_samples:
            raise ValueError(f"generator config: fine_samples ({self.fine_samples}) must be >= coarse_samples "
                             f"({self.coarse_samples})")
        if self.map_samples < 2:
            raise ValueError(f"generator config: map_samples must be >= 2, got {self.map_samples}")
        steps = math.log2(self.sr_scale) if self.sr_scale >= 1 else -1
        if self.sr_scale < 1 or steps != int(steps):
            raise ValueError(f"generator config: sr_scale must be a power of two >= 1, got {self.sr_scale}")
        if len(self.sr_up_channels) != int(steps):
            raise ValueError(f"generator config: sr_up_channels needs one entry per x2 step "
                             f"({int(steps)} for sr_scale {self.sr_scale}), got {self.sr_up_channels}")
        if any(c <= 0 for c in self.sr_up_channels):
            raise ValueError(f"generator config: sr_up_channels must be positive, got {self.sr_up_channels}")
        if not 0.0 < self.hr_valid_threshold <= 1.0:
            raise ValueError(f"generator config: hr_valid_threshold must be in (0, 1], got {self.hr_valid_threshold}")
        for name in ("portrait_fov_deg", "face_fov_deg"):
            if not 1.0 <= getattr(self, name) <= 90.0:
                raise ValueError(f"generator config: {name} must be in [1, 90], got {getattr(self, name)}")

    # ---------------------------------------------------------------- presets
    @classmethod
    def published(cls, identity_dim: int | None = None) -> GeneratorConfig:
        """AniPortraitGAN's released sizes (the dataclass defaults), with our identity code."""
        return cls(identity_dim=_default_identity_dim() if identity_dim is None else identity_dim)

    @classmethod
    def tiny(cls, identity_dim: int | None = None) -> GeneratorConfig:
        """The same architecture at toy sizes: a CPU forward + backward at batch 2 in well under a
        second (tests, smoke runs). Not meant to produce good images."""
        return cls(
            identity_dim=_default_identity_dim() if identity_dim is None else identity_dim,
            noise_dim=8, mapping_width=32, deform_mapping_width=16,
            radiance_layers=4, radiance_width=32, feature_dim=4,
            manifold_width=16, manifold_layers=2, levels=12,
            deform_layers=2, deform_width=16,
            ray_resolution=32, coarse_samples=16, fine_samples=32,
            map_resolution=32, map_samples=16,
            sr_scale=2, sr_nf=16, sr_nb=1, sr_gc=8, sr_up_channels=(16,),
            skin_vertices=512, face_vertices=256,
            pose_kernel_depth=3,  # 3 x 5 x 5: relative to a 32-ray grid still wider than 5 x 9 x 9 at 128
        )

    # ---------------------------------------------------------------- derived sizes
    @property
    def level_values(self) -> tuple[float, ...]:
        """The iso-levels, from ``level_max`` (outermost, first hit) to ``level_min``."""
        if self.levels == 1:
            return (self.level_max,)
        step = (self.level_min - self.level_max) / (self.levels - 1)
        return tuple(self.level_max + i * step for i in range(self.levels))

    @property
    def map_channels(self) -> int:
        """Channels of an LR map: rgb (3), alpha (1), features."""
        return 4 + self.feature_dim

    @property
    def hr_map_resolution(self) -> int:
        return self.map_resolution * self.sr_scale

    @property
    def sr_style_dim(self) -> int:
        """Length of the SR style: one scale per input channel of each modulated conv (§1.4)."""
        ups = (self.sr_nf,) + self.sr_up_channels
        return sum(ups) + self.sr_up_channels[-1] if self.sr_up_channels else 2 * self.sr_nf

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: Any) -> GeneratorConfig:
        """Rebuild a config from ``to_dict``'s output. Unknown or missing keys and wrong types
        raise ``ValueError`` naming the key."""
        if not isinstance(data, dict):
            raise ValueError(f"generator config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"generator config: unknown key(s) {', '.join(map(str, unknown))}")
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"generator config: missing key(s) {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = data[f.name]
            _check_type(f.name, v, f.type)
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)


def _default_identity_dim() -> int:
    from puppet.generator.identity import IDENTITY_DIM

    return IDENTITY_DIM


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Strict JSON-level type check of one field (``bool`` is not an int, ints are floats)."""
    ann = str(annotation)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_float(v: Any) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    if ann == "int":
        ok = is_int(value)
    elif ann == "float":
        ok = is_float(value)
    elif ann == "bool":
        ok = isinstance(value, bool)
    elif ann.startswith("tuple[float"):
        size = ann.count("float")
        ok = isinstance(value, (list, tuple)) and len(value) == size and all(is_float(v) for v in value)
    elif ann == "tuple[int, ...]":
        ok = isinstance(value, (list, tuple)) and all(is_int(v) for v in value)
    else:  # pragma: no cover - a field type this checker does not know
        raise TypeError(f"no type check for {name}: {ann}")
    if not ok:
        raise ValueError(f"generator config: {name} must be {ann}, got {value!r}")
