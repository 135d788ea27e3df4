"""The fast PyTorch path of the neural engine's per-frame render: CUDA graphs and/or torch.compile.

``TorchFrameRunner`` runs ``FrameRenderModule`` (``Generator.render`` on flat tensors, the graph
the ONNX export traces), with the same ``render(identity_key, identity, frame)`` interface as the
ONNX Runtime and TensorRT runners:

- ``compile``: ``torch.compile(mode=...)`` ("default", "reduce-overhead": inductor + its own CUDA
  graphs, "max-autotune": autotuned kernels too); ``dynamic=False``: every shape is static.
- ``cuda_graphs``: our own ``torch.cuda.CUDAGraph`` capture of one whole frame: static input
  buffers (identity and frame), three warm-up runs on a side stream, capture, then per frame only
  ``copy_`` of the 72 frame numbers into the static buffers (non-blocking) and ``replay()``. The
  identity is copied into its static buffers when it changes (a bake switch), so one capture
  serves every avatar. Needs the render to be free of host syncs (it is: no ``.item()``, no data-
  dependent shapes), which the capture itself enforces.
- ``autocast``: float16 / bfloat16 for the networks on CUDA. The camera (yaw, pitch -> cam2world)
  is computed by the caller in float32 before the runner, so the ray origins are exact; the ray
  directions and the skinning inside ``Generator.render`` follow autocast's rules (matmul/einsum in
  reduced precision), see docs/performance.md for what that costs in accuracy.

The returned tensors are the runner's static outputs when capturing (valid until the next call).
Nothing here has been run on a GPU in this session (no device was lent); CPU runs cover the eager
and compiled paths.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

    from puppet.generator.model import Generator
    from puppet.generator.rig import RigTensors

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
WARMUP_RUNS = 3


class TorchFrameRunner:
    """``FrameRenderModule`` eager, compiled and/or captured in a CUDA graph (module docstring)."""

    backend = "torch"

    def __init__(self, generator: "Generator", size: int, rig: "RigTensors", cuda_graphs: bool = False,
                 compile_mode: str | None = None, autocast_dtype: "torch.dtype | None" = None) -> None:
        import torch

        from engines.export import all_input_names, frame_module

        self.device = next(generator.parameters()).device
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the generator is on {self.device}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        if autocast_dtype is not None and self.device.type != "cuda":
            raise ValueError("autocast (float16 / bfloat16) is for CUDA devices here")
        self.generator = generator
        self.module = frame_module(generator, size, rig)
        self.names = all_input_names()
        self.cuda_graphs = cuda_graphs
        self.compile_mode = compile_mode
        self.autocast_dtype = autocast_dtype
        self._fn = self.module
        if compile_mode is not None:
            self._fn = torch.compile(self.module, mode=compile_mode, dynamic=False, fullgraph=False)
        self._graph: "torch.cuda.CUDAGraph | None" = None
        self._static: dict[str, "torch.Tensor"] = {}
        self._static_out: tuple["torch.Tensor", "torch.Tensor"] | None = None
        self._identity_key: str | None = None

    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # autocast's cache of cast weights must be off under CUDA-graph capture (torch's CUDA graphs notes)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype,
                              cache_enabled=not self.cuda_graphs)

    def _call(self, feeds: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
        with self._autocast():
            return self._fn(*(feeds[n] for n in self.names))

    def render(self, identity_key: str, identity: Mapping[str, "torch.Tensor"],
               frame: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        with torch.inference_mode():
            if not self.cuda_graphs:
                return self._call({**identity, **frame})
            if self._graph is None:
                self._capture({**identity, **frame})
                self._identity_key = identity_key
            elif identity_key != self._identity_key:
                for n, t in identity.items():
                    if n in self._static:
                        self._static[n].copy_(t, non_blocking=True)
                self._identity_key = identity_key
            for n, t in frame.items():
                if n in self._static and n not in identity:
                    self._static[n].copy_(t, non_blocking=True)
            self._graph.replay()
            assert self._static_out is not None
            return self._static_out

    def _capture(self, feeds: Mapping[str, "torch.Tensor"]) -> None:
        """Static buffers, warm-up on a side stream (allocator and cuDNN/cuBLAS plans settle),
        then the capture (torch's documented recipe)."""
        import torch

        self._static = {n: feeds[n].detach().clone() for n in self.names}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._call(self._static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._call(self._static)
        self._graph = graph
        log.info("captured the per-frame render in a CUDA graph")

    def close(self) -> None:
        self._graph = None
        self._static.clear()
        self._static_out = None
