"""Upper-body tracker: MediaPipe Pose (legacy solution, bundled model) -> ``BodyObservation``.

Only ``model_complexity=1`` is usable: mediapipe 0.10.14 bundles that model, while complexities 0
and 2 download theirs at run time and fail offline.

Measured here (2 CPU cores shared with other jobs, load 2-3; trackers run interleaved on the
same frames, 90 frames after warm-up; ms/frame median (p10)):

==========================================  ===========  ============================
input                                        full frame   downscaled first (cv2 area)
==========================================  ===========  ============================
lp_s32 1280x720                              21.5 (20.0)  512: 24.8, 384: 24.4, 256: 22.4
lp_s32 scaled to 512x288 (a 512 px video)    18.7 (18.1)  384: 20.3, 256: 18.7
lp_s20 480x908                               19.1 (18.2)  512: 21.3, 384: 20.7, 256: 20.3
lp_s32 upscaled to 1920x1080                 29.0 (21.0)  640: 31.7, 512: 35.7
==========================================  ===========  ============================

Downscaling before Pose never paid: Pose warps only its tracked region to 256x256, so the frame
size costs little (~2 ms from 512 px to 720p), while the resize costs 2-5 ms; it also moved the
landmarks by about the model's own frame-to-frame jitter (lp_s32 at 512: 6 px median in
1280x720 pixels, jitter 5 px). So frames go to Pose as they are.

``smooth_landmarks`` (MediaPipe's landmark filter) costs no time and cuts the frame-to-frame
jitter (second difference of nose, shoulders, ears) from 1.7 to 0.4 px at 512 px and from 3.1 to
0.5 px on lp_s20, but its output trails the raw landmarks by 2-3 frames (67-100 ms at 30 fps).
It is off by default: the pipeline smooths the solved parameters with One Euro filters, which
trade jitter for lag adaptively, and filtering twice would add both lags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from puppet.errors import PuppetError
from puppet.frame import Frame
from trackers.observation import NUM_POSE_LANDMARKS, BodyObservation

log = logging.getLogger(__name__)

SUPPORTED_MODEL_COMPLEXITY = 1


@dataclass(frozen=True)
class BodyTrackerOptions:
    """How to run MediaPipe Pose.

    model_complexity: 1, the only model bundled with mediapipe 0.10.14 (0 and 2 download at run
        time and fail offline); other values are refused.
    smooth_landmarks: MediaPipe's own landmark filter (4-7x less jitter, 2-3 frames of lag).
        Off by default: the pipeline smooths the solved parameters with One Euro filters.
    min_detection_confidence: person-detector score to start tracking, [0, 1].
    min_tracking_confidence: landmark score below which the detector runs again, [0, 1].
    """

    model_complexity: int = SUPPORTED_MODEL_COMPLEXITY
    smooth_landmarks: bool = False
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.model_complexity != SUPPORTED_MODEL_COMPLEXITY:
            raise PuppetError(
                f"pose model_complexity={self.model_complexity} is not available: mediapipe 0.10.14 "
                f"bundles only complexity {SUPPORTED_MODEL_COMPLEXITY} (0 and 2 download their models "
                "at run time, which fails offline)"
            )
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PuppetError(f"{name} must be in [0, 1], got {value}")


class BodyTracker:
    """MediaPipe Pose in video mode: one ``process(frame)`` per frame, in capture order.

    ``with BodyTracker() as tracker: body = tracker.process(frame)``
    """

    def __init__(self, options: BodyTrackerOptions | None = None) -> None:
        import mediapipe as mp  # heavy: imported when a tracker is built, not with the module

        self.options = options or BodyTrackerOptions()
        o = self.options
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=False,
            model_complexity=o.model_complexity,
            smooth_landmarks=o.smooth_landmarks,
            enable_segmentation=False,
            min_detection_confidence=o.min_detection_confidence,
            min_tracking_confidence=o.min_tracking_confidence,
        )
        log.debug("MediaPipe Pose opened: %s", o)

    def process(self, frame: Frame) -> BodyObservation | None:
        """Track one frame (``frame.image`` RGB uint8 (H, W, 3)); None when no person is found.

        image_landmarks are pixels of ``frame.image`` (z scaled like x, smaller = closer);
        world_landmarks are MediaPipe's metres (hip-centred, x image-right, y down, z away).
        """
        if self._pose is None:
            raise RuntimeError("BodyTracker is closed")
        image = frame.image
        h, w = image.shape[:2]
        result = self._pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None or result.pose_world_landmarks is None:
            return None
        img = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark],
                       dtype=np.float32)
        world = np.array([(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark],
                         dtype=np.float32)
        if img.shape[0] != NUM_POSE_LANDMARKS or world.shape[0] != NUM_POSE_LANDMARKS:
            raise RuntimeError(f"MediaPipe Pose returned {img.shape[0]} landmarks, expected 33")
        pixels = img[:, :3] * np.array([w, h, w], dtype=np.float32)
        return BodyObservation(
            image_landmarks=pixels,
            world_landmarks=world,
            visibility=np.clip(img[:, 3], 0.0, 1.0),
        )

    def reset(self) -> None:
        """Forget the tracked region (after a seek or a cut): the next frame runs detection."""
        if self._pose is not None:
            self._pose.reset()

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def __enter__(self) -> BodyTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
