"""TensorRT for the neural engine's per-frame graph: engine build from the exported ONNX, engine
cache, and execution on torch CUDA tensors.

Build (``build_engine``, TensorRT 10 Python API): builder -> network (explicit batch is the only
mode in TensorRT 10; the flag is set when the installed version still has it) -> ONNX parser ->
builder config with the FP16 flag for precision "float16", a persistent timing cache file beside
the engines, and an optimisation profile only if the graph has dynamic inputs (ours are static)
-> serialized engine, written atomically.

Cache (``engine_cache_key``): engines are specific to the ONNX file, the GPU model, the TensorRT
version and the precision, so the key is a pure function of exactly those four.

Run (``TensorRTFrameRunner``): one execution context; every input and output is a torch CUDA
tensor whose address is given to TensorRT (``set_tensor_address``); the identity's tensors are
bound once per identity, the frame's small inputs are copied into static buffers, and
``execute_async_v3`` runs on the current torch CUDA stream (no host sync here; the caller's copy
of the output synchronises).

TensorRT cannot be installed in this environment (DESIGN.md): everything up to the TensorRT
calls is tested (key, errors, option plumbing, the ONNX graph passing ``engines.tensorrt_ops``);
the calls themselves (``build_engine``, ``TensorRTFrameRunner``) have not been run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from puppet.errors import AssetError, OutputError
from puppet.paths import write_bytes_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "float16")
WORKSPACE_BYTES = 4 << 30


class TensorRTUnavailableError(AssetError):
    """TensorRT (or CUDA) is not there: one line, exit 2 through the CLI."""


TENSORRT_MISSING = ("TensorRT is not installed (pip install tensorrt from NVIDIA's index, with a CUDA GPU); "
                    "use --backend onnx or torch")


def tensorrt_module():
    """``import tensorrt``, or ``TensorRTUnavailableError`` with one line."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailableError(TENSORRT_MISSING) from None
    except Exception as exc:  # a broken install (missing libnvinfer) raises OSError and friends
        raise TensorRTUnavailableError(f"TensorRT cannot be loaded ({str(exc).splitlines()[0][:120]}); "
                                       f"use --backend onnx or torch") from None
    return tensorrt


