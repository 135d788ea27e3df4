"""``puppet train``: the two-stage training of the neural generator on a ``puppet synth`` dataset.

Stage 1 (facts §8.1): ``Generator.render_direct`` at the LR ray resolution for the portrait and the
face camera; trains the mapping networks, the manifold predictor M, the radiance net Φ (not its
feature heads), D_e and D_P (``LbsSmoother``) with three discriminators (whole portrait, face, torso
crop), the deformation priors and the supervised reconstruction of the synthetic pairs. The SR net is
frozen (unused).

Stage 2: everything frozen except the SR net and its mapping network (and, by default, Φ's feature
heads, as GRAM-HD trains them), fresh discriminators at the HR sizes; renders through ``bake`` +
``render`` at the HR portrait size (``ray_resolution x sr_scale``) and half that for the face;
reconstruction + GAN + GRAM-HD's LR/HR consistency. It starts from a stage-1 generator checkpoint
(``init``).

Every synthetic sample is supervised: the generator renders it with its own identity code, noise 0,
expression, pose and both cameras, and the result is compared with the mesh render (L1 pyramid) and
judged by the discriminators against it (the GAN works as an adversarial perceptual loss, as in
pix2pix). Learning rates: the paper's proxies are G 2e-5 / D 2e-4 for an unconditional GAN at batch
32 (facts §8.2); with paired supervision the G side is a regression and tolerates more, so our G
default is 1e-4 in stage 1 (5x GRAM's) and 2e-4 in stage 2 (GRAM-HD's SR lr); D 2e-4; Adam betas
(0, 0.9) for both.

A run directory holds ``run.json`` (format ``puppet.train-run``: the resolved options, generator and
discriminator configs, loss weights, dataset), ``log.jsonl`` (one JSON line per log step),
``grids/step_NNNNNN.png`` (target vs generated, portrait and face), and ``checkpoint/``:
``generator.safetensors`` (``checkpoint.save_checkpoint``: the EMA weights when EMA is on, the ones to
use), ``training_state.safetensors`` (raw generator weights, discriminators, both Adam states and the
AMP scaler, flattened into tensors) and ``training_state.json`` (step, seeds, the non-tensor parts of
the optimiser states). No pickle anywhere.

Reproducibility: the batch order is a function of (seed, epoch) and every random draw of step k
(ray jitter, loss point subsets) of (seed, k, rank), so a resumed run continues exactly as an
uninterrupted one would (bit-identical on CPU).

Multi-GPU: launched by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), each process takes
``cuda:LOCAL_RANK`` (gloo on CPU), reads its own share of the dataset (every ``world``-th sample of
each epoch's permutation), and the generator step and discriminators are wrapped in
``DistributedDataParallel``; only rank 0 writes. ``batch`` is per process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from puppet.errors import AssetError, InputError, OutputError
from puppet.generator import losses as L
from puppet.generator.config import GeneratorConfig
from puppet.generator.discriminators import DiscriminatorConfig, PortraitDiscriminators
from puppet.generator.losses import LossWeights

log = logging.getLogger(__name__)

RUN_FORMAT = "puppet.train-run"
RUN_VERSION = 1
STATE_FORMAT = "puppet.train-state"
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoint"
GENERATOR_FILE = "generator.safetensors"
STATE_FILE = "training_state.safetensors"
STATE_JSON = "training_state.json"
GRID_DIR = "grids"

DEFAULT_G_LR = {1: 1e-4, 2: 2e-4}


# ----------------------------------------------------------------------------- options and result

@dataclass(frozen=True)
class TrainOptions:
    """One ``puppet train`` run (see the module docstring).

    data: a ``puppet synth`` dataset folder; out: the run directory (created; ``resume`` continues it).
    config: "tiny", "published" or a JSON file: a ``GeneratorConfig.to_dict()`` document, or
        ``{"generator": {...}, "discriminator": {...}, "loss_weights": {...}}`` (each part optional
        except the generator). Discriminator widths default to the preset's (tiny / published).
    stage: 1 (render_direct, all but SR) or 2 (SR only, HR discriminators; needs ``init``).
    init: stage 2: the stage-1 generator checkpoint to start from.
    steps: total optimisation steps of the run (a resumed run continues up to this number).
    batch: samples per step and process; batch_split: micro-batches it is cut into (gradients
        accumulate: the same update in less memory).
    g_lr: generator learning rate (None: 1e-4 stage 1, 2e-4 stage 2); d_lr: discriminators'.
    betas: Adam betas of both. grad_clip: max gradient norm of G and of D (0: off).
    ema: generator EMA decay (0: off); the decay ramps up as min(ema, (1 + k) / (10 + k)).
    seed: batch order and every random draw. device: "auto", "cpu", "cuda", "cuda:N".
    amp: "auto" (fp16 with GradScaler on CUDA, off on CPU), "off" (fp32; TF32 matmuls on CUDA),
        "bf16", "fp16". fp16 rather than bf16 by default: the FiLM-SIREN layers compute sin(~30 x), and
        bf16's 8-bit mantissa leaves ~0.1 rad of error in such arguments (fp16: ~0.015); pi-GAN and
        GRAM trained with fp16 autocast + GradScaler.
    log_every, checkpoint_every, grid_every: intervals in steps (the last step always logs,
        checkpoints and draws a grid). grid_samples: rows of the image grid.
    resume: continue the run in ``out`` from its checkpoint (its saved settings win, except steps,
        intervals, device, amp, threads and progress).
    weights: the loss weights (a JSON config's "loss_weights" overrides them).
    portrait_size, face_size: render sizes (None: stage 1 ray_resolution for both; stage 2
        ray_resolution x sr_scale and half that).
    deform_points: ray samples per image for the deformation losses; face_points: jittered points
        around the expressed face model per image (imitation, smoothness).
    train_feature_heads: stage 2 also trains Φ's feature heads (GRAM-HD does).
    threads: torch CPU threads (None: leave torch's default). rig_cache: where rigs are cached
        (None: ``$PUPPET_CACHE_DIR/rigs``). point_chunk: generator point chunk (CPU memory).
    workers: data-loader worker processes (0: load in the training process).
    progress: console progress lines (rank 0).
    """

    data: Path
    out: Path
    config: str = "tiny"
    stage: Literal[1, 2] = 1
    init: Path | None = None
    steps: int = 1000
    batch: int = 4
    batch_split: int = 1
    g_lr: float | None = None
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    grid_every: int = 500
    grid_samples: int = 4
    resume: bool = False
    weights: LossWeights = field(default_factory=LossWeights)
    portrait_size: int | None = None
    face_size: int | None = None
    deform_points: int = 4096
    face_points: int = 512
    train_feature_heads: bool = True
    threads: int | None = None
    rig_cache: Path | None = None
    point_chunk: int | None = None
    workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.init is not None:
            object.__setattr__(self, "init", Path(self.init))
        if self.rig_cache is not None:
            object.__setattr__(self, "rig_cache", Path(self.rig_cache))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        for name in ("steps", "batch", "batch_split", "log_every", "checkpoint_every", "grid_every", "deform_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("grid_samples", "face_points", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.g_lr is not None and not self.g_lr > 0 or not self.d_lr > 0:
            raise ValueError("learning rates must be > 0")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")

    @property
    def generator_lr(self) -> float:
        return self.g_lr if self.g_lr is not None else DEFAULT_G_LR[self.stage]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("data", "out", "init", "rig_cache"):
            out[key] = None if out[key] is None else str(out[key])
        out["betas"] = list(self.betas)
        return out


@dataclass(frozen=True)
class TrainResult:
    """What a run did: ``losses_first`` / ``losses_last`` are the means over the first / last
    ``min(10, steps)`` steps of this invocation (all logged terms)."""

    out: Path
    stage: int
    start_step: int
    steps: int
    seconds: float
    checkpoint: Path
    log: Path
    losses_first: dict[str, float]
    losses_last: dict[str, float]
    generator_parameters: int

    def describe(self) -> str:
        def fmt(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.4g}" for k, v in d.items() if k in ("reconstruction", "g_total", "d_total"))
        done = self.steps - self.start_step
        rate = self.seconds / done if done else 0.0
        return (f"stage {self.stage}: steps {self.start_step} -> {self.steps} in {self.seconds:.1f} s "
                f"({rate:.2f} s/step); first [{fmt(self.losses_first)}], last [{fmt(self.losses_last)}]; "
                f"checkpoint {self.checkpoint}")


# ----------------------------------------------------------------------------- configs

def default_discriminator(config: GeneratorConfig) -> DiscriminatorConfig:
    """Tiny discriminators for generators below the published ray resolution, else GRAM's widths."""
    small = config.ray_resolution < GeneratorConfig.published(config.identity_dim).ray_resolution
    return DiscriminatorConfig.tiny() if small else DiscriminatorConfig.published()


def resolve_config(spec: str) -> tuple[GeneratorConfig, DiscriminatorConfig, dict[str, Any] | None]:
    """"tiny" / "published" / a JSON file -> (generator config, discriminator config, loss weight
    overrides or None). ``InputError`` with one line for a missing or invalid file."""
    if spec == "tiny":
        return GeneratorConfig.tiny(), DiscriminatorConfig.tiny(), None
    if spec == "published":
        return GeneratorConfig.published(), DiscriminatorConfig.published(), None
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"config {spec!r} is neither tiny, published nor a JSON file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"config {path}: expected a JSON object")
    try:
        if "generator" in doc:
            unknown = set(doc) - {"generator", "discriminator", "loss_weights"}
            if unknown:
                raise ValueError(f"unknown sections {sorted(unknown)}")
            gen = GeneratorConfig.from_dict(doc["generator"])
            disc_doc = doc.get("discriminator")
            weights = doc.get("loss_weights")
            if weights is not None:
                LossWeights.from_dict(weights)  # validate now
        else:
            gen, disc_doc, weights = GeneratorConfig.from_dict(doc), None, None
        disc = DiscriminatorConfig.from_dict(disc_doc) if disc_doc is not None else default_discriminator(gen)
    except (ValueError, TypeError) as exc:
        raise InputError(f"config {path}: {exc}") from None
    return gen, disc, weights


# ----------------------------------------------------------------------------- state files (no pickle)

def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (dicts with any keys, lists, tensors, JSON scalars) into ``tensors``
    (name -> tensor, names ``prefix/...``) and a JSON-able skeleton that names them. Dict keys keep
    their type (optimiser states are keyed by int)."""
    if isinstance(obj, torch.Tensor):
        name = prefix
        tensors[name] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten_state``."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
        raise ValueError("unknown state node")
    return skeleton


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return _Dist(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(spec: str, dist: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
        if spec == "cuda":
            return torch.device("cuda", dist.local_rank if dist.world > 1 else torch.cuda.current_device())
        return torch.device(spec)
    if spec != "cpu":
        raise InputError(f"unknown device {spec!r} (cpu, cuda, cuda:N, auto)")
    return torch.device("cpu")


def _all_reduce_mean(values: dict[str, float], dist: _Dist, device: torch.device) -> dict[str, float]:
    if dist.world == 1 or not values:
        return values
    import torch.distributed as tdist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=device, dtype=torch.float64)
    tdist.all_reduce(t)
    return {k: float(v) / dist.world for k, v in zip(keys, t.tolist())}


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True, eq=False)
class Batch:
    """One training batch on the device (generator frame). Images are premultiplied RGBA in [0, 1]
    at the render sizes."""

    index: torch.Tensor            # (B,) dataset sample indices
    identity: torch.Tensor         # (B,) identity labels
    z_id: torch.Tensor             # (B, identity_dim)
    expression: torch.Tensor       # (B, 52)
    pose: torch.Tensor             # (B, 6, 3)
    camera: torch.Tensor           # (B, 2) portrait (yaw, pitch): D's pose-regression target
    portrait_cam2world: torch.Tensor  # (B, 4, 4)
    portrait_near: torch.Tensor    # (B,)
    portrait_far: torch.Tensor
    portrait_fov: float
    face_cam2world: torch.Tensor
    face_near: torch.Tensor
    face_far: torch.Tensor
    face_fov: float
    portrait: torch.Tensor         # (B, 4, S, S)
    face: torch.Tensor             # (B, 4, F, F)

    def split(self, parts: int) -> list["Batch"]:
        """``parts`` consecutive micro-batches (sizes differ by at most one)."""
        b = self.index.shape[0]
        bounds = np.linspace(0, b, min(parts, b) + 1).round().astype(int)
        out = []
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            out.append(dataclasses.replace(self, **{f.name: getattr(self, f.name)[i0:i1]
                                                    for f in dataclasses.fields(self)
                                                    if isinstance(getattr(self, f.name), torch.Tensor)}))
        return out


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Premultiplied ``(B, C, H, W)`` to ``size`` square: area average when shrinking by a whole
    factor, antialiased bilinear otherwise."""
    h = images.shape[-1]
    if h == size:
        return images
    if h > size and h % size == 0:
        return F.avg_pool2d(images, h // size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=h > size)


class TrainingData:
    """The dataset as the trainer needs it: identity codes and rigs per identity, and a stream of
    batches in the generator frame.

    Batches come from ``puppet.dataset.TorchSynthDataset`` through a ``DataLoader`` (shards dealt
    to ranks and workers, a shuffle buffer, the order a function of (seed, epoch)); ``position`` /
    ``seek`` (epoch, batches taken in it) let a resumed run continue with the very next batch.
    """

    def __init__(self, folder: Path, config: GeneratorConfig, batch: int, seed: int, rig_cache: Path | None,
                 dist: _Dist | None = None, device: torch.device = torch.device("cpu"), workers: int = 0,
                 buffer_size: int = 512) -> None:
        from torch.utils.data import DataLoader

        from puppet.dataset import TorchSynthDataset
        from puppet.generator.identity import identity_code
        from puppet.generator.rig import RigTensors, rig_for_avatar

        dist = dist or _Dist(rank=0, world=1, local_rank=0)
        self.stream = TorchSynthDataset(folder, shuffle=True, buffer_size=buffer_size, seed=seed, rank=dist.rank,
                                        world_size=dist.world)
        self.dataset = self.stream.data
        if self.dataset.num_shards < dist.world * max(1, workers):
            raise InputError(f"{folder} has {self.dataset.num_shards} shard(s): too few for {dist.world} process(es) "
                             f"x {max(1, workers)} loader worker(s) (render it with a smaller --shard-size)")
        self.loader = DataLoader(self.stream, batch_size=batch, num_workers=workers, drop_last=True)
        self.dist, self.device, self.batch_size = dist, device, batch
        self.epoch, self.offset = 0, 0
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None
        avatars = self.dataset.identities
        t0 = time.perf_counter()
        if dist.world > 1:  # each rank bakes its share of the rigs into the cache, then all read them all
            import torch.distributed as tdist

            for a in avatars[dist.rank::dist.world]:
                rig_for_avatar(a, config.skin_vertices, config.face_vertices, rig_cache)
            tdist.barrier()
        self.rigs = [rig_for_avatar(a, config.skin_vertices, config.face_vertices, rig_cache) for a in avatars]
        log.info("%d rigs in %.1f s", len(self.rigs), time.perf_counter() - t0)
        self.rig_tensors = RigTensors.stack(self.rigs, device=device)
        self.z_id = torch.as_tensor(np.stack([identity_code(a) for a in avatars]), device=device)
        if self.z_id.shape[1] != config.identity_dim:
            raise InputError(f"identity codes have {self.z_id.shape[1]} values, the config expects "
                             f"{config.identity_dim}")

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.dataset.root), "samples": len(self), "identities": len(self.rigs),
                "shards": self.dataset.num_shards, "size": self.dataset.size, "face_size": self.dataset.face_size}

    def position(self) -> tuple[int, int]:
        """(epoch, batches already taken in it)."""
        return self.epoch, self.offset

    def seek(self, epoch: int, offset: int) -> None:
        self.epoch, self.offset = int(epoch), int(offset)
        self._iter = None

    def next_samples(self) -> dict[str, torch.Tensor]:
        """The next collated batch of ``to_tensors`` samples (a new epoch when one ends)."""
        for _ in range(2):
            if self._iter is None:
                self.stream.set_epoch(self.epoch)
                self._iter = iter(self.loader)
                for _ in range(self.offset):  # resuming inside an epoch: skip what was used
                    next(self._iter)
            try:
                samples = next(self._iter)
            except StopIteration:
                if self.offset == 0:
                    break
                self.epoch, self.offset, self._iter = self.epoch + 1, 0, None
                continue
            self.offset += 1
            return samples
        raise InputError(f"the dataset's share of this process holds fewer samples than the batch ({self.batch_size})")

    def first_samples(self, n: int) -> dict[str, torch.Tensor]:
        """Samples 0 .. n-1 of the first shard, collated (the fixed batch of the image grids)."""
        shard = self.dataset.shard(0)
        return self.samples([shard.start + j for j in range(min(n, shard.count))])

    def samples(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The samples of these dataset indices, collated."""
        from torch.utils.data import default_collate

        from puppet.dataset import to_tensors

        out, cache = [], {}
        starts = [(k, int(e["start"]), int(e["count"])) for k, e in enumerate(self.dataset.manifest["shards"])]
        for i in indices:
            k, start, _ = next((k, st, c) for k, st, c in starts if st <= i < st + c)
            if k not in cache:
                cache[k] = self.dataset.shard(k)
            out.append(to_tensors(cache[k].sample(i - start)))
        return default_collate(out)

    def batch(self, samples: dict[str, torch.Tensor], portrait_size: int, face_size: int, half_depth: float) -> Batch:
        """Collated samples -> a ``Batch`` on the device: cameras to each identity's generator frame,
        near/far = the look-at distance -/+ ``half_depth``, images resized to the render sizes."""
        from puppet.generator.rig import camera_to_generator

        ident = samples["identity"].numpy().astype(np.int64)
        p_cam = samples["portrait_cam2world"].numpy()
        f_cam = samples["face_cam2world"].numpy()
        dist_p = samples["framing_distance"].numpy()
        centre = samples["face_center"].numpy()
        p_c2w, f_c2w, p_d, f_d = [], [], [], []
        for n, j in enumerate(ident):
            rig = self.rigs[j]
            f = camera_to_generator(rig, f_cam[n])
            p_c2w.append(camera_to_generator(rig, p_cam[n]))
            f_c2w.append(f)
            p_d.append(float(dist_p[n]) / rig.unit)
            f_d.append(float(np.linalg.norm(f[:3, 3] - rig.to_generator(centre[n]))))
        dev = self.device

        def t(x, dtype=torch.float32) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=dtype).to(dev)

        ids = t(ident, torch.long)
        p_d, f_d = t(p_d), t(f_d)
        return Batch(
            index=samples["index"].to(dev), identity=ids, z_id=self.z_id[ids],
            expression=samples["expression"].to(dev), pose=samples["pose"].to(dev), camera=samples["camera"].to(dev),
            portrait_cam2world=t(np.stack(p_c2w)), portrait_near=p_d - half_depth, portrait_far=p_d + half_depth,
            portrait_fov=float(samples["portrait_fov"][0]), face_cam2world=t(np.stack(f_c2w)),
            face_near=f_d - half_depth, face_far=f_d + half_depth, face_fov=float(samples["face_fov"][0]),
            portrait=resize_images(samples["portrait"].to(dev), portrait_size),
            face=resize_images(samples["face"].to(dev), face_size))


# ----------------------------------------------------------------------------- the generator step

def _cameras(batch: Batch):
    from puppet.generator.rays import RayCamera

    return (RayCamera(batch.portrait_cam2world, batch.portrait_fov, batch.portrait_near, batch.portrait_far),
            RayCamera(batch.face_cam2world, batch.face_fov, batch.face_near, batch.face_far))


class GeneratorStep(nn.Module):
    """One generator forward for a batch, returning the rendered images and the non-adversarial
    loss terms (a module, so ``DistributedDataParallel`` can wrap it: DDP only hooks ``forward``)."""

    def __init__(self, generator: nn.Module, stage: int, weights: LossWeights, portrait_size: int, face_size: int,
                 deform_points: int, face_points: int) -> None:
        super().__init__()
        self.generator = generator
        self.stage, self.weights = stage, weights
        self.portrait_size, self.face_size = portrait_size, face_size
        self.deform_points, self.face_points = deform_points, face_points

    def forward(self, batch: Batch, rig, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-> (portrait rgba (B, 4, S, S), face rgba (B, 4, F, F), weighted loss terms)."""
        g, w = self.generator, self.weights
        cam_p, cam_f = _cameras(batch)
        noise = batch.z_id.new_zeros(batch.z_id.shape[0], g.config.noise_dim)
        terms: dict[str, torch.Tensor] = {}
        if self.stage == 1:
            styles = g.styles(batch.z_id, noise)
            out_p = g.render_direct(styles, rig, batch.expression, batch.pose, cam_p, self.portrait_size,
                                    jitter=True, generator=rng)
            out_f = g.render_direct(styles, rig, batch.expression, batch.pose, cam_f, self.face_size,
                                    jitter=True, generator=rng)
            terms.update(self._deformation(batch, rig, out_p.aux, rng))
        else:
            baked = g.bake(batch.z_id, noise)
            out_p = g.render(baked, rig, batch.expression, batch.pose, cam_p, self.portrait_size)
            out_f = g.render(baked, rig, batch.expression, batch.pose, cam_f, self.face_size)
            if w.consistency > 0:
                lr = g.config.ray_resolution
                with torch.no_grad():
                    low = g.render(baked, rig, batch.expression, batch.pose, cam_p, lr, use_lr_maps=True).rgba
                terms["consistency"] = w.consistency * F.mse_loss(resize_images(out_p.rgba.float(), lr), low.float())
        rec_p = L.reconstruction_loss(out_p.rgb, out_p.alpha, batch.portrait[:, :3], batch.portrait[:, 3:],
                                      gradient=w.gradient)
        rec_f = L.reconstruction_loss(out_f.rgb, out_f.alpha, batch.face[:, :3], batch.face[:, 3:], gradient=w.gradient)
        terms["reconstruction"] = w.reconstruction * (rec_p + w.reconstruction_face * rec_f)
        return out_p.rgba, out_f.rgba, terms

    def _deformation(self, batch: Batch, rig, aux, rng: torch.Generator) -> dict[str, torch.Tensor]:
        from puppet.generator.skinning import expression_offsets

        g, w = self.generator, self.weights
        out: dict[str, torch.Tensor] = {}
        dev = batch.z_id.device
        n = aux.neutral_points.shape[1]
        pick = torch.randint(0, n, (min(self.deform_points, n),), generator=rng, device=dev)
        pts = aux.neutral_points[:, pick].float()
        disp = aux.displacement[:, pick].float()
        offsets = expression_offsets(rig, batch.expression)
        face_exp = rig.face_rest + offsets
        # Points around the expressed face model (where the imitation target is defined) and their
        # shifted copies, plus the face vertices themselves: one D_e call.
        b, f = face_exp.shape[:2]
        m = self.face_points
        sel = torch.randint(0, f, (m,), generator=rng, device=dev)
        jitter = torch.randn((b, m, 3), generator=rng, device=dev) * (0.5 * w.imitation_radius)
        near = face_exp[:, sel] + jitter
        delta = torch.randn((b, m, 3), generator=rng, device=dev) * w.smooth_delta
        queries = torch.cat([near, near + delta, face_exp], dim=1)
        d_all = g.expression_displacement(queries, batch.z_id, batch.expression).float()
        d_near, d_shift, d_face = d_all[:, :m], d_all[:, m:2 * m], d_all[:, 2 * m:]
        if w.imitation > 0:
            out["imitation"] = w.imitation * L.imitation_loss(torch.cat([pts, near], 1), torch.cat([disp, d_near], 1),
                                                              rig.face_rest, offsets, w.imitation_radius)
        if w.landmark > 0:
            out["landmark"] = w.landmark * L.landmark_loss(rig.face_rest, offsets, d_face)
        if w.expression_smooth > 0 and m > 0:
            out["expression_smooth"] = w.expression_smooth * L.expression_smoothness(d_near, d_shift)
        if w.minimal_deformation > 0:
            out["minimal_deformation"] = w.minimal_deformation * L.minimal_deformation(disp)
        if w.pose_smooth > 0 and aux.pose is not None:
            out["pose_smooth"] = w.pose_smooth * L.pose_smoothness(aux.pose.raw, aux.pose.smoothed,
                                                                   g.config.pose_kernel_depth)
        return out


def _adversarial_g(d: PortraitDiscriminators, portrait: torch.Tensor, face: torch.Tensor, batch: Batch,
                   w: LossWeights) -> dict[str, torch.Tensor]:
    if w.gan <= 0:
        return {}
    out = d(portrait, face)
    terms = {"gan_g": w.gan * (w.gan_whole * L.ns_generator_loss(out["whole"].logit)
                               + w.gan_face * L.ns_generator_loss(out["face"].logit)
                               + w.gan_torso * L.ns_generator_loss(out["torso"].logit))}
    if w.pose_regression > 0 and out["whole"].pose is not None:
        terms["pose_g"] = w.gan * w.gan_whole * w.pose_regression * L.pose_regression_loss(out["whole"].pose, batch.camera)
    return terms


def _discriminator_loss(d: nn.Module, real_p: torch.Tensor, real_f: torch.Tensor, fake_p: torch.Tensor,
                        fake_f: torch.Tensor, batch: Batch, w: LossWeights, autocast) -> dict[str, torch.Tensor]:
    """Logistic loss + R1 of each view (unweighted: each D has its own parameters and Adam is
    invariant to a constant factor on its loss), + camera regression on real portraits. One
    forward of real and fake together (DDP allows one forward per backward)."""
    b = real_p.shape[0]
    real_p = real_p.detach().requires_grad_(True)
    real_f = real_f.detach().requires_grad_(True)
    with autocast():
        out = d(torch.cat([real_p, fake_p.detach()]), torch.cat([real_f, fake_f.detach()]))
    terms: dict[str, torch.Tensor] = {}
    total_r1 = real_p.new_zeros(())
    for view in ("whole", "face", "torso"):
        logit = out[view].logit
        terms[f"d_{view}"] = L.ns_discriminator_loss(logit[:b], logit[b:])
        total_r1 = total_r1 + L.r1_penalty(logit[:b], real_f if view == "face" else real_p, w.r1_gamma)
    terms["r1"] = total_r1
    if w.pose_regression > 0 and out["whole"].pose is not None:
        terms["pose_d"] = w.pose_regression * L.pose_regression_loss(out["whole"].pose[:b], batch.camera)
    return terms


# ----------------------------------------------------------------------------- grids

def _over_grey(rgba: torch.Tensor) -> np.ndarray:
    """Premultiplied ``(4, H, W)`` over mid grey -> uint8 ``(H, W, 3)``."""
    rgb = rgba[:3] + (1.0 - rgba[3:4]) * 0.5
    return (rgb.clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255.0 + 0.5).astype(np.uint8)


def render_batch(generator: nn.Module, rig, batch: Batch, stage: int, portrait_size: int, face_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch as the stage trains it (stage 1 ``render_direct``, stage 2 ``bake`` + ``render``),
    noise 0, no grad, eval mode -> premultiplied RGBA portrait ``(B, 4, S, S)`` and face ``(B, 4, F, F)``."""
    cam_p, cam_f = _cameras(batch)
    noise = batch.z_id.new_zeros(batch.z_id.shape[0], generator.config.noise_dim)
    was = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            if stage == 1:
                styles = generator.styles(batch.z_id, noise)
                gp = generator.render_direct(styles, rig, batch.expression, batch.pose, cam_p, portrait_size).rgba
                gf = generator.render_direct(styles, rig, batch.expression, batch.pose, cam_f, face_size).rgba
            else:
                baked = generator.bake(batch.z_id, noise)
                gp = generator.render(baked, rig, batch.expression, batch.pose, cam_p, portrait_size).rgba
                gf = generator.render(baked, rig, batch.expression, batch.pose, cam_f, face_size).rgba
    finally:
        generator.train(was)
    return gp.float(), gf.float()


def image_grid(target_p: torch.Tensor, gen_p: torch.Tensor, target_f: torch.Tensor, gen_f: torch.Tensor,
               tile: int = 128) -> np.ndarray:
    """Rows of [target portrait | generated portrait | target face | generated face], each tile
    ``tile`` px (nearest-neighbour upscaling, so pixels stay visible) -> uint8 ``(rows * tile, 4 tile, 3)``."""
    from PIL import Image

    rows = []
    for n in range(target_p.shape[0]):
        cells = []
        for img in (target_p[n], gen_p[n], target_f[n], gen_f[n]):
            pil = Image.fromarray(_over_grey(img.detach()))
            cells.append(np.asarray(pil.resize((tile, tile), Image.NEAREST if pil.width < tile else Image.BILINEAR)))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def loss_curves(rows: list[dict[str, float]], keys: tuple[str, ...], panel: tuple[int, int] = (360, 150),
                columns: int = 2) -> np.ndarray:
    """Small line charts of logged terms against the step (one panel per key, linear y from the
    term's min to max, labelled) -> uint8 ``(H, W, 3)``. PIL only (no plotting dependency)."""
    from PIL import Image, ImageDraw

    pw, ph = panel
    rows_n = -(-len(keys) // columns)
    img = Image.new("RGB", (pw * columns, ph * rows_n), "white")
    draw = ImageDraw.Draw(img)
    for i, key in enumerate(keys):
        x0, y0 = (i % columns) * pw, (i // columns) * ph
        pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        left, top, right, bottom = x0 + 48, y0 + 18, x0 + pw - 8, y0 + ph - 18
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        draw.text((left, y0 + 3), key, fill=(0, 0, 0))
        if len(pts) < 2:
            continue
        steps, vals = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
        lo, hi = float(vals.min()), float(vals.max())
        span = hi - lo if hi > lo else 1.0
        xs = left + (steps - steps.min()) / max(1.0, steps.max() - steps.min()) * (right - left)
        ys = bottom - (vals - lo) / span * (bottom - top)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(200, 40, 40), width=2)
        draw.text((x0 + 2, top - 2), f"{hi:.3g}", fill=(80, 80, 80))
        draw.text((x0 + 2, bottom - 10), f"{lo:.3g}", fill=(80, 80, 80))
        draw.text((left, bottom + 3), f"{int(steps.min())}", fill=(80, 80, 80))
        draw.text((right - 30, bottom + 3), f"{int(steps.max())}", fill=(80, 80, 80))
    return np.asarray(img)


# ----------------------------------------------------------------------------- the run

class _RunFiles:
    """Paths of a run directory and the checks on it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.run = out / RUN_FILE
        self.log = out / LOG_FILE
        self.ckpt = out / CHECKPOINT_DIR
        self.generator = self.ckpt / GENERATOR_FILE
        self.state = self.ckpt / STATE_FILE
        self.state_json = self.ckpt / STATE_JSON
        self.grids = out / GRID_DIR

    def read_run(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.run.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutputError(f"{self.run} is not a readable puppet training run ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
            raise OutputError(f"{self.out} holds something else than a puppet training run")
        if doc.get("version") != RUN_VERSION:
            raise OutputError(f"{self.out}: training run version {doc.get('version')!r}, this puppet reads {RUN_VERSION}")
        return doc

    def prepare(self, resume: bool) -> dict[str, Any] | None:
        """Check (and create) the run directory; -> the saved run document when resuming."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"cannot use {out} as the run directory: it is a file")
        if resume:
            if not self.run.is_file():
                raise OutputError(f"cannot resume: {out} holds no puppet training run ({RUN_FILE} missing)")
            doc = self.read_run()
            if not (self.state.is_file() and self.state_json.is_file() and self.generator.is_file()):
                raise OutputError(f"cannot resume: {out} has no checkpoint yet")
            return doc
        if self.run.is_file():
            self.read_run()  # a foreign file gives its own message
            raise OutputError(f"{out} already holds a training run: pass --resume to continue it or choose a new folder")
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(f"{out} is not empty and holds no puppet training run; use a new or empty folder")
        parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OutputError(f"cannot create the run directory {out}: {parent} is not writable")
        return None

    def make(self) -> None:
        try:
            for p in (self.out, self.ckpt, self.grids):
                p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {exc.filename}: {exc.strerror}") from None
        if not os.access(self.out, os.W_OK):
            raise OutputError(f"cannot write to the run directory {self.out}")


def _freeze_for_stage(generator: nn.Module, stage: int, train_feature_heads: bool) -> list[nn.Parameter]:
    """Set ``requires_grad`` per stage (module docstring) and return the trainable parameters."""
    for p in generator.parameters():
        p.requires_grad_(False)
    if stage == 1:
        train = [generator.radiance_mapping, generator.manifold, generator.deform, generator.radiance]
        if generator.pose_deformer is not None:
            train.append(generator.pose_deformer)
        for m in train:
            for p in m.parameters():
                p.requires_grad_(True)
        for p in generator.radiance.feature_heads.parameters():  # only the SR maps read features
            p.requires_grad_(False)
    else:
        for m in (generator.sr, generator.sr_mapping):
            for p in m.parameters():
                p.requires_grad_(True)
        if train_feature_heads:
            for p in generator.radiance.feature_heads.parameters():
                p.requires_grad_(True)
    return [p for p in generator.parameters() if p.requires_grad]


def _sizes(options: TrainOptions, config: GeneratorConfig) -> tuple[int, int]:
    if options.stage == 1:
        default = (config.ray_resolution, config.ray_resolution)
    else:
        hr = config.ray_resolution * config.sr_scale
        default = (hr, max(2, hr // 2))
    return options.portrait_size or default[0], options.face_size or default[1]


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@contextlib.contextmanager
def _no_context() -> Iterator[None]:
    yield


class _Trainer:
    def __init__(self, options: TrainOptions) -> None:
        self.options = options
        self.dist = _dist_from_env()
        self.files = _RunFiles(options.out)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from puppet.dataset import SynthDataset

        o = self.options
        SynthDataset(o.data)  # a missing, foreign or unfinished dataset fails here, before anything is written
        saved = self.files.prepare(o.resume) if self.dist.main else (
            self.files.read_run() if o.resume else None)
        if saved is not None:
            gen_cfg = GeneratorConfig.from_dict(saved["generator"])
            disc_cfg = DiscriminatorConfig.from_dict(saved["discriminator"])
            weights = LossWeights.from_dict(saved["loss_weights"])
            kept = saved["options"]
            o = dataclasses.replace(o, stage=kept["stage"], batch=kept["batch"], g_lr=kept["g_lr"], d_lr=kept["d_lr"],
                                    betas=tuple(kept["betas"]), grad_clip=kept["grad_clip"], ema=kept["ema"],
                                    seed=kept["seed"], weights=weights, portrait_size=kept["portrait_size"],
                                    face_size=kept["face_size"], deform_points=kept["deform_points"],
                                    face_points=kept["face_points"], train_feature_heads=kept["train_feature_heads"],
                                    config=kept["config"], init=kept["init"])
            self.options = o
        else:
            gen_cfg, disc_cfg, weight_doc = resolve_config(o.config)
            if weight_doc is not None:
                o = dataclasses.replace(o, weights=LossWeights.from_dict({**o.weights.to_dict(), **weight_doc}))
                self.options = o
        if o.stage == 2 and saved is None:
            if o.init is None:
                raise InputError("stage 2 starts from a stage-1 generator: pass --init RUN/checkpoint/generator.safetensors")
        self.gen_cfg, self.disc_cfg, self.weights = gen_cfg, disc_cfg, o.weights
        if o.threads:
            torch.set_num_threads(o.threads)
        self.device = _resolve_device(o.device, self.dist)
        if self.dist.world > 1:
            import torch.distributed as tdist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if not tdist.is_initialized():  # long timeout: the first run bakes every identity's rig
                tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                         timeout=datetime.timedelta(hours=4))
        amp = o.amp if o.amp != "auto" else ("fp16" if self.device.type == "cuda" else "off")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if amp != "off" and self.device.type != "cuda":
            raise InputError(f"--amp {amp} needs a CUDA device")
        self.amp = amp

        from puppet.generator.model import Generator

        if saved is None and o.stage == 2:
            from puppet.generator.checkpoint import load_checkpoint

            generator, _ = load_checkpoint(o.init)
            if generator.config != gen_cfg:
                log.info("stage 2 uses the generator config of %s", o.init)
                self.gen_cfg = gen_cfg = generator.config
                self.disc_cfg = disc_cfg = default_discriminator(gen_cfg)
        else:
            torch.manual_seed(o.seed)
            generator = Generator(gen_cfg, point_chunk=o.point_chunk)
        generator.point_chunk = o.point_chunk
        self.generator = generator.to(self.device).train()
        self.portrait_size, self.face_size = _sizes(o, gen_cfg)
        self.params_g = _freeze_for_stage(self.generator, o.stage, o.train_feature_heads)
        torch.manual_seed(o.seed + 1)
        self.disc = PortraitDiscriminators(self.portrait_size, self.face_size, disc_cfg).to(self.device).train()
        self.ema = copy.deepcopy(self.generator).eval() if o.ema > 0 else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.params_g, lr=o.generator_lr, betas=o.betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=o.d_lr, betas=o.betas)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.data = TrainingData(o.data, gen_cfg, o.batch, o.seed, o.rig_cache, self.dist, self.device, o.workers)
        self.step = 0
        if saved is not None:
            self._load_state()
        elif self.dist.main:
            self.files.make()
            _atomic_json(self.files.run, self._run_doc())
        self.g_step = GeneratorStep(self.generator, o.stage, self.weights, self.portrait_size, self.face_size,
                                    o.deform_points, o.face_points)
        self.g_step_ddp: nn.Module = self.g_step
        self.disc_ddp: nn.Module = self.disc
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_step_ddp = DDP(self.g_step, device_ids=ids)  # every trainable parameter is used each step
            self.disc_ddp = DDP(self.disc, device_ids=ids)

    def _run_doc(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, "version": RUN_VERSION, "options": self.options.to_dict(),
                "generator": self.gen_cfg.to_dict(), "discriminator": self.disc_cfg.to_dict(),
                "loss_weights": self.weights.to_dict(), "dataset": self.data.describe(),
                "portrait_size": self.portrait_size, "face_size": self.face_size, "amp": self.amp,
                "world_size": self.dist.world, "torch": torch.__version__}

    # ---------------------------------------------------------------- checkpoints
    def _save(self) -> Path:
        from safetensors.torch import save_file

        from puppet.generator.checkpoint import save_checkpoint

        f = self.files
        extra = {"step": self.step, "stage": self.options.stage, "ema": self.ema is not None,
                 "run": str(self.options.out), "dataset": str(self.options.data)}
        save_checkpoint(f.generator, self.ema if self.ema is not None else self.generator, extra)
        tensors: dict[str, torch.Tensor] = {}
        skeleton = {
            "generator": flatten_state(self.generator.state_dict(), "generator", tensors),
            "discriminators": flatten_state(self.disc.state_dict(), "discriminators", tensors),
            "opt_g": flatten_state(self.opt_g.state_dict(), "opt_g", tensors),
            "opt_d": flatten_state(self.opt_d.state_dict(), "opt_d", tensors),
            "scaler_g": flatten_state(self.scaler_g.state_dict(), "scaler_g", tensors),
            "scaler_d": flatten_state(self.scaler_d.state_dict(), "scaler_d", tensors),
        }
        tmp = f.state.with_name(f.state.name + ".partial")
        try:
            save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "step": str(self.step)})
            os.replace(tmp, f.state)
        except OSError as exc:
            raise OutputError(f"cannot write {f.state}: {exc.strerror or exc}") from None
        epoch, offset = self.data.position()
        _atomic_json(f.state_json, {"format": STATE_FORMAT, "step": self.step, "seed": self.options.seed,
                                    "stage": self.options.stage, "data_epoch": epoch, "data_offset": offset,
                                    "state": skeleton, "time": time.time()})
        return f.generator

    def _load_state(self) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        from puppet.generator.checkpoint import load_checkpoint

        f = self.files
        try:
            doc = json.loads(f.state_json.read_text())
            with safe_open(str(f.state), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(f.state), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any broken file ends in one line
            raise AssetError(f"cannot read the training state in {f.ckpt}: {str(exc).splitlines()[0][:160]}") from None
        if doc.get("format") != STATE_FORMAT or meta.get("format") != STATE_FORMAT or meta.get("step") != str(doc.get("step")):
            raise AssetError(f"{f.ckpt}: the training state files are foreign or do not belong together")
        s = doc["state"]
        try:
            self.generator.load_state_dict(unflatten_state(s["generator"], tensors))
            self.disc.load_state_dict(unflatten_state(s["discriminators"], tensors))
            self.opt_g.load_state_dict(unflatten_state(s["opt_g"], tensors))
            self.opt_d.load_state_dict(unflatten_state(s["opt_d"], tensors))
            self.scaler_g.load_state_dict(unflatten_state(s["scaler_g"], tensors))
            self.scaler_d.load_state_dict(unflatten_state(s["scaler_d"], tensors))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise AssetError(f"{f.ckpt}: the training state does not match this run ({str(exc).splitlines()[0][:160]})") from None
        if self.ema is not None:
            ema, _ = load_checkpoint(f.generator, self.device)
            self.ema.load_state_dict(ema.state_dict())
        self.step = int(doc["step"])
        self.data.seek(int(doc["data_epoch"]), int(doc["data_offset"]))

    # ---------------------------------------------------------------- one step
    def _autocast(self):
        if self.amp == "off":
            return _no_context()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_step(self, batch: Batch, rng: torch.Generator) -> dict[str, float]:
        """One G update then one D update; the batch in ``batch_split`` micro-batches whose gradients
        accumulate (GRAM's batch_split: same update, less memory)."""
        o, w = self.options, self.weights
        chunks = batch.split(o.batch_split)
        n = len(chunks)
        sums: dict[str, float] = {}

        def add(terms: dict[str, torch.Tensor]) -> None:
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + float(v.detach()) / n

        # generator
        for p in self.disc.parameters():
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        fakes = []
        for i, part in enumerate(chunks):
            rig = self.data.rig_tensors.take(part.identity)
            with self._sync(self.g_step_ddp, i == n - 1), self._autocast():
                fake_p, fake_f, terms = self.g_step_ddp(part, rig, rng)
                terms.update(_adversarial_g(self.disc, fake_p, fake_f, part, w))
                total = sum(v.float() for v in terms.values())
                self.scaler_g.scale(total / n).backward()
            terms["g_total"] = total
            add(terms)
            fakes.append((fake_p.detach().float(), fake_f.detach().float()))
        self.scaler_g.unscale_(self.opt_g)
        g_norm = nn.utils.clip_grad_norm_(self.params_g, o.grad_clip if o.grad_clip > 0 else float("inf"))
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        sums["g_grad_norm"] = float(g_norm)
        # discriminators
        for p in self.disc.parameters():
            p.requires_grad_(True)
        if w.gan > 0:
            d_ctx = self._autocast if self.amp != "fp16" else _no_context  # R1 in fp32 under fp16
            self.opt_d.zero_grad(set_to_none=True)
            for i, (part, (fake_p, fake_f)) in enumerate(zip(chunks, fakes)):
                with self._sync(self.disc_ddp, i == n - 1):
                    d_terms = _discriminator_loss(self.disc_ddp, part.portrait, part.face, fake_p, fake_f, part, w, d_ctx)
                    d_total = sum(v.float() for v in d_terms.values())
                    self.scaler_d.scale(d_total / n).backward()
                d_terms["d_total"] = d_total
                add(d_terms)
            self.scaler_d.unscale_(self.opt_d)
            if o.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.disc.parameters(), o.grad_clip)
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        self._update_ema()
        return sums

    def _sync(self, module: nn.Module, last: bool):
        """DDP: all-reduce gradients only on the last micro-batch."""
        if last or not hasattr(module, "no_sync"):
            return _no_context()
        return module.no_sync()

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.options.ema, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.generator.parameters()):
                if p.requires_grad:
                    pe.lerp_(p.detach(), 1.0 - decay)
            for be, b in zip(self.ema.buffers(), self.generator.buffers()):
                be.copy_(b)

    # ---------------------------------------------------------------- outputs
    def _grid(self, path: Path) -> None:
        from PIL import Image

        n = min(self.options.grid_samples, len(self.data))
        if n == 0:
            return
        batch = self.data.batch(self.data.first_samples(n), self.portrait_size, self.face_size,
                                self.gen_cfg.ray_half_depth)
        g = self.ema if self.ema is not None else self.generator
        with self._autocast():
            gp, gf = render_batch(g, self.data.rig_tensors.take(batch.identity), batch, self.options.stage,
                                  self.portrait_size, self.face_size)
        grid = image_grid(batch.portrait, gp, batch.face, gf, tile=max(128, min(256, self.portrait_size)))
        try:
            Image.fromarray(grid).save(path, optimize=True)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        o = self.options
        start_step = self.step
        main = self.dist.main
        if start_step >= o.steps:
            log.warning("the run is already at step %d of %d: nothing to do", start_step, o.steps)
        t0 = time.perf_counter()
        history: list[dict[str, float]] = []
        pending: list[dict[str, float]] = []
        log_fh = open(self.files.log, "a") if main else None
        last_log_t, last_log_step = t0, start_step
        try:
            while self.step < o.steps:
                k = self.step
                seed = _step_seed(o.seed, k, self.dist.rank)
                torch.manual_seed(seed)
                rng = torch.Generator(device=self.device).manual_seed(seed)
                batch = self.data.batch(self.data.next_samples(), self.portrait_size, self.face_size,
                                        self.gen_cfg.ray_half_depth)
                values = self._train_step(batch, rng)
                if not all(math.isfinite(v) for v in values.values()):
                    bad = sorted(key for key, v in values.items() if not math.isfinite(v))
                    raise FloatingPointError(f"step {k}: non-finite loss terms {bad}")
                self.step = k + 1
                history.append(values)
                pending.append(values)
                last = self.step == o.steps
                if self.step % o.log_every == 0 or last:
                    mean = {key: float(np.mean([p[key] for p in pending if key in p])) for key in pending[-1]}
                    mean = _all_reduce_mean(mean, self.dist, self.device)
                    now = time.perf_counter()
                    rate = (now - last_log_t) / max(1, self.step - last_log_step)
                    last_log_t, last_log_step = now, self.step
                    pending = []
                    if main:
                        line = {"step": self.step, "time": round(now - t0, 3), "sec_per_step": round(rate, 4),
                                "lr_g": self.opt_g.param_groups[0]["lr"], **mean}
                        if self.device.type == "cuda":
                            line["cuda_max_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
                        log_fh.write(json.dumps(line) + "\n")
                        log_fh.flush()
                        if o.progress:
                            _console(self.step, o.steps, mean, rate)
                if main and (self.step % o.grid_every == 0 or last):
                    self._grid(self.files.grids / f"step_{self.step:06d}.png")
                if main and (self.step % o.checkpoint_every == 0 or last):
                    self._save()
        finally:
            if log_fh is not None:
                log_fh.close()
        seconds = time.perf_counter() - t0
        span = min(10, len(history))

        def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
            keys = rows[0].keys() if rows else ()
            return {key: float(np.mean([r[key] for r in rows if key in r])) for key in keys}

        return TrainResult(out=o.out, stage=o.stage, start_step=start_step, steps=self.step, seconds=seconds,
                           checkpoint=self.files.generator, log=self.files.log,
                           losses_first=mean_of(history[:span]), losses_last=mean_of(history[-span:]),
                           generator_parameters=sum(p.numel() for p in self.generator.parameters()))


def _console(step: int, total: int, mean: dict[str, float], rate: float) -> None:
    width = 20
    done = int(width * step / total)
    eta = rate * (total - step)
    parts = [f"{k} {mean[k]:.4f}" for k in ("reconstruction", "gan_g", "d_total") if k in mean]
    print(f"[{'#' * done}{'.' * (width - done)}] {step}/{total} " + " ".join(parts)
          + f" | {rate:.2f} s/step, eta {eta / 60:.1f} min", file=sys.stderr, flush=True)


def train(options: TrainOptions) -> TrainResult:
    """Run (or resume) a training run; see the module docstring. User mistakes raise
    ``PuppetError`` subclasses (one line): a missing or foreign dataset (``InputError``), an
    unwritable or foreign run directory (``OutputError``), a bad config (``InputError``)."""
    trainer = _Trainer(options)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        if trainer.dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
