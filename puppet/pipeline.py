"""Stages on threads, one direction: source -> stage -> ... -> sink.

Two modes:

- file (lossless): bounded blocking queues; every input frame reaches the sink, in order.
- live: one-slot mailboxes; a stage always takes the newest item and a newer one replaces an
  unread one (counted as a drop), so latency stays bounded when a stage is slower than the camera.

A ``Packet`` carries the frame's capture timestamp ``t`` (media time) and the wall-clock moment
it left the source, so the sink can measure capture-to-sink latency. Each stage opens its resources
on its own thread (OpenGL contexts and MediaPipe graphs belong to the thread that uses them); the
source starts reading only once every stage is open, so a live source does not drop its first
seconds (or a whole clip played in real time) while models load. The sink runs on the calling
thread (GUI toolkits want the main thread).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from puppet.frame import Frame
from puppet.interrupt import stop_on_interrupt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packet:
    """What travels down the pipeline for one frame. Stages return a copy with their field set."""

    frame: Frame
    captured: float  # time.perf_counter() when the source produced the frame
    tracked: Any = None  # puppet.tracking.TrackedFrame
    avatar: Any = None  # puppet.params.AvatarParams
    rendered: np.ndarray | None = None  # the avatar image (RGBA or RGB)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def t(self) -> float:
        return self.frame.t

    def with_(self, **changes: Any) -> "Packet":
        return dataclasses.replace(self, **changes)


class Stage(Protocol):
    """One step. ``open``/``close`` run on the stage's own thread, around its ``process`` calls."""

    name: str

    def open(self) -> None: ...

    def process(self, packet: Packet) -> Packet: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """The end of the pipeline, on the calling thread. ``write`` returns False to stop the run."""

    def open(self) -> None: ...

    def write(self, packet: Packet) -> bool: ...

    def close(self) -> None: ...


@dataclass
class FunctionStage:
    """A stage from a plain function (no resources of its own)."""

    name: str
    fn: Callable[[Packet], Packet]

    def open(self) -> None:
        pass

    def process(self, packet: Packet) -> Packet:
        return self.fn(packet)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- mailboxes

_END = object()


class _Lossless:
    """Bounded FIFO: the producer waits when it is full."""

    def __init__(self, depth: int, stop: threading.Event) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop
        self.dropped = 0

    def put(self, item: Any) -> None:
        while True:
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                if self._stop.is_set():  # the reader gives up too (get returns the end marker)
                    return

    def get(self) -> Any:
        while True:
            try:
                return self._q.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return _END


class _Latest:
    """One slot: a new item replaces an unread one (a drop). The end marker is never dropped."""

    def __init__(self, stop: threading.Event) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._stop = stop
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._full and self._item is _END:
                return
            if item is _END:
                # The end of the stream waits for the last frame to be read rather than replacing it.
                while self._full and not self._stop.is_set():
                    self._cond.wait(timeout=0.05)
            elif self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            while not self._full:
                if self._stop.is_set():
                    return _END
                self._cond.wait(timeout=0.05)
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item


# ----------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    mean: float

    @classmethod
    def of(cls, values: list[float]) -> "Percentiles":
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        v = np.asarray(values, dtype=np.float64)
        return cls(float(np.percentile(v, 50)), float(np.percentile(v, 95)), float(v.mean()))


@dataclass(frozen=True)
class PipelineStats:
    """frames_in: produced by the source; frames_out: written by the sink; dropped: per mailbox
    (live mode: replaced before a stage read them); stage_ms: per stage; latency_ms: capture to
    sink-done; seconds: the run's wall time (model loading included); streaming_s: from the first
    frame written to the last, which ``fps`` is measured over."""

    frames_in: int
    frames_out: int
    dropped: dict[str, int]
    stage_ms: dict[str, Percentiles]
    latency_ms: Percentiles
    seconds: float
    interrupted: bool
    streaming_s: float = 0.0

    @property
    def fps(self) -> float:
        return (self.frames_out - 1) / self.streaming_s if self.frames_out > 1 and self.streaming_s > 0 else 0.0

    def describe(self) -> str:
        stages = ", ".join(f"{k} {v.p50:.1f}" for k, v in self.stage_ms.items())
        drops = sum(self.dropped.values())
        return (f"{self.frames_out} frames in {self.streaming_s:.1f} s ({self.fps:.1f} fps); "
                f"latency p50 {self.latency_ms.p50:.0f} ms, p95 {self.latency_ms.p95:.0f} ms; "
                f"dropped {drops}; start-up {self.seconds - self.streaming_s:.1f} s; stage ms p50: {stages}")


# ----------------------------------------------------------------------------- the pipeline

# How long ``Pipeline.run`` waits for a stage thread that is busy processing once stopped.
JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PipelineOptions:
    live: bool = False
    queue_depth: int = 4  # file mode: frames buffered between stages


