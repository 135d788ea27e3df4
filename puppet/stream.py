"""``puppet stream``: the live avatar to a virtual camera, an RTMP server, HLS, or a browser (WebRTC).

The same live pipeline as ``puppet webcam`` (source -> tracking -> retargeting -> engine, newest
frame wins between stages, drops counted), ending in a fan-out to one or more sinks
(``puppet.sinks``) instead of a window::

    from puppet.stream import StreamOptions, parse_target, stream

    summary = stream(StreamOptions(camera="clip.mp4", targets=(parse_target("webrtc"),), loop=True))

Each sink keeps the newest frame too (its own worker, its own drop count), so a slow network never
slows the render. The capture timestamp travels with every frame to the sink: capture-to-send
latency per sink, and capture-to-screen latency where a viewer page reports it. Ctrl-C stops the
source; every sink is then closed cleanly (encoders flushed, HLS playlist ended, peers hung up).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import av
import av.error
import cv2
import numpy as np

from puppet.convert import RenderOptions
from puppet.errors import InputError, PuppetError
from puppet.frame import Frame
from puppet.pipeline import Packet, Percentiles, Pipeline, PipelineOptions, PipelineStats
from puppet.retarget import RetargetOptions
from puppet.sinks.base import Sink, SinkStats, StreamFormat
from puppet.sinks.encode import LiveEncoderOptions
from puppet.sinks.http import LocalServer
from puppet.sources import VideoFileOptions, VideoFileSource
from puppet.stages import RenderStage, RetargetStage, TrackStage
from puppet.tracking import TrackingOptions

log = logging.getLogger(__name__)

TargetKind = Literal["virtualcam", "rtmp", "hls", "webrtc"]


@dataclass(frozen=True)
class Target:
    """Where to stream. kind: the sink; value: the RTMP URL, the HLS folder, or the virtual camera
    device (None: the default device)."""

    kind: TargetKind
    value: str | None = None


TARGET_FORMS = "virtualcam[:/dev/videoN] | rtmp://HOST/APP/KEY | hls:DIR | webrtc"


def parse_target(text: str) -> Target:
    """``virtualcam``, ``virtualcam:/dev/video4``, ``rtmp://host/app/key`` (or rtmps://),
    ``hls:DIR``, ``webrtc`` -> ``Target``; a ``PuppetError`` (one line) for anything else."""
    text = text.strip()
    if text == "webrtc":
        return Target("webrtc")
    if text == "virtualcam" or text.startswith("virtualcam:"):
        device = text.partition(":")[2] or None
        return Target("virtualcam", device)
    if text.startswith(("rtmp://", "rtmps://")):
        from puppet.sinks.rtmp import parse_rtmp_url

        try:
            parse_rtmp_url(text)
        except ValueError as exc:
            raise PuppetError(str(exc)) from None
        return Target("rtmp", text)
    if text.startswith("hls:"):
        folder = text[4:]
        if not folder:
            raise PuppetError("hls: needs a folder (hls:DIR)")
        return Target("hls", folder)
    raise PuppetError(f"unknown stream target {text!r}: use {TARGET_FORMS}")


@dataclass(frozen=True)
class StreamOptions:
    """camera: a camera index or /dev/videoN, or a video file played at its real frame rate
    (``loop``: over and over). targets: where the avatar goes (several at once are fine).
    host, port: the local web server for the HLS and WebRTC viewer pages (port 0: a free one).
    encoder: H.264/AAC settings of the RTMP and HLS streams. max_seconds: stop after streaming
    this long (None: until the source ends or Ctrl-C)."""

    camera: str = "0"
    targets: tuple[Target, ...] = (Target("webrtc"),)
    host: str = "127.0.0.1"
    port: int = 8080
    loop: bool = False
    render: RenderOptions = field(default_factory=RenderOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    encoder: LiveEncoderOptions = field(default_factory=LiveEncoderOptions)
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("at least one target")
        kinds = [t.kind for t in self.targets]
        for kind in ("hls", "webrtc", "virtualcam"):
            if kinds.count(kind) > 1:
                raise ValueError(f"{kind} given twice: one {kind} target at a time")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class StreamStatus:
    """A live snapshot: what the status line shows. fps and latency_ms (capture to all sinks
    served) over the last few seconds; dropped: frames the source produced that never reached the
    sinks (a stage was busy); sinks: each sink's own counts."""

    elapsed_s: float
    frames: int
    fps: float
    latency_ms: Percentiles
    dropped: int
    sinks: tuple[SinkStats, ...]
    frame_ms: Percentiles = Percentiles.of([])  # the stages' work per frame (track + retarget + render)

    def describe(self) -> str:
        parts = [f"{_clock(self.elapsed_s)} {self.fps:4.1f} fps", f"latency {self.latency_ms.p50:4.0f} ms",
                 f"dropped {self.dropped}"]
        for s in self.sinks:
            text = f"{s.name}{'' if s.connected else ' OFFLINE'} {s.frames_sent} sent, {s.dropped} dropped"
            if s.viewers is not None:
                text += f", {s.viewers} viewers"
            if s.viewer_latency_ms is not None and not np.isnan(s.viewer_latency_ms.p50):
                text += f", shown {s.viewer_latency_ms.p50:.0f} ms"
            parts.append(text)
        return " | ".join(parts)


