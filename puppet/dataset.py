"""Reading the synthetic dataset that ``puppet synth`` writes (format: ``puppet.synth`` docstring).

``SynthDataset`` (numpy) opens a dataset folder, checks its manifest and streams samples shard by
shard; ``TorchSynthDataset`` wraps it as a torch ``IterableDataset`` for training: shards split
between ranks and data-loader workers, samples shuffled through a buffer, images as float tensors.
Nothing is unpickled (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from puppet.avatar import Avatar, avatar_from_dict
from puppet.contract import ARKIT_NAMES
from puppet.errors import AssetError, InputError
from puppet.synth import BANK_FILE, FIELDS, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE

IMAGES: tuple[str, ...] = ("portrait", "face")


@dataclass(frozen=True, eq=False)
class Shard:
    """One shard: samples ``start .. start + count - 1``; ``arrays`` the images and label arrays
    (``puppet.synth.FIELDS``), each with ``count`` rows."""

    index: int
    start: int
    count: int
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def sample(self, j: int) -> dict[str, np.ndarray]:
        """Row ``j`` of every array."""
        return {name: a[j] for name, a in self.arrays.items()}


class SynthDataset:
    """A ``puppet synth`` folder. ``len()`` samples; ``shard(i)``; iterating yields one dict of
    arrays per sample, in order, one shard in memory at a time.

    ``allow_incomplete``: open a dataset whose rendering was interrupted, with the finished shards
    only (by default that is an ``AssetError`` saying to finish it).
    """

    def __init__(self, root: str | Path, allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"no such dataset folder: {self.root}")
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            raise AssetError(f"{self.root} is not a puppet synth dataset (no {MANIFEST_FILE})")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AssetError(f"cannot read {path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise AssetError(f"{path} is not a puppet synth manifest (no \"format\": \"{FORMAT_NAME}\")")
        version = manifest.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AssetError(f"{path}: dataset format version {version!r} is newer than this puppet reads")
        if manifest.get("expression_names") != list(ARKIT_NAMES):
            raise AssetError(f"{path} uses a different expression order than this puppet")
        fields = {k: (tuple(v["shape"]), v["dtype"]) for k, v in manifest.get("fields", {}).items()}
        if fields != {k: (tuple(s), d) for k, (s, d) in FIELDS.items()}:
            raise AssetError(f"{path}: the label fields differ from this puppet's")
        self.manifest: dict[str, Any] = manifest
        self.size: int = int(manifest["size"])
        self.face_size: int = int(manifest["face_size"])
        listed = manifest["shards"]
        present = [i for i, s in enumerate(listed) if (self.root / s["file"]).is_file()]
        if len(present) < len(listed) and not allow_incomplete:
            raise AssetError(f"{self.root} is incomplete ({len(present)} of {len(listed)} shards): run the same "
                             "`puppet synth` command again to finish it")
        self._shards: list[dict[str, Any]] = [listed[i] | {"index": i} for i in present]

    @property
    def identities(self) -> list[Avatar]:
        """The avatars of the identity labels (index = label)."""
        return [avatar_from_dict(d, where=f"{self.root} identity {i}")
                for i, d in enumerate(self.manifest["identities"])]

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __len__(self) -> int:
        return sum(int(s["count"]) for s in self._shards)

    def shard(self, i: int) -> Shard:
        """The ``i``-th available shard, loaded whole and checked against the manifest."""
        entry = self._shards[i]
        path = self.root / entry["file"]
        count = int(entry["count"])
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in (*IMAGES, *FIELDS)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise AssetError(f"corrupt dataset shard {path}: {exc}") from None
        expected = {"portrait": ((self.size, self.size, 4), "uint8"),
                    "face": ((self.face_size, self.face_size, 4), "uint8"), **FIELDS}
        for name, (shape, dtype) in expected.items():
            a = arrays[name]
            if a.shape != (count, *shape) or a.dtype != np.dtype(dtype):
                raise AssetError(f"corrupt dataset shard {path}: {name} is {a.dtype} {a.shape}, "
                                 f"expected {dtype} {(count, *shape)}")
        return Shard(index=int(entry["index"]), start=int(entry["start"]), count=count, arrays=arrays)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_shards):
            shard = self.shard(i)
            for j in range(shard.count):
                yield shard.sample(j)

    def expression_bank(self):
        """The ``ExpressionBank`` the ``expression_source`` / ``pose_source`` labels index, or None."""
        from puppet.expression_bank import load_bank

        path = self.root / BANK_FILE
        return load_bank(path) if path.is_file() else None


def to_tensors(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One sample's arrays -> tensors: images float32 CHW in [0, 1] (RGB premultiplied, then
    alpha), integer labels int64, the other labels float32."""
    out: dict[str, torch.Tensor] = {}
    for name, a in sample.items():
        if name in IMAGES:
            out[name] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)
        elif np.issubdtype(a.dtype, np.integer):
            out[name] = torch.as_tensor(a, dtype=torch.int64)
        else:
            out[name] = torch.from_numpy(np.array(a, dtype=np.float32))
    return out


class TorchSynthDataset(IterableDataset):
    """``SynthDataset`` for a torch ``DataLoader``: yields ``to_tensors`` dicts (batch them with
    the default collate).

    Shards are dealt to ranks (``rank`` of ``world_size``), then to the loader's workers; with
    ``shuffle`` the shard order changes every epoch (``set_epoch``) and samples pass through a
    shuffle buffer of ``buffer_size`` samples (uint8 images are kept, converted when yielded).
    A rank or worker without shards yields nothing: use at least ``world_size * num_workers``
    shards.
    """

    def __init__(self, root: str | Path, shuffle: bool = True, buffer_size: int = 512, seed: int = 0,
                 rank: int = 0, world_size: int = 1, allow_incomplete: bool = False) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.data = SynthDataset(root, allow_incomplete=allow_incomplete)
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """The shards this rank's ``worker`` reads this epoch."""
        order = np.arange(self.data.num_shards)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return [int(k) for k in order[self.rank::self.world_size][worker::num_workers]]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(worker, num_workers)
        if not self.shuffle:
            for k in shards:
                shard = self.data.shard(k)
                for j in range(shard.count):
                    yield to_tensors(shard.sample(j))
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer: list[tuple[Shard, int]] = []
        for k in shards:
            shard = self.data.shard(k)
            for j in rng.permutation(shard.count):
                if len(buffer) < self.buffer_size:
                    buffer.append((shard, int(j)))
                    continue
                r = int(rng.integers(len(buffer)))
                out, buffer[r] = buffer[r], (shard, int(j))
                yield to_tensors(out[0].sample(out[1]))
        for r in rng.permutation(len(buffer)):
            shard, j = buffer[r]
            yield to_tensors(shard.sample(j))