class Pipeline:
    """Runs ``source`` through ``stages`` into ``sink``. ``run()`` blocks until the source ends,
    the sink asks to stop, ``stop()`` is called, or Ctrl-C (then it stops cleanly and reports)."""

    def __init__(self, source: Iterable[Frame], stages: list[Stage], sink: Sink,
                 options: PipelineOptions = PipelineOptions()) -> None:
        self.source = source
        self.stages = stages
        self.sink = sink
        self.options = options
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._timings: dict[str, list[float]] = {s.name: [] for s in stages}
        self._frames_in = 0
        self._lock = threading.Lock()
        self._opened = [threading.Event() for _ in stages]  # set once a stage's open() returned

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> PipelineStats:
        n = len(self.stages) + 1
        boxes = [(_Latest(self._stop) if self.options.live else _Lossless(self.options.queue_depth, self._stop))
                 for _ in range(n)]
        names = ["source"] + [s.name for s in self.stages]
        threads = [threading.Thread(target=self._produce, args=(boxes[0],), name="source", daemon=True)]
        for i, stage in enumerate(self.stages):
            threads.append(threading.Thread(target=self._work,
                                            args=(stage, boxes[i], boxes[i + 1], self._opened[i]),
                                            name=f"stage-{stage.name}", daemon=True))
        latencies: list[float] = []
        written: list[float] = []  # perf_counter of the first and the last write
        interrupted = False
        start = time.perf_counter()
        self.sink.open()
        try:
            with stop_on_interrupt(self._stop) as stop:
                for t in threads:
                    t.start()
                self._drain(boxes[-1], latencies, written)
            interrupted = stop.interrupted
        except KeyboardInterrupt:  # a second Ctrl-C, or SIGINT owned by someone else
            interrupted = True
            log.warning("interrupted: stopping the pipeline")
        finally:
            self._stop.set()
            self._join(threads)
            self.sink.close()
        if self._errors:
            raise self._errors[0]
        seconds = time.perf_counter() - start
        return PipelineStats(
            frames_in=self._frames_in,
            frames_out=len(latencies),
            dropped={name: box.dropped for name, box in zip(names, boxes) if self.options.live},
            stage_ms={name: Percentiles.of(v) for name, v in self._timings.items()},
            latency_ms=Percentiles.of(latencies),
            seconds=seconds,
            interrupted=interrupted,
            streaming_s=written[-1] - written[0] if written else 0.0,
        )

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the threads; give up after ``JOIN_TIMEOUT_S`` on a stage stuck in ``process``,
        but wait out one still in ``open`` (loading a model or building an engine), which cannot be
        interrupted: leaving the interpreter while a daemon thread is inside native loading code
        aborts the process (exit 134 instead of the error's own message and exit code)."""
        for t in threads:
            t.join(timeout=JOIN_TIMEOUT_S)
        for stage, t, opened in zip(self.stages, threads[1:], self._opened):
            if t.is_alive() and not opened.is_set():
                log.info("waiting for stage %s to finish opening before stopping", stage.name)
                t.join()

    def _drain(self, inbox, latencies: list[float], written: list[float]) -> None:
        """The sink's loop. After a stop request, packets already waiting for the sink are still
        written; the sink is then closed by ``run`` (a video file stays playable)."""
        while True:
            packet = inbox.get()
            if packet is _END:
                return
            keep_going = self.sink.write(packet)
            now = time.perf_counter()
            latencies.append(1e3 * (now - packet.captured))
            if written:
                written[1] = now
            else:
                written.extend([now, now])
            if not keep_going:
                self._stop.set()
                return

    # -- threads

    def _produce(self, out) -> None:
        try:
            for opened in self._opened:  # frames read before the stages are open would be dropped
                while not opened.wait(timeout=0.05):
                    if self._stop.is_set():
                        return
            for frame in self.source:
                if self._stop.is_set():
                    break
                out.put(Packet(frame=frame, captured=time.perf_counter()))
                with self._lock:
                    self._frames_in += 1
        except BaseException as exc:  # handed to run(), which re-raises it
            self._fail(exc)
        finally:
            out.put(_END)

    def _work(self, stage: Stage, inbox, out, opened: threading.Event) -> None:
        try:
            stage.open()
        except BaseException as exc:
            self._fail(exc)
            out.put(_END)
            return
        finally:
            opened.set()
        try:
            while True:
                packet = inbox.get()
                if packet is _END:
                    break
                t0 = time.perf_counter()
                result = stage.process(packet)
                ms = 1e3 * (time.perf_counter() - t0)
                self._timings[stage.name].append(ms)
                out.put(result.with_(timings_ms={**result.timings_ms, stage.name: ms}))
        except BaseException as exc:
            self._fail(exc)
        finally:
            try:
                stage.close()
            finally:
                out.put(_END)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self._stop.set()
