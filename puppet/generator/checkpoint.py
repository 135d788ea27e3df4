"""Generator checkpoints: one safetensors file, the state dict plus JSON metadata. No pickle.

Metadata (safetensors metadata is str -> str): ``format`` = "puppet-generator", ``version`` = "1",
``config`` = ``GeneratorConfig.to_dict()`` as JSON, ``extra`` = the caller's JSON-able dict (training
step, EMA flag, dataset hash...), ``dtype`` = the stored float dtype. ``dtype=torch.float16`` halves
the file (small committed checkpoints); ``load_checkpoint`` upcasts to float32.

Every way a file can be wrong ends in one-line ``AssetError``: missing, not safetensors or
truncated, foreign (no or another ``format``), another version, an invalid config, tensors whose
names or shapes do not match the network the config builds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from puppet.errors import AssetError, OutputError
from puppet.generator.config import GeneratorConfig
from puppet.generator.model import Generator

CHECKPOINT_FORMAT = "puppet-generator"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, generator: Generator, extra: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write ``generator``'s weights and config (and ``extra``, JSON-able) to ``path``, atomically.
    ``dtype``: float32 or float16 for the floating tensors. ``-> path``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"checkpoint dtype must be float32 or float16, got {dtype}")
    path = Path(path)
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint extra must be JSON-serialisable: {exc}") from None
    tensors = {}
    for name, t in generator.state_dict().items():
        t = t.detach().to("cpu")
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
                "config": json.dumps(generator.config.to_dict(), sort_keys=True), "extra": extra_json,
                "dtype": str(dtype).removeprefix("torch.")}
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # safetensors reports I/O failures as its own error
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write checkpoint {path}: {getattr(exc, 'strerror', None) or _reason(exc)}") from None
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The validated metadata of a generator checkpoint (``AssetError`` when it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"generator checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for every kind of bad header
        raise AssetError(f"{path} is not a puppet generator checkpoint ({_reason(exc)})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise AssetError(f"{path} is not a puppet generator checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise AssetError(f"{path}: generator checkpoint version {meta.get('version')!r}, "
                         f"this puppet reads version {CHECKPOINT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator saved at ``path`` (float32, eval mode, on ``device``) and its ``extra``
    dict. ``AssetError`` with one line for a missing, corrupt, truncated or foreign file."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_metadata(path)
    try:
        config = GeneratorConfig.from_dict(json.loads(meta.get("config", "")))
        extra = json.loads(meta.get("extra", "{}"))
    except (ValueError, TypeError) as exc:
        raise AssetError(f"{path}: invalid generator config ({_reason(exc)})") from None
    if not isinstance(extra, dict):
        raise AssetError(f"{path}: invalid checkpoint metadata (extra is not a JSON object)")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # truncated data, bad offsets
        raise AssetError(f"{path} is not a puppet generator checkpoint ({_reason(exc)})") from None
    generator = Generator(config)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AssetError(f"{path}: weights do not match the config (missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
                         f", unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    state = {}
    for name, ref in expected.items():
        t = tensors[name]
        if t.shape != ref.shape:
            raise AssetError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the config needs {tuple(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point():
            raise AssetError(f"{path}: tensor {name} has dtype {t.dtype}, expected {ref.dtype}")
        state[name] = t.to(ref.dtype)
    generator.load_state_dict(state)
    return generator.to(device).eval(), extra


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
