"""A virtual camera (pyvirtualcam): other programs (video calls, OBS, a browser) see the avatar as
a webcam. Linux: a v4l2loopback device; Windows and macOS: OBS Studio's virtual camera.

Handing a frame to the device is a copy (well under a millisecond), so it happens on the
pipeline's thread; the device shows the newest frame it was given.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from puppet.errors import OutputError
from puppet.sinks.base import LatencyWindow, SinkStats, StreamFormat, check_image

log = logging.getLogger(__name__)

LINUX_HINT = ("load v4l2loopback: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=puppet "
              "(Debian/Ubuntu: sudo apt install v4l2loopback-dkms first)")
OTHER_HINT = "install OBS Studio (28 or newer) and start its Virtual Camera once"


@dataclass(frozen=True)
class VirtualCamOptions:
    """device: /dev/videoN on Linux (None: the first v4l2loopback device); backend: pyvirtualcam's
    backend name (None: the platform's default)."""

    device: str | None = None
    backend: str | None = None


def no_device_message(reason: str, platform: str = sys.platform) -> str:
    """The one-line error when no virtual camera can be opened, with how to get one."""
    hint = LINUX_HINT if platform.startswith("linux") else OTHER_HINT
    reason = " ".join(reason.split())
    return f"no virtual camera ({reason}): {hint}"


class VirtualCamSink:
    """Sends RGB frames to a virtual camera at the stream's nominal rate."""

    name = "virtualcam"

    def __init__(self, options: VirtualCamOptions = VirtualCamOptions()) -> None:
        self.options = options
        self._camera = None
        self._size: tuple[int, int] = (0, 0)
        self._latency = LatencyWindow()
        self._frames_in = 0
        self._sent = 0
        self.device: str | None = None

    def open(self, fmt: StreamFormat) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise OutputError(f"the virtual camera needs pyvirtualcam (pip install pyvirtualcam): {exc}") from None
        self._size = fmt.size
        try:
            self._camera = pyvirtualcam.Camera(width=fmt.size[0], height=fmt.size[1], fps=fmt.fps,
                                               fmt=pyvirtualcam.PixelFormat.RGB, device=self.options.device,
                                               backend=self.options.backend, print_fps=False)
        except (RuntimeError, ValueError, OSError) as exc:
            raise OutputError(no_device_message(_first_sentence(str(exc)))) from None
        self.device = self._camera.device
        log.info("virtual camera %s (%s), %dx%d", self.device, self._camera.backend, *fmt.size)

    def send(self, image: np.ndarray, t: float, captured: float) -> None:
        assert self._camera is not None, "open() first"
        self._frames_in += 1
        self._camera.send(check_image(image, self._size))
        self._sent += 1
        self._latency.add(1e3 * (time.perf_counter() - captured))

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None

    def stats(self) -> SinkStats:
        return SinkStats(name=self.name, frames_in=self._frames_in, frames_sent=self._sent,
                         latency_ms=self._latency.percentiles())


def _first_sentence(text: str) -> str:
    """pyvirtualcam's messages run on ("... Did you run 'modprobe v4l2loopback'? See also ...")."""
    text = " ".join(text.split())
    for stop in (". ", "? "):
        if stop in text:
            text = text.split(stop, 1)[0]
    return text.rstrip(".")
