"""Image composition for outputs: driver and avatar side by side."""

from __future__ import annotations

import cv2
import numpy as np


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """Scale ``image`` to ``height`` rows keeping its aspect ratio (area filter when shrinking)."""
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def side_by_side(driver: np.ndarray, avatar: np.ndarray) -> np.ndarray:
    """Driver (any size, RGB) scaled to the avatar's height, then the avatar (RGB) on its right."""
    left = fit_height(driver, avatar.shape[0])
    return np.ascontiguousarray(np.concatenate([left, avatar[..., :3]], axis=1))
