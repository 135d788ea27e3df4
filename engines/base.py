"""The engine protocol of DESIGN.md: parameters in, frames out, identity baked once.

An engine is built from its options (``engines.create("mesh", size=512)``), bakes an avatar once
(``bake(avatar) -> Baked``: work that depends on identity only), then renders any number of
parameter frames against that bake (``render(baked, params) -> RenderedFrame``; a sequence of
params gives a tuple of frames). ``info()`` says what it runs on; ``close()`` (or ``with``)
releases it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, overload, runtime_checkable

import numpy as np

from puppet.avatar import Avatar
from puppet.params import DriverParams


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered frame: ``image`` uint8 (H, W, 4) RGBA (A = the avatar's coverage), ``t`` the
    capture time of the parameters it was rendered from (seconds)."""

    image: np.ndarray
    t: float

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 4:
            raise ValueError(f"RenderedFrame.image must be uint8 (H, W, 4), got "
                             f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
        img.setflags(write=False)
        object.__setattr__(self, "t", float(self.t))

    @property
    def rgb(self) -> np.ndarray:
        """The colour channels (H, W, 3), already composited over the engine's background."""
        return self.image[..., :3]

    @property
    def alpha(self) -> np.ndarray:
        """Coverage of the avatar (H, W) uint8."""
        return self.image[..., 3]


@dataclass(frozen=True)
class EngineInfo:
    """What an engine runs on: ``backend`` (e.g. "moderngl"), ``device`` (e.g. the GL renderer),
    ``precision`` ("float32", "float16"...), ``resolution`` (width, height)."""

    backend: str
    device: str
    precision: str
    resolution: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Baked:
    """Identity work an engine did once for ``avatar``; engines subclass it with their data."""

    avatar: Avatar
    engine: str


@runtime_checkable
class Engine(Protocol):
    """Parameters -> image. Implementations: ``engines.mesh.MeshEngine``."""

    def bake(self, avatar: Avatar) -> Baked: ...

    @overload
    def render(self, baked: Baked, params: DriverParams) -> RenderedFrame: ...

    @overload
    def render(self, baked: Baked, params: Sequence[DriverParams]) -> tuple[RenderedFrame, ...]: ...

    def render(self, baked, params): ...

    def info(self) -> EngineInfo: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: Any) -> None: ...


class EngineBase:
    """Shared plumbing: batches, the context manager and the closed check. Subclasses implement
    ``bake``, ``_render_one``, ``info`` and ``_release``."""

    name: str = "engine"
    _closed: bool = False

    def bake(self, avatar: Avatar) -> Baked:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, baked: Baked, params):
        """``params`` one frame -> ``RenderedFrame``; a sequence -> a tuple of them, in order."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not isinstance(baked, Baked) or baked.engine != self.name:
            raise TypeError(f"{type(self).__name__}.render needs a bake from this engine, got {type(baked).__name__}")
        if isinstance(params, DriverParams):
            return self._render_one(baked, params)
        return tuple(self._render_one(baked, p) for p in params)

    def _render_one(self, baked: Baked, params: DriverParams) -> RenderedFrame:  # pragma: no cover
        raise NotImplementedError

    def info(self) -> EngineInfo:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        if not self._closed:
            self._release()
            self._closed = True

    def _release(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
