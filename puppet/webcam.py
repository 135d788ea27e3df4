"""``puppet webcam``: live preview, driver and avatar side by side.

A live pipeline (newest frame wins, drops counted) from a camera, or from a video played at its
real frame rate, into a window on the main thread. Hotkeys: c recalibrate the neutral, n / p next
/ previous avatar, o overlay on/off, q or Esc quit.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from puppet.compose import side_by_side
from puppet.convert import RenderOptions
from puppet.errors import PuppetError
from puppet.pipeline import Packet, Pipeline, PipelineOptions, PipelineStats
from puppet.retarget import RetargetOptions
from puppet.sources import CameraSource, VideoFileOptions, VideoFileSource, open_source
from puppet.stages import RenderStage, RetargetStage, TrackStage
from puppet.tracking import TrackingOptions

log = logging.getLogger(__name__)

WINDOW = "puppet"


@dataclass(frozen=True)
class WebcamJob:
    """camera: an index ("0"), a device path, or a video file played in real time."""

    camera: str = "0"
    render: RenderOptions = field(default_factory=RenderOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    max_seconds: float | None = None


def open_live_source(spec: str):
    """A camera, or a video file paced at its real frame rate (a stand-in camera for demos/tests)."""
    path = Path(spec)
    if path.is_file():
        return VideoFileSource(path, VideoFileOptions(realtime=True))
    if spec.isdigit() or spec.startswith("/dev/video"):
        return CameraSource(int(spec) if spec.isdigit() else spec)
    return open_source(spec)


class WindowSink:
    """Shows driver | avatar with fps, latency and drops; turns keys into requests."""

    def __init__(self, avatars: list, current: int, retarget: RetargetStage, render: RenderStage,
                 max_seconds: float | None) -> None:
        self._avatars = avatars
        self._current = current
        self._retarget = retarget
        self._render = render
        self._max_seconds = max_seconds
        self._deadline: float | None = None  # max_seconds after the first frame shown (not model loading)
        self._overlay = True
        self._times: collections.deque = collections.deque(maxlen=30)
        self._latencies: collections.deque = collections.deque(maxlen=30)

    def open(self) -> None:
        import cv2

        if os.name != "nt" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise PuppetError("no display to show the preview window on (set DISPLAY, or use "
                              "`puppet convert` for files)")
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        except cv2.error as exc:
            raise PuppetError(f"cannot open a preview window: {exc}") from None

    def write(self, packet: Packet) -> bool:
        import cv2

        now = time.perf_counter()
        self._times.append(now)
        self._latencies.append(1e3 * (now - packet.captured))
        driver = packet.frame.image
        if self._overlay and packet.tracked is not None:
            from puppet.overlay import draw_overlay

            driver = draw_overlay(driver, packet.tracked)
        view = side_by_side(driver, packet.rendered[..., :3])
        fps = (len(self._times) - 1) / (self._times[-1] - self._times[0]) if len(self._times) > 1 else 0.0
        text = (f"{fps:4.1f} fps  latency {np.median(self._latencies):4.0f} ms  "
                f"avatar {self._avatars[self._current].name}  [c]alibrate [n]ext [p]rev [o]verlay [q]uit")
        bgr = np.ascontiguousarray(view[..., ::-1])
        cv2.putText(bgr, text, (10, bgr.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bgr, text, (10, bgr.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(WINDOW, bgr)
        key = cv2.waitKey(1) & 0xFF
        # The clock starts once the first frame is on screen, as the pipeline's streaming time does:
        # the first imshow opens the window and can take a tenth of a second.
        shown = time.perf_counter()
        if self._deadline is None and self._max_seconds is not None:
            self._deadline = shown + self._max_seconds
        if key in (ord("q"), 27):
            return False
        if key == ord("c"):
            self._retarget.request_calibration()
        elif key in (ord("n"), ord("p")):
            self._current = (self._current + (1 if key == ord("n") else -1)) % len(self._avatars)
            self._render.request_avatar(self._avatars[self._current])
        elif key == ord("o"):
            self._overlay = not self._overlay
        return self._deadline is None or shown < self._deadline

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyAllWindows()
        except cv2.error:
            pass


def run_webcam(job: WebcamJob) -> PipelineStats:
    from puppet.avatar import list_avatars, load_avatar

    avatar = load_avatar(job.render.avatar)
    avatars = [load_avatar(name) for name in list_avatars()]
    names = [a.name for a in avatars]
    if avatar.name in names:
        current = names.index(avatar.name)
    else:
        avatars.insert(0, avatar)
        current = 0
    source = open_live_source(job.camera)
    with source:
        retarget = RetargetStage(job.retarget)
        render = RenderStage(job.render.engine, job.render.create_engine_options(), avatar)
        sink = WindowSink(avatars, current, retarget, render, job.max_seconds)
        return Pipeline(source, [TrackStage(job.tracking), retarget, render], sink,
                        PipelineOptions(live=True)).run()