def require_tensorrt(device: "torch.device | str | None" = None):
    """The ``tensorrt`` module, after checking that it imports and that a CUDA device is there
    (``TensorRTUnavailableError`` otherwise)."""
    trt = tensorrt_module()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA GPU and torch sees none; use --backend onnx or torch")
    if device is not None and torch.device(device).type != "cuda":
        raise TensorRTUnavailableError(f"TensorRT runs on CUDA devices, not {device}")
    return trt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def engine_cache_key(onnx_sha256: str, gpu_name: str, trt_version: str, precision: str) -> str:
    """The file name stem of a cached engine: a pure function of the ONNX file's hash, the GPU's
    name, TensorRT's version and the precision (engines are not portable across any of them).
    Readable parts first (GPU, version, precision), then a digest of all four."""
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, got {precision!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be a sha256 hex digest, got {onnx_sha256!r}")
    doc = json.dumps({"onnx": onnx_sha256, "gpu": gpu_name, "trt": trt_version, "precision": precision},
                     sort_keys=True)
    digest = hashlib.sha256(doc.encode()).hexdigest()[:16]
    return f"{_slug(gpu_name)}_trt{_slug(trt_version)}_{'fp16' if precision == 'float16' else 'fp32'}_{digest}"


def default_engine_cache_dir() -> Path:
    """``$PUPPET_CACHE_DIR/tensorrt`` (or ``~/.cache/puppet/tensorrt``)."""
    from puppet.assets import cache_dir

    return cache_dir() / "tensorrt"


@dataclass(frozen=True)
class EngineFile:
    """A built (or cached) engine: ``path``, ``key``, whether it was ``built`` now, and ``seconds``."""

    path: Path
    key: str
    built: bool
    seconds: float


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str = "float16",
                 timing_cache: str | os.PathLike | None = None, workspace: int = WORKSPACE_BYTES) -> Path:
    """Build a TensorRT engine from ``onnx_path`` into ``engine_path`` (module docstring)."""
    trt = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10, removed later
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AssetError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "float16":
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:  # our exports are static; a hand-made dynamic graph gets batch-1 profiles
        profile = builder.create_optimization_profile()
        for t in dynamic:
            shape = tuple(1 if d < 0 else d for d in t.shape)
            profile.set_shape(t.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AssetError(f"TensorRT could not build an engine from {onnx_path} (see the log above)")
    engine_path = Path(engine_path)
    write_bytes_atomic(engine_path, bytes(serialized))
    if timing_cache is not None:
        write_bytes_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    return engine_path


def cached_engine(onnx_path: str | os.PathLike, precision: str = "float16", device: "torch.device | str" = "cuda",
                  cache_dir: str | os.PathLike | None = None) -> EngineFile:
    """The engine of ``onnx_path`` for this GPU, TensorRT and ``precision``, built on first use
    and kept under ``cache_dir`` (``default_engine_cache_dir()``) with one timing cache per GPU and
    TensorRT version."""
    trt = require_tensorrt(device)
    import torch

    from engines.export import file_sha256

    gpu = torch.cuda.get_device_name(torch.device(device))
    key = engine_cache_key(file_sha256(onnx_path), gpu, trt.__version__, precision)
    folder = Path(cache_dir) if cache_dir is not None else default_engine_cache_dir()
    path = folder / f"{key}.engine"
    if path.is_file():
        return EngineFile(path=path, key=key, built=False, seconds=0.0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the TensorRT cache {folder}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    timing = folder / f"timing_{_slug(gpu)}_trt{_slug(trt.__version__)}.cache"
    log.info("building a TensorRT engine (%s) for %s: minutes on the first run", precision, gpu)
    build_engine(onnx_path, path, precision, timing)
    return EngineFile(path=path, key=key, built=True, seconds=time.perf_counter() - t0)


class TensorRTFrameRunner:
    """Runs a TensorRT engine of the per-frame graph on torch CUDA tensors (module docstring).
    Same ``render(identity_key, identity, frame)`` as ``onnx_runtime.OnnxFrameRunner``; the
    returned tensors are the runner's output buffers (valid until the next call)."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: "torch.device | str" = "cuda") -> None:
        trt = require_tensorrt(device)
        import torch

        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise AssetError(f"{engine_path} is not a TensorRT engine for this TensorRT/GPU: delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = tuple(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.outputs = tuple(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self._buffers: dict[str, "torch.Tensor"] = {}
        for n in names:
            shape = tuple(self.engine.get_tensor_shape(n))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(n, self._buffers[n].data_ptr())
        self._identity_key: str | None = None

    def render(self, identity_key: str, identity: Mapping[str, "torch.Tensor"],
               frame: Mapping[str, "torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        if identity_key != self._identity_key:  # identity tensors: bound by address, no copy
            for n in self.inputs:
                if n in identity:
                    t = identity[n].detach().to(self.device, self._buffers[n].dtype).contiguous()
                    if t.shape != self._buffers[n].shape:
                        raise ValueError(f"TensorRT input {n} must be {tuple(self._buffers[n].shape)}, got {tuple(t.shape)}")
                    self._buffers[n] = t
                    self.context.set_tensor_address(n, t.data_ptr())
            self._identity_key = identity_key
        for n in self.inputs:
            if n not in identity:
                self._buffers[n].copy_(frame[n], non_blocking=True)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return self._buffers["rgb"], self._buffers["alpha"]

    def close(self) -> None:
        self._buffers.clear()
        self.context = None
        self.engine = None


def _torch_dtype(trt: Any, dtype: Any) -> "torch.dtype":
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    return table[dtype]
