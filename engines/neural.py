"""The neural engine: the AniPortraitGAN-style generator (``puppet.generator``) behind the engine
protocol, in PyTorch (CPU or CUDA).

``bake(avatar)`` does the identity work once: the identity code ``z_id = identity_code(avatar)``,
the noise (``noise`` option: zeros, as for every supervised sample of the synthetic dataset, or a
standard-normal draw seeded by the SHA-256 of the avatar's name), the mapping networks' styles, the
super-resolved radiance maps (``Generator.bake``) and the avatar's rig (``rig_for_avatar``: the mesh
avatar's skinning and its portrait framing in the generator frame; cached on disk and here).

``render(baked, params)`` per frame: the contract camera (yaw, pitch) becomes the mesh engine's
orbit camera (``engines.mesh.orbit_camera``: the frontal portrait camera turned about the head
joint) in the avatar's generator frame (``rays.portrait_camera``), and ``Generator.render`` draws
(expression, pose) through it at ``size``; near/far = the look-at distance -/+ the config's
``ray_half_depth``, as in training. The premultiplied RGBA is quantised to uint8 and composited over
the background with the mesh engine's integer formula (``engines.mesh.composite_over``, here on the
device): RGB = avatar + (1 - alpha) background, alpha = coverage. Per frame the parameters go to
the device in one copy and the image comes back in one; nothing else waits on the device.

Render paths (``path`` option): "baked" reads the HR maps (the real-time path of the paper);
"direct" evaluates the radiance network at the ray intersections (``Generator.render_direct``,
the stage-1 training path: slower, and the only meaningful one for a stage-1 checkpoint, whose
super-resolution net is untrained); "auto" takes "direct" for checkpoints whose ``extra`` says
``stage: 1`` and "baked" otherwise.

Precision: "float32" everywhere; "float16" / "bfloat16" (CUDA only) run the networks under
``torch.autocast`` (weights stay float32; autocast keeps reductions and sorting-sensitive ops in
float32). ``runtime`` names the backend: "torch" here; "onnx" (ONNX Runtime) and "tensorrt" run
the exported per-frame graph, and ``cuda_graphs`` / ``compile`` the fast PyTorch path
(``engines.runtimes``: export, caches and runners live there).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from engines.base import Baked, EngineBase, EngineInfo, RenderedFrame
from engines.mesh import Framing, _load_background
from puppet.avatar import Avatar
from puppet.errors import AssetError
from puppet.params import DriverParams

if TYPE_CHECKING:
    import torch

    from puppet.generator.model import BakedIdentity, Generator, IdentityStyles
    from puppet.generator.rays import RayCamera
    from puppet.generator.rig import Rig, RigTensors

log = logging.getLogger(__name__)

Precision = Literal["float32", "float16", "bfloat16"]
NoiseSource = Literal["zeros", "name"]
RenderPath = Literal["auto", "baked", "direct"]

RUNTIMES: tuple[str, ...] = ("torch", "onnx", "tensorrt")
""""torch" runs here (eagerly) or through ``engines.runtimes`` (CUDA graphs, compile); the others
run the exported graph there."""
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")

DEFAULT_BACKGROUND = (0.34, 0.40, 0.47, 1.0)  # the mesh engine's
CPU_POINT_CHUNK = 1 << 18
"""Points per chunk of the per-point networks on the CPU (the published config has 4.2 M samples
per 512 px frame; all at once would need several GB of activations)."""

_INPUTS = 52 + 18 + 2  # expression, pose, camera: one host -> device copy per frame


@dataclass(frozen=True)
class NeuralEngineOptions:
    """How the neural engine draws.

    checkpoint: a generator checkpoint (``puppet train``'s ``generator.safetensors``).
    size: output width = height in pixels; None = the config's HR size (ray_resolution x
        sr_scale: 512 for the published config).
    background: (r, g, b) or (r, g, b, a) in [0, 1], or the path of an image (scaled to cover),
        as the mesh engine's.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    precision: "float32", or "float16" / "bfloat16" on CUDA (autocast).
    runtime: "torch" (this module), "onnx" (ONNX Runtime) or "tensorrt" (``engines.runtimes``).
    onnx: the .onnx the onnx / tensorrt runtimes run (``puppet export``); None: exported on the
        fly into ``export_cache`` (default ``$PUPPET_CACHE_DIR``; TensorRT engines cached there too).
    threads: ONNX Runtime intra-op threads (None: its default).
    cuda_graphs: torch runtime on CUDA: capture the per-frame render in a CUDA graph.
    compile: torch runtime: ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune").
    noise: "zeros" (the synthetic data's) or "name" (N(0, I) seeded by the avatar's name).
    path: "auto", "baked" or "direct" (module docstring).
    point_chunk: points per chunk of the per-point networks; None = all at once on CUDA,
        ``CPU_POINT_CHUNK`` on the CPU; 0 = all at once.
    rig_cache: where rigs are cached (None: ``$PUPPET_CACHE_DIR/rigs``).
    """

    checkpoint: str | Path
    size: int | None = None
    background: tuple[float, ...] | str | Path = DEFAULT_BACKGROUND
    device: str = "auto"
    precision: Precision = "float32"
    runtime: str = "torch"
    noise: NoiseSource = "zeros"
    path: RenderPath = "auto"
    point_chunk: int | None = None
    rig_cache: str | Path | None = None
    onnx: str | Path | None = None
    export_cache: str | Path | None = None
    threads: int | None = None
    cuda_graphs: bool = False
    compile: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.size is not None and (not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16):
            raise ValueError(f"size must be an int >= 16 or None, got {self.size!r}")
        if isinstance(self.background, (tuple, list)):
            bg = tuple(float(c) for c in self.background)
            if len(bg) not in (3, 4) or not all(0.0 <= c <= 1.0 for c in bg):
                raise ValueError(f"background must be 3 or 4 floats in [0, 1] or an image path, got {self.background}")
            object.__setattr__(self, "background", bg)
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"precision must be float32, float16 or bfloat16, got {self.precision!r}")
        if self.precision != "float32" and self.device == "cpu":
            raise ValueError(f"precision {self.precision} needs a CUDA device (the CPU runs float32)")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime != "torch" and (self.cuda_graphs or self.compile is not None):
            raise ValueError("cuda_graphs and compile are options of the torch runtime")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.cuda_graphs and self.device == "cpu":
            raise ValueError("cuda_graphs needs a CUDA device")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.runtime == "tensorrt" and self.precision == "bfloat16":
            raise ValueError("the tensorrt runtime builds float32 or float16 engines")
        if self.runtime == "onnx" and self.precision != "float32":
            raise ValueError("the onnx runtime runs float32 (runtime tensorrt for float16)")
        if self.noise not in ("zeros", "name"):
            raise ValueError(f"noise must be 'zeros' or 'name', got {self.noise!r}")
        if self.path not in ("auto", "baked", "direct"):
            raise ValueError(f"path must be auto, baked or direct, got {self.path!r}")
        if self.point_chunk is not None and self.point_chunk < 0:
            raise ValueError(f"point_chunk must be >= 0 or None, got {self.point_chunk}")


@dataclass(frozen=True, eq=False)
class NeuralBaked(Baked):
    """The neural engine's bake of one avatar: its code and noise ``(1, D)`` tensors on the
    engine's device, the styles, the baked maps (None on the direct path), the rig (numpy and
    as tensors) and the portrait framing in the generator frame."""

    z_id: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    styles: IdentityStyles | None = None
    identity: BakedIdentity | None = None
    rig: Rig | None = None
    rig_tensors: RigTensors | None = None
    framing: Framing | None = None

    def __post_init__(self) -> None:
        if self.z_id is None or self.styles is None or self.rig is None or self.rig_tensors is None:
            raise ValueError("a NeuralBaked needs its code, styles and rig (NeuralEngine.bake makes them)")


def resolve_device(spec: str) -> "torch.device":
    """``"auto"`` -> CUDA when available, else the CPU; an explicit CUDA device must exist."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def name_noise(name: str, dim: int) -> np.ndarray:
    """The ``noise="name"`` draw: N(0, I) ``(dim,)`` float32 seeded by SHA-256 of ``name``, so an
    avatar keeps its noise across runs and machines."""
    seed = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def hr_size(config) -> int:
    """The output size the generator's maps are made for: ray_resolution x sr_scale."""
    return int(config.ray_resolution * config.sr_scale)


