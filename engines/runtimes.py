"""The neural engine's per-frame runtimes behind one interface: the fast PyTorch path (CUDA
graphs, torch.compile), ONNX Runtime and TensorRT (``NeuralEngineOptions.runtime``).

Every runner renders ``FrameRenderModule``'s graph: ``render(identity_key, identity, frame) ->
(rgb (1, 3, S, S), alpha (1, 1, S, S))`` where ``identity`` holds the bake's tensors (HR maps,
z_id, rig) and ``frame`` the frame's (expression, pose, cam2world, near, far). ``FrameRuntime``
makes the runner for an engine on its first frame (the export needs a rig's topology, which only a
bake has), keys identities by bake so a runner re-binds only on avatar switches, and computes the
camera in float32 (outside any autocast).

ONNX/TensorRT files: the ``onnx`` option's .onnx (checked against the engine: size, skeleton,
weights), else an export on the fly cached under ``export_cache`` (default
``$PUPPET_CACHE_DIR/onnx``) keyed by the weights' hash, size, opset and skeleton; TensorRT
engines beside them under ``tensorrt/`` keyed by ONNX hash x GPU x TensorRT version x precision.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    import torch

    from engines.neural import NeuralBaked, NeuralEngine
    from puppet.generator.rays import RayCamera

log = logging.getLogger(__name__)

RUNTIME_NAMES: tuple[str, ...] = ("torch", "onnx", "tensorrt")


class FrameRunner(Protocol):
    backend: str

    def render(self, identity_key: str, identity: Mapping[str, "torch.Tensor"],
               frame: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]: ...

    def close(self) -> None: ...


def identity_feeds(baked: "NeuralBaked") -> dict[str, "torch.Tensor"]:
    """The graph's identity inputs of a (baked-path) neural bake."""
    from puppet.generator.model import FrameRenderModule

    if baked.identity is None:
        raise ValueError("this bake has no HR maps (direct path): the export runtimes render the baked path")
    feeds = {"hr_maps": baked.identity.hr_maps.float(), "z_id": baked.z_id.float()}
    for name in FrameRenderModule.RIG_TENSOR_FIELDS:
        feeds[name] = getattr(baked.rig_tensors, name)
    return feeds


def frame_feeds(expression: "torch.Tensor", pose: "torch.Tensor", camera: "RayCamera") -> dict[str, "torch.Tensor"]:
    """The graph's per-frame inputs: ``expression (1, 52)``, ``pose (1, 6, 3)`` and the camera."""
    return {"expression": expression.float(), "pose": pose.float(), "cam2world": camera.cam2world.float(),
            "near": camera.near.float(), "far": camera.far.float()}


def wants_frame_runtime(options: Any) -> bool:
    """Whether an engine with these ``NeuralEngineOptions`` renders through a ``FrameRuntime``
    (any runtime but plain eager torch)."""
    return (options.runtime != "torch" or bool(getattr(options, "cuda_graphs", False))
            or getattr(options, "compile", None) is not None)


class FrameRuntime:
    """One engine's runner (module docstring). Fails at construction for what can be checked
    before any bake: TensorRT missing, a given .onnx that is not an export or has another size."""

    def __init__(self, engine: "NeuralEngine") -> None:
        from engines.export import check_export_matches, read_export_metadata, weights_sha256

        self.engine = engine
        o = engine.options
        self.runtime = o.runtime
        if o.runtime not in RUNTIME_NAMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIME_NAMES)}, got {o.runtime!r}")
        if o.runtime != "torch" and engine.path != "baked":
            raise ValueError(f"the {o.runtime} runtime renders the baked path (HR maps); this engine renders "
                             f"{engine.path!r} (a stage-1 checkpoint?): use runtime torch")
        if o.runtime == "tensorrt":
            from engines.tensorrt_runtime import require_tensorrt

            require_tensorrt(engine.device)
        self.weights = weights_sha256(engine.generator) if o.runtime != "torch" else ""
        self.onnx_path: Path | None = Path(o.onnx) if getattr(o, "onnx", None) else None
        if self.onnx_path is not None:
            check_export_matches(read_export_metadata(self.onnx_path), self.onnx_path, engine.size,
                                 weights=self.weights)
        self._runner: FrameRunner | None = None
        self._keys: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        self._counter = itertools.count()

    @property
    def backend(self) -> str:
        return {"torch": "torch", "onnx": "onnxruntime", "tensorrt": "tensorrt"}[self.runtime]

    def _key(self, baked: "NeuralBaked") -> str:
        """A name per bake (the runners re-bind identity inputs when it changes). A new bake is
        checked against what the graph has fixed: the fov (the graph's is the config's)."""
        if baked not in self._keys:
            fov = float(self.engine.config.portrait_fov_deg)
            if abs(float(baked.rig.fov_deg) - fov) > 1e-6:
                raise ValueError(f"the avatar's rig has a {baked.rig.fov_deg} degree camera, the {self.runtime} "
                                 f"runtime's graph {fov} (the generator config's portrait_fov_deg)")
            self._keys[baked] = f"bake{next(self._counter)}"
        return self._keys[baked]

    def _onnx_for(self, baked: "NeuralBaked") -> Path:
        from engines.export import (RigTopology, cached_frame_onnx, check_export_matches, default_export_cache_dir,
                                    read_export_metadata)

        topology = RigTopology.of(baked.rig_tensors)
        if self.onnx_path is not None:
            check_export_matches(read_export_metadata(self.onnx_path), self.onnx_path, self.engine.size, topology,
                                 self.weights)
            return self.onnx_path
        cache = getattr(self.engine.options, "export_cache", None)
        folder = Path(cache) / "onnx" if cache is not None else default_export_cache_dir()
        return cached_frame_onnx(self.engine.generator, self.engine.size, baked.rig_tensors, folder,
                                 weights=self.weights)

    def _make_runner(self, baked: "NeuralBaked") -> FrameRunner:
        e, o = self.engine, self.engine.options
        if self.runtime == "torch":
            from engines.torch_runtime import TorchFrameRunner

            return TorchFrameRunner(e.generator, e.size, baked.rig_tensors, cuda_graphs=getattr(o, "cuda_graphs", False),
                                    compile_mode=getattr(o, "compile", None), autocast_dtype=e._autocast_dtype)
        onnx_path = self._onnx_for(baked)
        if self.runtime == "onnx":
            from engines.onnx_runtime import OnnxFrameRunner

            return OnnxFrameRunner(onnx_path, e.device, getattr(o, "threads", None))
        from engines.tensorrt_runtime import TensorRTFrameRunner, cached_engine

        cache = getattr(o, "export_cache", None)
        built = cached_engine(onnx_path, o.precision, e.device, Path(cache) / "tensorrt" if cache is not None else None)
        return TensorRTFrameRunner(built.path, e.device)

    def render(self, baked: "NeuralBaked", expression: "torch.Tensor", pose: "torch.Tensor",
               yaw_pitch: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """One frame: ``expression (1, 52)``, ``pose (1, 6, 3)``, ``yaw_pitch (2,)`` on the device."""
        import torch

        if self._runner is None:
            self._runner = self._make_runner(baked)
            log.info("neural engine runtime: %s", self._runner.backend)
        with torch.autocast(device_type=self.engine.device.type, enabled=False):
            camera = self.engine._camera(baked, yaw_pitch[0:1].float(), yaw_pitch[1:2].float())
        return self._runner.render(self._key(baked), identity_feeds(baked), frame_feeds(expression, pose, camera))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
