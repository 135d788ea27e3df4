"""The unit that travels from a source through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image with its capture time.

    image: uint8 (H, W, 3) RGB, upright (rotation metadata already applied).
    t: capture time in seconds (stream pts times time base for files; monotonic clock for cameras).
    index: 0-based position in the source.
    """

    image: np.ndarray
    t: float
    index: int

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]
