"""The pipeline's stages: tracking, retargeting and rendering, each owning its resources on its
own thread (see ``puppet.pipeline``). Requests from other threads (recalibrate, switch avatar) are
queued and applied by the stage between frames."""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, field
from typing import Any

from puppet.pipeline import Packet
from puppet.retarget import RetargetOptions, Retargeter
from puppet.tracking import Tracker, TrackingOptions

log = logging.getLogger(__name__)


@dataclass
class TrackStage:
    """Frame -> TrackedFrame (MediaPipe graphs live on this stage's thread)."""

    options: TrackingOptions = field(default_factory=TrackingOptions)
    name: str = "track"

    def open(self) -> None:
        self._tracker = Tracker(self.options)

    def process(self, packet: Packet) -> Packet:
        return packet.with_(tracked=self._tracker.process(packet.frame))

    def close(self) -> None:
        self._tracker.close()


@dataclass
class RetargetStage:
    """DriverParams -> AvatarParams; ``request_calibration()`` may be called from any thread."""

    options: RetargetOptions = field(default_factory=RetargetOptions)
    name: str = "retarget"

    def __post_init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def request_calibration(self) -> None:
        self._requests.put("calibrate")

    def open(self) -> None:
        self._retargeter = Retargeter(self.options)

    def process(self, packet: Packet) -> Packet:
        while not self._requests.empty():
            self._requests.get()
            self._retargeter.calibrate()
        return packet.with_(avatar=self._retargeter.process(packet.tracked.params))

    def close(self) -> None:
        pass


@dataclass
class RenderStage:
    """AvatarParams -> avatar image. The engine (an OpenGL context for the mesh engine) is created
    on this stage's thread; ``request_avatar()`` switches avatars between frames (re-bakes)."""

    engine_name: str
    engine_options: dict[str, Any]
    avatar: Any  # puppet.avatar.Avatar
    name: str = "render"

    def __post_init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def request_avatar(self, avatar: Any) -> None:
        self._requests.put(avatar)

    def open(self) -> None:
        import engines

        self._engine = engines.create(self.engine_name, **self.engine_options)
        self._baked = self._engine.bake(self.avatar)

    def process(self, packet: Packet) -> Packet:
        while not self._requests.empty():
            self.avatar = self._requests.get()
            self._baked = self._engine.bake(self.avatar)
            log.info("avatar switched to %s", getattr(self.avatar, "name", self.avatar))
        rendered = self._engine.render(self._baked, packet.avatar)
        return packet.with_(rendered=rendered.image)

    def close(self) -> None:
        self._engine.close()
