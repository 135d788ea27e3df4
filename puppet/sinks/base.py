"""What every streaming sink shares: the ``Sink`` protocol, its stats, and the newest-frame worker.

A sink receives rendered frames (RGB uint8, (H, W, 3)) with their capture time ``t`` (media
time, seconds, strictly increasing) and the ``time.perf_counter()`` moment the source produced
them (``captured``), so capture-to-send latency is measured where the frame leaves the process.

Live rule: a sink never makes the pipeline wait. Sinks that do slow work (encoding, network)
hand frames to their own worker thread through a one-slot mailbox: a newer frame replaces an
unsent one, and the replaced frame is counted as dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from puppet.pipeline import Percentiles

log = logging.getLogger(__name__)

LATENCY_WINDOW = 300
"""Recent frames the latency percentiles in ``SinkStats`` are taken over (about 10 s at 30 fps)."""


@dataclass(frozen=True)
class StreamFormat:
    """What the sinks are opened for.

    size: (width, height) of the frames passed to ``send``.
    fps: nominal frame rate (encoder rate control, virtual camera rate); timestamps are the truth.
    audio_path: a media file whose first audio stream is sent along (None: silence, where the
        sink carries audio at all).
    audio_origin: media time (seconds) of ``audio_path`` that ``t`` = 0 corresponds to.
    loop_period: the source repeats ``audio_path`` every this many seconds of ``t`` (None: once).
    """

    size: tuple[int, int]
    fps: float
    audio_path: Path | None = None
    audio_origin: float = 0.0
    loop_period: float | None = None

    def __post_init__(self) -> None:
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of one sink.

    frames_in: frames handed to ``send``; frames_sent: frames that left the process (encoded
    and written, or handed to the device); dropped: frames replaced before they were sent
    (the sink was busy) or thrown away while disconnected (``dropped_offline`` of them).
    latency_ms: capture to sent, over the last ``LATENCY_WINDOW`` frames.
    connected: the sink currently reaches its destination; reconnects: successful reconnections.
    viewers: connected viewers (WebRTC peers); viewer_frames: frames the viewers' pages reported
    as shown; viewer_latency_ms: capture to shown on a viewer's page (same machine clock only).
    """

    name: str
    frames_in: int = 0
    frames_sent: int = 0
    dropped: int = 0
    dropped_offline: int = 0
    latency_ms: Percentiles = Percentiles.of([])
    connected: bool = True
    reconnects: int = 0
    viewers: int | None = None
    viewer_frames: int | None = None
    viewer_latency_ms: Percentiles | None = None

    def describe(self) -> str:
        text = f"{self.name}: {self.frames_sent} sent, dropped {self.dropped}"
        if self.frames_sent:
            text += f", latency p50 {self.latency_ms.p50:.0f} ms"
        if not self.connected:
            text += ", DISCONNECTED"
        if self.reconnects:
            text += f", {self.reconnects} reconnects"
        if self.viewers is not None:
            text += f", {self.viewers} viewer{'s' if self.viewers != 1 else ''}"
        if self.viewer_latency_ms is not None and not np.isnan(self.viewer_latency_ms.p50):
            text += f" (shown p50 {self.viewer_latency_ms.p50:.0f} ms after capture)"
        return text


@runtime_checkable
class Sink(Protocol):
    """A destination for rendered frames. ``open`` fails early with a ``PuppetError`` on a user
    mistake (no device, unreachable server, unwritable folder); ``send`` never blocks for long;
    ``close`` finishes what was started (flushes encoders, finalises playlists, hangs up)."""

    name: str

    def open(self, fmt: StreamFormat) -> None: ...

    def send(self, image: np.ndarray, t: float, captured: float) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> SinkStats: ...


def check_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the opened size, C-contiguous (RGBA: the alpha is dropped)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"a sink takes uint8 (H, W, 3|4) images, got {image.dtype} {image.shape}")
    if (image.shape[1], image.shape[0]) != tuple(size):
        raise ValueError(f"a sink opened for {size[0]}x{size[1]} got a {image.shape[1]}x{image.shape[0]} image")
    return np.ascontiguousarray(image[..., :3])


def perf_to_epoch(perf: float) -> float:
    """A ``time.perf_counter()`` moment as seconds since the epoch (to compare with a viewer's
    clock on the same machine)."""
    return time.time() - (time.perf_counter() - perf)


class FrameTimes:
    """Recent sent frames: stream timestamp (integer ticks) -> capture moment (epoch seconds).

    A viewer reports the stream timestamp of a frame it received; this turns it back into the
    capture time, to measure capture-to-viewer latency. Bounded: only the last ``capacity``.
    """

    def __init__(self, capacity: int = 600) -> None:
        self._order: collections.deque[int] = collections.deque()
        self._times: dict[int, float] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, ticks: int, captured_epoch: float) -> None:
        with self._lock:
            if ticks not in self._times:
                self._order.append(ticks)
            self._times[ticks] = captured_epoch
            while len(self._order) > self._capacity:
                self._times.pop(self._order.popleft(), None)

    def get(self, ticks: int) -> float | None:
        with self._lock:
            return self._times.get(ticks)


class LatencyWindow:
    """The last ``LATENCY_WINDOW`` latencies (ms), thread-safe."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self) -> Percentiles:
        with self._lock:
            return Percentiles.of(list(self._values))


@dataclass(frozen=True)
class Outgoing:
    """One frame on its way to a sink's worker."""

    image: np.ndarray
    t: float
    captured: float


class WorkerFedSink:
    """``send`` for sinks whose encoding runs on a ``NewestFrameWorker`` (HLS, RTMP): count the
    frame, re-raise the worker's failure, hand the frame over without waiting. Subclasses set
    ``_fmt`` and ``_worker`` in ``open`` and ``_frames_in = 0`` in ``__init__``."""

    _fmt: StreamFormat | None
    _worker: "NewestFrameWorker | None"
    _frames_in: int

    def send(self, image: np.ndarray, t: float, captured: float) -> None:
        assert self._worker is not None and self._fmt is not None, "open() first"
        if self._worker.error is not None:
            raise self._worker.error
        self._frames_in += 1
        self._worker.put(Outgoing(check_image(image, self._fmt.size), t, captured))


class NewestFrameWorker:
    """A sink's worker thread fed through a one-slot mailbox (newest frame wins, drops counted).

    ``deliver`` runs on the worker for each frame taken; ``finish`` runs on the worker once the
    mailbox is closed (after the last frame), so encoders are flushed on the thread that used them.
    """

    def __init__(self, name: str, deliver, finish) -> None:
        self._deliver = deliver
        self._finish = finish
        self._cond = threading.Condition()
        self._item: Outgoing | None = None
        self._closing = False
        self.dropped = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Outgoing) -> None:
        with self._cond:
            if self._closing:
                return
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def close(self, timeout: float) -> bool:
        """Let the worker send what is waiting, finish, and end. False if it did not end in time
        (stuck in a blocking write): it is then left behind (a daemon thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if not self._thread.is_alive() and self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._item is None and not self._closing:
                        self._cond.wait()
                    item, self._item = self._item, None
                if item is None:  # closing, nothing left
                    break
                self._deliver(item)
        except BaseException as exc:  # re-raised by the sink on the pipeline's thread
            self.error = exc
            log.debug("sink worker failed", exc_info=True)
        finally:
            try:
                self._finish()
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
                log.debug("sink worker could not finish", exc_info=True)
