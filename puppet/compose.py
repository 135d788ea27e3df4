"""Image composition for outputs: avatar over a background, driver and avatar side by side."""

from __future__ import annotations

import cv2
import numpy as np


def flatten_rgba(rgba: np.ndarray, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """``H x W x 4`` uint8 -> ``H x W x 3`` uint8 composited over a flat colour."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32)
    return (rgba[..., :3].astype(np.float32) * alpha + bg * (1.0 - alpha) + 0.5).astype(np.uint8)


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
