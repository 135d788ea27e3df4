"""What the trackers see in one frame, before any solving.

Coordinates are in pixels of the (upright) frame: x right, y down; z is MediaPipe's relative depth
scaled like x (smaller = closer to the camera). World landmarks of the body are metres, hip-centred,
with the same axis directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FACE_LANDMARKS = 478  # 468 mesh + 10 iris
NUM_POSE_LANDMARKS = 33


@dataclass(frozen=True)
class FaceObservation:
    """One tracked face.

    landmarks: float32 (478, 3) pixels (x, y) and depth z in pixels.
    score: tracker confidence in [0, 1] (face presence).
    blendshapes: float32 (52,) in contract order when the tracker computes them
        (MediaPipe's blendshape model), else None.
    """

    landmarks: np.ndarray
    score: float
    blendshapes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.landmarks.shape != (NUM_FACE_LANDMARKS, 3):
            raise ValueError(f"face landmarks must be ({NUM_FACE_LANDMARKS}, 3), got {self.landmarks.shape}")
        if self.blendshapes is not None and self.blendshapes.shape != (52,):
            raise ValueError(f"blendshapes must be (52,), got {self.blendshapes.shape}")

    @property
    def center(self) -> np.ndarray:
        return self.landmarks[:, :2].mean(axis=0)

    @property
    def size(self) -> float:
        """Diagonal of the landmarks' bounding box, pixels."""
        lo, hi = self.landmarks[:, :2].min(0), self.landmarks[:, :2].max(0)
        return float(np.linalg.norm(hi - lo))


@dataclass(frozen=True)
class BodyObservation:
    """One tracked upper body (MediaPipe Pose, 33 landmarks).

    image_landmarks: float32 (33, 3) pixels, z like the face's.
    world_landmarks: float32 (33, 3) metres, origin between the hips.
    visibility: float32 (33,) in [0, 1].
    """

    image_landmarks: np.ndarray
    world_landmarks: np.ndarray
    visibility: np.ndarray

    def __post_init__(self) -> None:
        for name in ("image_landmarks", "world_landmarks"):
            if getattr(self, name).shape != (NUM_POSE_LANDMARKS, 3):
                raise ValueError(f"{name} must be ({NUM_POSE_LANDMARKS}, 3), got {getattr(self, name).shape}")
        if self.visibility.shape != (NUM_POSE_LANDMARKS,):
            raise ValueError(f"visibility must be ({NUM_POSE_LANDMARKS},), got {self.visibility.shape}")


@dataclass(frozen=True)
class Observation:
    """Everything the trackers found in one frame; ``face``/``body`` are None when not found."""

    t: float
    index: int
    image_size: tuple[int, int]  # (width, height)
    face: FaceObservation | None = None
    body: BodyObservation | None = None