def background_array(background: tuple[float, ...] | str | Path, size: int) -> np.ndarray:
    """The background as uint8: ``(3,)`` for a colour (premultiplied by its alpha, like the mesh
    engine's clear colour) or ``(size, size, 3)`` for an image."""
    if isinstance(background, tuple):
        r, g, b, *a = background
        alpha = a[0] if a else 1.0
        return np.round(np.array([r, g, b]) * alpha * 255.0).astype(np.uint8)
    return _load_background(background, size)


def to_rgba8(rgb: "torch.Tensor", alpha: "torch.Tensor", background: "torch.Tensor") -> "torch.Tensor":
    """A premultiplied render ``rgb (3, H, W)``, ``alpha (1, H, W)`` in [0, 1] -> uint8 ``(H, W, 4)``
    over ``background`` (int32, ``(3,)`` or ``(H, W, 3)``): quantised (colour clamped to the
    coverage, as premultiplied colour must be), then ``engines.mesh.composite_over``'s formula."""
    import torch

    a = torch.round(alpha.float().clamp(0.0, 1.0) * 255.0).to(torch.int32).permute(1, 2, 0)
    c = torch.round(rgb.float().clamp(0.0, 1.0) * 255.0).to(torch.int32).permute(1, 2, 0)
    c = torch.minimum(c, a)
    c = torch.clamp(c + torch.div((255 - a) * background + 127, 255, rounding_mode="floor"), max=255)
    return torch.cat([c, a], dim=-1).to(torch.uint8)


