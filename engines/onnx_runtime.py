"""ONNX Runtime for the neural engine's per-frame graph (``engines.export``).

Sessions: the CPU execution provider, or CUDA's first when the engine runs on a CUDA device and
the installed onnxruntime has it (``onnxruntime-gpu``); full graph optimisation
(``ORT_ENABLE_ALL``: ORT may fuse into its own contrib kernels at load time, which is fine here:
the file on disk stays plain ONNX for TensorRT); ``threads`` intra-op threads (None: ORT's
default, one per physical core).

``OnnxFrameRunner.render(identity_key, identity, frame)`` runs one frame. On the CPU the identity
inputs (HR maps, rig) are converted to numpy once per identity and the frame inputs per frame.
On CUDA the inputs and outputs are bound to torch CUDA tensors by address (IOBinding): nothing
goes through the host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from puppet.errors import AssetError

if TYPE_CHECKING:
    import onnxruntime
    import torch

log = logging.getLogger(__name__)


def providers_for(device: "torch.device | str") -> list[str]:
    """Execution providers for ``device``, best first: CUDA (when the engine is on CUDA and ORT
    has it) then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    out = []
    if kind == "cuda" and "CUDAExecutionProvider" in available:
        out.append("CUDAExecutionProvider")
    out.append("CPUExecutionProvider")
    return out


def make_session(path: str | os.PathLike, device: "torch.device | str" = "cpu",
                 threads: int | None = None) -> "onnxruntime.InferenceSession":
    """An inference session for ``path`` (module docstring). ``AssetError`` when ORT cannot load it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about every CPU fallback node otherwise
    providers = providers_for(device)
    options: list[dict] = []
    for p in providers:
        if p == "CUDAExecutionProvider":
            index = getattr(device, "index", None) or 0
            options.append({"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"})
        else:
            options.append({})
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers, provider_options=options)
    except Exception as exc:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AssetError(f"ONNX Runtime cannot load {path}: {first}") from None


class OnnxFrameRunner:
    """Runs the exported per-frame graph with ONNX Runtime (module docstring).

    ``render(identity_key, identity, frame)``: ``identity`` / ``frame`` map input names to torch
    tensors (batch 1; extra names are ignored); returns ``rgb (1, 3, S, S)``, ``alpha (1, 1, S, S)``
    torch float32 tensors on the engine's device."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: "torch.device | str" = "cpu", threads: int | None = None) -> None:
        import torch

        self.path = Path(path)
        self.device = torch.device(device)
        self.session = make_session(self.path, self.device, threads)
        self.provider = self.session.get_providers()[0]
        self.inputs: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.outputs: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        self._shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self._out_shapes = {o.name: tuple(o.shape) for o in self.session.get_outputs()}
        self._on_cuda = self.provider == "CUDAExecutionProvider"
        self._identity_key: str | None = None
        self._identity: dict[str, np.ndarray] = {}
        self._identity_tensors: dict[str, "torch.Tensor"] = {}
        self._binding = None
        self._out: dict[str, "torch.Tensor"] = {}
        if self.device.type == "cuda" and not self._on_cuda:
            log.warning("onnxruntime has no CUDA provider here: the ONNX runtime runs on the CPU")

    def _check(self, name: str, t: "torch.Tensor") -> None:
        if tuple(t.shape) != self._shapes[name]:
            raise ValueError(f"ONNX input {name} must have shape {self._shapes[name]}, got {tuple(t.shape)}")

    def render(self, identity_key: str, identity: Mapping[str, "torch.Tensor"],
               frame: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
        missing = [n for n in self.inputs if n not in identity and n not in frame]
        if missing:
            raise ValueError(f"ONNX inputs missing: {missing}")
        if self._on_cuda:
            return self._render_cuda(identity_key, identity, frame)
        import torch

        if identity_key != self._identity_key:
            self._identity = {}
            for n in self.inputs:
                if n in identity:
                    self._check(n, identity[n])
                    self._identity[n] = identity[n].detach().float().cpu().numpy()
            self._identity_key = identity_key
        feeds = dict(self._identity)
        for n in self.inputs:
            if n not in feeds:
                self._check(n, frame[n])
                feeds[n] = frame[n].detach().float().cpu().numpy()
        rgb, alpha = self.session.run(list(self.outputs), feeds)
        return torch.from_numpy(rgb).to(self.device), torch.from_numpy(alpha).to(self.device)

    def _render_cuda(self, identity_key: str, identity: Mapping[str, "torch.Tensor"],
                     frame: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """IOBinding on torch CUDA tensors: inputs and outputs by device address."""
        import torch

        if self._binding is None:
            self._binding = self.session.io_binding()
            for name in self.outputs:
                t = torch.empty(self._out_shapes[name], dtype=torch.float32, device=self.device)
                self._out[name] = t
                self._binding.bind_output(name, "cuda", t.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        b = self._binding

        def bind(name: str, t: "torch.Tensor") -> "torch.Tensor":
            self._check(name, t)
            t = t.detach().to(self.device, torch.float32).contiguous()
            b.bind_input(name, "cuda", t.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
            return t

        if identity_key != self._identity_key:
            self._identity_tensors = {n: bind(n, identity[n]) for n in self.inputs if n in identity}
            self._identity_key = identity_key
        keep = [bind(n, frame[n]) for n in self.inputs if n not in self._identity_tensors]
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(b)
        del keep
        return self._out["rgb"], self._out["alpha"]

    def close(self) -> None:
        self._binding = None
        self._identity.clear()
        self._identity_tensors.clear()
        self.session = None  # type: ignore[assignment]