@dataclass(frozen=True)
class StreamSummary:
    pipeline: PipelineStats
    sinks: tuple[SinkStats, ...]
    urls: tuple[str, ...]

    @property
    def interrupted(self) -> bool:
        return self.pipeline.interrupted

    def describe(self) -> str:
        return "\n".join([self.pipeline.describe(), *(s.describe() for s in self.sinks)])


class StreamMonitor(Protocol):
    """Told where viewers can watch, then a status snapshot about once per ``every_s``."""

    every_s: float

    def started(self, urls: tuple[str, ...]) -> None: ...

    def status(self, status: StreamStatus) -> None: ...

    def end(self) -> None: ...


class StatusLine:
    """The CLI's monitor: the viewer URLs, then one status line (rewritten in place on a terminal,
    one line every ``every_s`` seconds otherwise)."""

    def __init__(self, out=None, every_s: float | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (1.0 if self.tty else 5.0)
        self._shown = False

    def started(self, urls: tuple[str, ...]) -> None:
        for url in urls:
            print(f"streaming: {url}", file=self.out, flush=True)

    def status(self, status: StreamStatus) -> None:
        line = status.describe()
        if self.tty:  # rewritten in place: never wider than the terminal, or it would wrap
            width = shutil.get_terminal_size().columns - 1
            print(f"\r{line[:width]:<{width}}", end="", file=self.out, flush=True)
            self._shown = True
        else:
            print(line, file=self.out, flush=True)

    def end(self) -> None:
        if self._shown:
            print(file=self.out, flush=True)
            self._shown = False


# ----------------------------------------------------------------------------- sources

class LoopedVideo:
    """A video file played in real time over and over (a recorded presenter standing in for a
    camera). ``t`` keeps increasing: pass k plays at ``k * period`` + the file's own times, where
    ``period`` is the file's duration (last frame time + one frame), found by reading packet
    timestamps (no decoding). Paced against one wall clock across passes, so reopening the file
    at each pass neither skips nor adds time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._first: VideoFileSource | None = self._open()
        self.info = dataclasses.replace(self._first.info, is_live=True, frame_count=None)
        self.period = video_duration(self.path, self.info.fps, self.info.origin)

    @property
    def fps(self) -> float:
        return self.info.fps

    def __iter__(self) -> Iterator[Frame]:
        index, k = 0, 0
        wall0: float | None = None
        source = self._first
        self._first = None
        while source is not None:
            with source:
                for frame in source:
                    t = k * self.period + frame.t
                    now = time.monotonic()
                    if wall0 is None:
                        wall0 = now - t
                    if (delay := wall0 + t - now) > 0:
                        time.sleep(delay)
                    yield Frame(frame.image, t, index)
                    index += 1
            if index == 0:
                return
            k += 1
            source = self._open()

    def _open(self) -> VideoFileSource:
        # Single-threaded decoding: FFmpeg's decoding threads, started anew at every pass, left
        # the process's memory growing pass after pass (measured: scripts/soak_stream.py).
        return VideoFileSource(self.path, VideoFileOptions(threaded_decode=False))

    def close(self) -> None:
        if self._first is not None:
            self._first.close()

    def __enter__(self) -> "LoopedVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def video_duration(path: Path, fps: float, origin: float) -> float:
    """Seconds from the first video frame to the end of the last one (packet timestamps)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            last = max((p.pts for p in container.demux(stream) if p.pts is not None), default=None)
            tb = stream.time_base
    except (av.error.FFmpegError, IndexError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if last is None or tb is None:
        raise InputError(f"{path} has no timed video frames")
    return float(last * tb) - origin + 1.0 / fps


def open_stream_source(spec: str, loop: bool):
    """A camera, a video file at its real frame rate, or (``loop``) a file played over and over."""
    from puppet.webcam import open_live_source

    path = Path(spec)
    if loop:
        if not path.is_file():
            raise InputError(f"--loop needs a video file, not {spec!r}")
        return LoopedVideo(path)
    return open_live_source(spec)


def stream_format(source, render: RenderOptions, loop: bool) -> StreamFormat:
    info = source.info
    audio = info.path if (info.path is not None and info.has_audio) else None
    return StreamFormat(size=(render.size, render.size), fps=info.fps, audio_path=audio,
                        audio_origin=info.origin, loop_period=getattr(source, "period", None) if loop else None)


# ----------------------------------------------------------------------------- sinks

def create_sinks(targets: tuple[Target, ...], server: LocalServer | None,
                 encoder: LiveEncoderOptions = LiveEncoderOptions()) -> list[Sink]:
    """One sink per target (not opened). HLS and WebRTC register their pages on ``server``."""
    sinks: list[Sink] = []
    for target in targets:
        if target.kind == "virtualcam":
            from puppet.sinks.virtualcam import VirtualCamOptions, VirtualCamSink

            sinks.append(VirtualCamSink(VirtualCamOptions(device=target.value)))
        elif target.kind == "rtmp":
            from puppet.sinks.rtmp import RtmpOptions, RtmpSink

            sinks.append(RtmpSink(RtmpOptions(url=target.value, encoder=encoder)))
        elif target.kind == "hls":
            from puppet.sinks.hls import HlsOptions, HlsSink

            sinks.append(HlsSink(HlsOptions(directory=Path(target.value), encoder=encoder), server))
        elif target.kind == "webrtc":
            from puppet.sinks.webrtc import WebRtcSink

            sinks.append(WebRtcSink(server))
        else:  # pragma: no cover - Target's kinds are closed
            raise ValueError(target.kind)
    return sinks


class StreamSinks:
    """The opened sinks (and the local web server when a sink needs one), closed together."""

    def __init__(self, targets: tuple[Target, ...], fmt: StreamFormat, host: str = "127.0.0.1", port: int = 8080,
                 encoder: LiveEncoderOptions = LiveEncoderOptions()) -> None:
        needs_server = any(t.kind in ("hls", "webrtc") for t in targets)
        self.server = LocalServer(host, port) if needs_server else None
        self.sinks = create_sinks(targets, self.server, encoder)
        self.fmt = fmt
        self._opened: list[Sink] = []
        try:
            if self.server is not None:
                self.server.start()
            for sink in self.sinks:
                sink.open(fmt)
                self._opened.append(sink)
        except BaseException:
            self.close()
            raise

    def urls(self) -> tuple[str, ...]:
        urls = []
        for sink in self.sinks:
            url = getattr(sink, "url", None)
            if url:
                urls.append(f"{sink.name} {url}")
            elif sink.name == "rtmp":
                from puppet.sinks.rtmp import redact

                urls.append(f"rtmp {redact(sink.options.url)}")
            elif sink.name == "virtualcam":
                urls.append(f"virtualcam {getattr(sink, 'device', '')}")
        return tuple(urls)

    def send(self, image: np.ndarray, t: float, captured: float) -> None:
        for sink in self._opened:
            sink.send(image, t, captured)

    def stats(self) -> tuple[SinkStats, ...]:
        return tuple(s.stats() for s in self.sinks)

    def close(self) -> None:
        """Close every sink even when one fails; the first failure is raised afterwards."""
        error: BaseException | None = None
        for sink in reversed(self._opened):
            try:
                sink.close()
            except BaseException as exc:  # noqa: BLE001 - the others must still be closed
                error = error or exc
        self._opened = []
        if self.server is not None:
            self.server.close()
        if error is not None:
            raise error

    def __enter__(self) -> "StreamSinks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CycleCollector:
    """Collects reference cycles every ``every_s`` seconds of a live session.

    Why: objects caught in reference cycles reach the oldest GC generation in a live session and
    Python collects it rarely. The soak run that found this (docs/streaming.md) grew by ~1 MB per
    frame: a decoded PyAV frame whose side data was read sits in such a cycle with its picture
    buffers. ``puppet.sources`` now reads the display matrix once per stream, so decoding makes no
    cycles; the collector stays as a guard against cycles from elsewhere (libraries, sinks), at
    ~15 ms every few seconds. ``start`` freezes what exists when streaming begins (models, engines:
    they live until the end), so each collection scans only what streaming made (~15 ms, not
    ~70 ms); ``stop`` unfreezes.
    """

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._next: float | None = None
        self.collections = 0
        self.longest_ms = 0.0

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self._next = time.perf_counter() + self.every_s

    def tick(self, now: float) -> None:
        if self._next is None or now < self._next:
            return
        gc.collect()
        self.collections += 1
        self.longest_ms = max(self.longest_ms, 1e3 * (time.perf_counter() - now))
        self._next = time.perf_counter() + self.every_s

    def stop(self) -> None:
        if self._next is not None:
            gc.unfreeze()
            self._next = None
            log.debug("%d cycle collections, longest %.1f ms", self.collections, self.longest_ms)


class FanOut:
    """The pipeline's sink: hands each rendered frame to every stream sink, measures, reports."""

    def __init__(self, sinks: StreamSinks, monitor: StreamMonitor | None = None,
                 max_seconds: float | None = None) -> None:
        self.collector = CycleCollector()
        self.sinks = sinks
        self.monitor = monitor
        self.max_seconds = max_seconds
        self._size = sinks.fmt.size
        self._start: float | None = None
        self._next_status = 0.0
        self._times: collections.deque[float] = collections.deque(maxlen=90)
        self._latencies: collections.deque[float] = collections.deque(maxlen=90)
        self._work: collections.deque[float] = collections.deque(maxlen=90)
        self.frames = 0
        self.dropped = 0
        self._warned_size = False

    def open(self) -> None:
        pass

    def write(self, packet: Packet) -> bool:
        if self._start is None:
            self.collector.start()
        image = self._fit(packet.rendered)
        self.sinks.send(image, packet.t, packet.captured)
        done = time.perf_counter()
        if self._start is None:
            # max_seconds counts from the first frame sent, as the pipeline's streaming time does:
            # sending the first one can take a while (an encoder or a connection opening).
            self._start = done
            self._next_status = done + (self.monitor.every_s if self.monitor else 0.0)
        self.frames += 1
        self.dropped = packet.frame.index + 1 - self.frames
        self._times.append(done)
        self._latencies.append(1e3 * (done - packet.captured))
        self._work.append(sum(packet.timings_ms.values()))
        if self.monitor is not None and done >= self._next_status:
            self._next_status = done + self.monitor.every_s
            self.monitor.status(self.status())
        self.collector.tick(done)
        return self.max_seconds is None or done - self._start < self.max_seconds

    def status(self) -> StreamStatus:
        times = self._times
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        elapsed = 0.0 if self._start is None else time.perf_counter() - self._start
        return StreamStatus(elapsed_s=elapsed, frames=self.frames, fps=fps,
                            latency_ms=Percentiles.of(list(self._latencies)), dropped=self.dropped,
                            sinks=self.sinks.stats(), frame_ms=Percentiles.of(list(self._work)))

    def close(self) -> None:
        self.collector.stop()
        self.sinks.close()

    def _fit(self, rendered: np.ndarray) -> np.ndarray:
        image = rendered[..., :3]
        h, w = image.shape[:2]
        if (w, h) == tuple(self._size):
            return image
        if not self._warned_size:
            log.warning("the engine renders %dx%d, the stream is %dx%d: resizing", w, h, *self._size)
            self._warned_size = True
        return cv2.resize(np.ascontiguousarray(image), tuple(self._size), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- the command

def stream(options: StreamOptions, monitor: StreamMonitor | None = None) -> StreamSummary:
    """Stream the live avatar to ``options.targets`` until the source ends, ``max_seconds`` pass,
    or Ctrl-C (``summary.interrupted``). User mistakes (no camera, no virtual camera device,
    unreachable RTMP server, unwritable HLS folder, port in use) raise ``PuppetError`` before any
    model is loaded."""
    from puppet.avatar import load_avatar

    avatar = load_avatar(options.render.avatar)
    source = open_stream_source(options.camera, options.loop)
    with source:
        fmt = stream_format(source, options.render, options.loop)
        sinks = StreamSinks(options.targets, fmt, options.host, options.port, options.encoder)
        return run_stream(options, source, sinks, avatar, monitor)


def run_stream(options: StreamOptions, source, sinks: StreamSinks, avatar,
               monitor: StreamMonitor | None = None) -> StreamSummary:
    """The pipeline from an opened source into opened sinks (which it closes). Separate from
    ``stream`` so that measurements (``scripts/soak_stream.py``) can hold the sinks."""
    fanout = FanOut(sinks, monitor, options.max_seconds)
    urls = sinks.urls()
    if monitor is not None:
        monitor.started(urls)
    stages = [TrackStage(options.tracking), RetargetStage(options.retarget),
              RenderStage(options.render.engine, options.render.create_engine_options(), avatar)]
    try:
        stats = Pipeline(source, stages, fanout, PipelineOptions(live=True)).run()  # closes the sinks
    finally:
        sinks.close()  # when the pipeline never started (a no-op otherwise)
        if monitor is not None:
            monitor.end()
    return StreamSummary(pipeline=stats, sinks=sinks.stats(), urls=urls)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