class NeuralEngine(EngineBase):
    """The generator behind the engine protocol (module docstring).

    ``generator``: use this generator instead of loading ``options.checkpoint`` (e.g. a freshly
    initialised one as an evaluation baseline); ``extra`` its checkpoint extras."""

    name = "neural"

    def __init__(self, options: NeuralEngineOptions, generator: "Generator | None" = None,
                 extra: dict[str, Any] | None = None) -> None:
        import torch

        from puppet.generator.checkpoint import load_checkpoint

        if not isinstance(options, NeuralEngineOptions):
            raise TypeError(f"NeuralEngine needs NeuralEngineOptions, got {type(options).__name__}")
        self.options = o = options
        self.device = resolve_device(o.device)
        if o.precision != "float32" and self.device.type != "cuda":
            raise ValueError(f"precision {o.precision} needs a CUDA device; this engine runs on {self.device}")
        if generator is None:
            generator, extra = load_checkpoint(o.checkpoint, device=self.device)
        else:
            generator = generator.to(self.device).eval()
        self.generator: Generator = generator
        self.extra: dict[str, Any] = dict(extra or {})
        self.config = c = generator.config
        self.size = o.size if o.size is not None else hr_size(c)
        if o.point_chunk is None:
            generator.point_chunk = None if self.device.type == "cuda" else CPU_POINT_CHUNK
        else:
            generator.point_chunk = o.point_chunk or None
        self.path: Literal["baked", "direct"] = (
            o.path if o.path != "auto" else ("direct" if self.extra.get("stage") == 1 else "baked"))
        self._autocast_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(o.precision)
        bg = background_array(o.background, self.size)
        self._background = torch.as_tensor(bg.astype(np.int32), device=self.device)
        self._inputs = torch.zeros(_INPUTS, dtype=torch.float32, pin_memory=self.device.type == "cuda")
        self._inputs_np = self._inputs.numpy()  # the same memory, written from the parameters' arrays
        self._rigs: dict[str, Rig] = {}
        from engines.runtimes import FrameRuntime, wants_frame_runtime

        self._frames = FrameRuntime(self) if wants_frame_runtime(o) else None
        self._image_host = (torch.empty((self.size, self.size, 4), dtype=torch.uint8, pin_memory=True)
                            if self.device.type == "cuda" else None)
        log.info("neural engine %dx%d on %s (%s, %s path, %s)", self.size, self.size, self.device, o.precision,
                 self.path, o.checkpoint)

    # ------------------------------------------------------------------ identity
    def bake(self, avatar: Avatar, rig: "Rig | None" = None) -> NeuralBaked:
        """Identity work once (module docstring). ``rig``: the avatar's rig when the caller has it
        (e.g. from a mesh bake: ``rig_from_model``); default ``rig_for_avatar`` (cached)."""
        import torch

        from puppet.generator.identity import identity_code
        from puppet.generator.rig import RigTensors

        if self._closed:
            raise RuntimeError("NeuralEngine is closed")
        c = self.config
        code = identity_code(avatar)
        if code.shape[0] != c.identity_dim:
            raise AssetError(f"{self.options.checkpoint}: the generator expects identity codes of {c.identity_dim} "
                             f"values, this puppet makes {code.shape[0]}")
        rig = rig if rig is not None else self._rig(avatar)
        if rig.num_skin_vertices != c.skin_vertices or rig.num_face_vertices != c.face_vertices:
            raise ValueError(f"the rig has {rig.num_skin_vertices} skin and {rig.num_face_vertices} face vertices, "
                             f"the generator's config {c.skin_vertices} and {c.face_vertices}")
        noise = (name_noise(avatar.name, c.noise_dim) if self.options.noise == "name"
                 else np.zeros(c.noise_dim, np.float32))
        with torch.inference_mode(), self._autocast():
            z_id = torch.as_tensor(code, device=self.device)[None]
            eps = torch.as_tensor(noise, device=self.device)[None]
            styles = self.generator.styles(z_id, eps)
            identity = self.generator.bake_styles(styles) if self.path == "baked" else None
            rig_tensors = RigTensors.stack([rig], device=self.device)
        return NeuralBaked(avatar=avatar, engine=self.name, z_id=z_id, noise=eps, styles=styles, identity=identity,
                           rig=rig, rig_tensors=rig_tensors, framing=rig.portrait)

    def _rig(self, avatar: Avatar) -> "Rig":
        from puppet.generator.rig import rig_for_avatar, rig_cache_key

        c = self.config
        key = rig_cache_key(avatar, c.skin_vertices, c.face_vertices)
        if key not in self._rigs:
            self._rigs[key] = rig_for_avatar(avatar, c.skin_vertices, c.face_vertices, cache_dir=self.options.rig_cache)
        return self._rigs[key]

    # ------------------------------------------------------------------ per frame
    def camera(self, baked: NeuralBaked, camera: np.ndarray) -> "RayCamera":
        """The generator-frame camera of ``params.camera = (yaw, pitch)`` for this avatar."""
        import torch

        yaw_pitch = torch.as_tensor(np.asarray(camera, dtype=np.float32).reshape(2), device=self.device)
        return self._camera(baked, yaw_pitch[0:1], yaw_pitch[1:2])

    def _camera(self, baked: NeuralBaked, yaw: "torch.Tensor", pitch: "torch.Tensor") -> "RayCamera":
        from puppet.generator.rays import portrait_camera

        return portrait_camera(baked.rig_tensors, yaw, pitch, float(baked.rig.fov_deg), self.config.ray_half_depth)

    def _render_one(self, baked: NeuralBaked, params: DriverParams) -> RenderedFrame:
        import torch

        if not isinstance(baked, NeuralBaked):
            raise TypeError(f"NeuralEngine.render needs a neural bake, got {type(baked).__name__}")
        host = self._inputs
        staged = self._inputs_np
        staged[:52] = params.expression
        staged[52:70] = params.pose.reshape(18)
        staged[70:72] = params.camera
        x = host.to(self.device, non_blocking=True) if self.device.type == "cuda" else host.clone()
        expression, pose = x[None, :52], x[52:70].reshape(1, 6, 3)
        g = self.generator
        if self._frames is not None:  # onnx / tensorrt / CUDA graphs / compiled (engines.runtimes)
            with torch.inference_mode():
                rgb, alpha = self._frames.render(baked, expression, pose, x[70:72])
                return self._frame_out(to_rgba8(rgb[0], alpha[0], self._background), params.t)
        with torch.inference_mode(), self._autocast():
            camera = self._camera(baked, x[70:71], x[71:72])
            if self.path == "baked":
                out = g.render(baked.identity, baked.rig_tensors, expression, pose, camera, self.size)
            else:
                out = g.render_direct(baked.styles, baked.rig_tensors, expression, pose, camera, self.size)
            image = to_rgba8(out.rgb[0], out.alpha[0], self._background)
        return self._frame_out(image, params.t)

    def _frame_out(self, image: "torch.Tensor", t: float) -> RenderedFrame:
        """The frame to the host: on CUDA one non-blocking copy into a pinned buffer, then the only
        wait of the frame (the returned array is a copy: the buffer is reused)."""
        import torch

        if self._image_host is None:
            return RenderedFrame(image=image.cpu().numpy(), t=t)
        self._image_host.copy_(image, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return RenderedFrame(image=self._image_host.numpy().copy(), t=t)

    def _autocast(self):
        import contextlib

        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def info(self) -> EngineInfo:
        import torch

        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        else:
            device += f" ({torch.get_num_threads()} threads)"
        backend = self._frames.backend if self._frames is not None else "torch"
        return EngineInfo(backend=backend, device=device, precision=self.options.precision,
                          resolution=(self.size, self.size))

    def _release(self) -> None:
        import torch

        self._rigs.clear()
        if self._frames is not None:
            self._frames.close()
        del self.generator
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

