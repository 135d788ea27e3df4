"""Write frames to an H.264 video file with PyAV, keeping their timestamps and the input's audio.

    with VideoWriter("out.mp4", size=(512, 512), fps=30, audio_from="in.mp4") as writer:
        for frame in frames:
            writer.write(frame.image, frame.t)

- Time: each output frame's pts is its `t` (seconds) in the writer's time base, so variable frame
  rate and the input's exact timestamps survive; `t` must strictly increase.
- Audio: the first audio stream of `audio_from` is copied packet by packet where the container
  takes its codec (AAC into MP4), else transcoded to AAC; it is interleaved as the video advances,
  and at close it is written up to the last video time plus one frame.
- Robustness: .mp4/.mov/.m4v are written as fragmented MP4 with a short GOP, each fragment handed
  to the OS as soon as it closes, so a process that is interrupted or killed still leaves a
  playable file (everything up to the last closed fragment). The header goes out with the first
  fragment (`delay_moov`), which lets it carry edit lists: exact start times, B-frames, AAC
  priming; a process killed before its first fragment (`gop_seconds`) leaves no playable video.
  .mkv is written cluster by cluster (one cluster per `gop_seconds`) and plays when cut short too.
- Errors: an unusable path is an `OutputError` at construction; a failing write (disk full) is an
  `OutputError` from `write`, after which the file is left as it is.
- Odd sizes: H.264 in yuv420p needs even dimensions, so an odd width or height is padded by one
  pixel on the right or bottom, repeating the edge pixels (no resampling: every input pixel keeps
  its place; the output is then one pixel wider or taller).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import av
import av.error
import numpy as np

from puppet.errors import InputError, OutputError, one_line

if TYPE_CHECKING:
    from puppet.sources import SourceInfo

log = logging.getLogger(__name__)

_MP4_FAMILY = frozenset({".mp4", ".mov", ".m4v"})
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
"""Output file endings the writer accepts, and the FFmpeg muxer for each."""

_COPYABLE_AUDIO: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac"}),
    "mov": frozenset({"aac", "mp3", "ac3", "eac3", "pcm_s16le", "pcm_u8"}),
    "matroska": frozenset({"aac", "mp3", "ac3", "eac3", "opus", "flac", "vorbis", "pcm_s16le",
                           "pcm_u8"}),
}
"""Audio codecs copied without re-encoding, per muxer (each checked to write a file that plays;
FFmpeg's own query accepts more, e.g. FLAC into .mov, which then fails); others become AAC."""

_FRAGMENTED_MP4_FLAGS = "frag_keyframe+empty_moov+delay_moov+default_base_moof"


@dataclass(frozen=True)
class VideoWriterOptions:
    """How to encode.

    preset: libx264 speed/size trade-off ("ultrafast" ... "veryslow").
    crf: constant rate factor, 0 (lossless) ... 51; 18-23 look good.
    gop_seconds: longest time between keyframes; each keyframe closes an MP4 fragment, so this is
        about how much video an interrupted or killed process can lose.
    tune: libx264 tune ("zerolatency" removes the encoder's look-ahead delay), or None.
    bframes: allow B-frames (smaller files; a few frames more encoder delay). Timestamps stay
        exact either way: the MP4 header is written after the first fragment, with edit lists.
    audio_bitrate: bit rate when the audio has to be transcoded to AAC.
    """

    preset: str = "veryfast"
    crf: int = 20
    gop_seconds: float = 1.0
    tune: str | None = None
    bframes: bool = True
    audio_bitrate: int = 128_000

    def __post_init__(self) -> None:
        check_x264_settings(self.crf, self.gop_seconds)


def check_x264_settings(crf: int, gop_seconds: float) -> None:
    """The libx264 settings files and live streams share; ValueError when out of range."""
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    if not gop_seconds > 0:
        raise ValueError(f"gop_seconds must be positive, got {gop_seconds}")


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) rounded up to even numbers, as H.264 in yuv420p needs."""
    w, h = size
    return w + (w % 2), h + (h % 2)


def pad_to_even(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H + H % 2, W + W % 2, 3), repeating the last row / column."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """H.264 (libx264, yuv420p) video file writer; see the module docstring.

    path: .mp4, .mov, .m4v or .mkv. Checked, and the file created, before any work is done:
        a missing or unwritable folder or an unknown ending is an `OutputError`.
    size: (width, height) of the images passed to `write`.
    fps: nominal frame rate (stored as the stream's rate, used for the GOP length and for the
        duration of the last frame); the timestamps themselves come from `write`.
    time_base: the output's time unit; pass the input's time base to keep its timestamps exactly
        (default 1/90000 s).
    audio_from: a media file whose first audio stream is copied into the output (None: no audio).
        A file without audio only logs that the output has none.
    audio_origin: the input's media time (seconds) at which `t` = 0 (`SourceInfo.origin`).
    """

    def __init__(
        self,
        path: str | Path,
        size: tuple[int, int],
        fps: float | Fraction,
        options: VideoWriterOptions = VideoWriterOptions(),
        *,
        time_base: Fraction | None = None,
        audio_from: str | Path | None = None,
        audio_origin: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.options = options
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if not fps or not float(fps) > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.size = (width, height)
        self.fps = float(fps)
        self._rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        self._time_base = Fraction(time_base) if time_base else Fraction(1, 90000)
        self._format = _check_output_path(self.path)
        self._closed = False
        self._broken = False
        self._last_pts: int | None = None
        self._last_t: float | None = None
        self.frames_written = 0
        self._audio: _AudioCopier | None = None

        if audio_from is not None:
            # Opened first: a bad audio input fails before the output file is created.
            self._audio = _AudioCopier.open(Path(audio_from), float(audio_origin))

        container_options = {}
        if self._format in ("mp4", "mov"):
            # A fragment closes at every keyframe (`gop_seconds`): playable when cut short.
            container_options["movflags"] = _FRAGMENTED_MP4_FLAGS
        else:
            # Matroska closes a cluster only when it is large or old (5 s) by default.
            container_options["cluster_time_limit"] = str(max(1, round(options.gop_seconds * 1000)))
        # Hand every muxed packet (so every finished fragment) to the OS at once: a killed
        # process then loses only the fragment in progress, not FFmpeg's I/O buffer.
        container_options["flush_packets"] = "1"
        try:
            self._container = av.open(str(self.path), mode="w", format=self._format,
                                      options=container_options)
        except (av.error.FFmpegError, OSError) as e:
            if self._audio is not None:
                self._audio.close()
            raise OutputError(f"cannot write {self.path}: {one_line(e)}") from None
        try:
            self._stream = self._add_video_stream()
            if self._audio is not None:
                self._audio.add_output_stream(self._container, self._format, options)
        except BaseException:
            self._abort()
            raise
        log.info("writing %s: %dx%d (encoded %dx%d), %.3f fps nominal, time base %s, audio %s",
                 self.path, width, height, *even_size(self.size), self.fps, self._time_base,
                 self._audio.describe() if self._audio else "none")

    @classmethod
    def for_source(
        cls, path: str | Path, info: SourceInfo, options: VideoWriterOptions = VideoWriterOptions(),
        *, size: tuple[int, int] | None = None, copy_audio: bool = True,
    ) -> VideoWriter:
        """A writer that keeps a source's timestamps and audio (file conversion).

        size: the size of the images to write (default: the source's).
        """
        audio = info.path if copy_audio and info.has_audio else None
        return cls(path, size or info.size, info.fps, options, time_base=info.time_base,
                   audio_from=audio, audio_origin=info.origin)

    def _add_video_stream(self) -> av.VideoStream:
        opts = self.options
        codec_options = {"preset": opts.preset, "crf": str(opts.crf)}
        if opts.tune:
            codec_options["tune"] = opts.tune
        stream = self._container.add_stream("libx264", rate=self._rate, options=codec_options)
        stream.width, stream.height = even_size(self.size)
        stream.pix_fmt = "yuv420p"
        stream.time_base = self._time_base
        ctx = stream.codec_context
        ctx.time_base = self._time_base
        ctx.framerate = self._rate
        ctx.gop_size = max(1, round(opts.gop_seconds * self.fps))
        if not opts.bframes:
            ctx.max_b_frames = 0
        return stream

    # ---------------------------------------------------------------------------------------------

    def write(self, image: np.ndarray, t: float) -> None:
        """Encode one RGB uint8 (H, W, 3) image shown from time `t` (seconds, increasing)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        w, h = self.size
        if image.dtype != np.uint8 or image.shape != (h, w, 3):
            raise ValueError(f"expected uint8 ({h}, {w}, 3) RGB, got {image.dtype} {image.shape}")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"t must be a finite time >= 0, got {t}")
        pts = round(Fraction(t) / self._time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(
                f"timestamps must increase: t={t!r} after t={self._last_t!r} "
                f"(same or earlier at time base {self._time_base})"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(image)),
                                           format="rgb24")
        frame.pts = pts
        frame.time_base = self._time_base
        with self._muxing():
            self._mux(self._stream.encode(frame))
            self._last_pts, self._last_t = pts, t
            self.frames_written += 1
            if self._audio is not None:
                self._audio.copy_until(t, self._container)

    def close(self) -> None:
        """Flush the encoder, write the audio up to the end of the last frame, finish the file."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._broken:
                with self._muxing():
                    self._mux(self._stream.encode(None))
                    if self._audio is not None and self._last_t is not None:
                        self._audio.copy_until(self._last_t + 1.0 / self.fps, self._container,
                                               final=True)
        finally:
            if self._audio is not None:
                self._audio.close()
            try:
                self._container.close()
            except av.error.FFmpegError as e:
                if not self._broken:
                    raise OutputError(f"cannot finish {self.path}: {one_line(e)}") from e
        if self.frames_written == 0:
            log.warning("%s: no frames were written", self.path)
        log.info("wrote %s: %d frames", self.path, self.frames_written)

    @contextlib.contextmanager
    def _muxing(self) -> Iterator[None]:
        """FFmpeg failures while encoding or muxing become `OutputError`s; the file is then left
        alone (muxing again after a failed write can crash FFmpeg)."""
        if self._broken:
            raise OutputError(f"cannot write {self.path}: an earlier write failed")
        try:
            yield
        except (av.error.FFmpegError, OSError) as e:
            self._broken = True
            raise OutputError(f"cannot write {self.path}: {one_line(e)}") from e

    def _abort(self) -> None:
        self._closed = True
        if self._audio is not None:
            self._audio.close()
        try:
            self._container.close()
        except av.error.FFmpegError:
            pass

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Interrupted (KeyboardInterrupt) or failed: still finish the file so what was written
        # stays playable, without hiding the original exception.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the original exception matters more
            log.exception("%s: could not finish the file after %s", self.path, exc_type.__name__)

    def __repr__(self) -> str:
        return f"VideoWriter({str(self.path)!r}, size={self.size}, fps={self.fps})"


class _AudioCopier:
    """Moves the audio of an input file into the output, in step with the video."""

    def __init__(self, path: Path, container: av.container.InputContainer,
                 stream: av.AudioStream, origin: float) -> None:
        self.path = path
        self._input = container
        self._in_stream = stream
        self._origin = origin
        self._out_stream: av.AudioStream | None = None
        self._transcode = False
        self._packets: Iterator[av.Packet] = container.demux(stream)
        self._pending: av.Packet | None = None
        self._preroll: av.Packet | None = None
        self._exhausted = False
        self._offset_pts = round(Fraction(origin) / stream.time_base) if stream.time_base else 0
        self._samples_in = 0  # transcoding: samples handed to the encoder
        self._started = False  # transcoding: the first sample at or after the origin was written
        self.packets_copied = 0

    @classmethod
    def open(cls, path: Path, origin: float) -> _AudioCopier | None:
        if not path.exists():
            raise InputError(f"no such file: {path}")
        try:
            container = av.open(str(path), mode="r")
        except av.error.FFmpegError as e:
            raise InputError(f"cannot read audio from {path}: {one_line(e)}") from None
        if not container.streams.audio:
            log.info("%s has no audio stream: the output has no audio", path)
            container.close()
            return None
        return cls(path, container, container.streams.audio[0], origin)

    def describe(self) -> str:
        mode = "transcoded to aac" if self._transcode else "copied"
        return f"{self._in_stream.codec_context.name} from {self.path} ({mode})"

    def add_output_stream(self, output: av.container.OutputContainer, fmt: str,
                          options: VideoWriterOptions) -> None:
        codec = self._in_stream.codec_context.codec.canonical_name
        if codec in _COPYABLE_AUDIO[fmt]:
            self._out_stream = output.add_stream_from_template(self._in_stream)
        else:
            self._transcode = True
            ctx = self._in_stream.codec_context
            out = output.add_stream("aac", rate=ctx.sample_rate)
            # AAC wants a named layout; inputs may carry an unordered "N channels" one.
            out.layout = "mono" if ctx.layout.nb_channels == 1 else "stereo"
            # FFmpeg's AAC encoder takes at most 6144 bits per channel per 1024-sample frame.
            channels = 1 if out.layout.name == "mono" else 2
            out.bit_rate = min(options.audio_bitrate, 6 * ctx.sample_rate * channels)
            self._out_stream = out
            self._in_stream.thread_type = "AUTO"

    def copy_until(self, t: float, output: av.container.OutputContainer,
                   final: bool = False) -> None:
        """Write every input audio packet that starts before `t` (seconds after the origin)."""
        assert self._out_stream is not None
        tb = self._in_stream.time_base
        while True:
            packet = self._next_packet()
            if packet is None:
                break
            start = float((packet.pts - self._offset_pts) * tb)
            if start >= t:
                self._pending = packet
                break
            if start < 0 and not self._transcode:
                # Before the video's first frame: only the last such packet is kept, to prime
                # the decoder (AAC's priming packet); the MP4 edit list hides what lies before 0.
                self._preroll = packet
                continue
            if self._preroll is not None:
                self._write(self._preroll, output)
                self._preroll = None
            self._write(packet, output)
        if final and self._transcode:
            self._mux_encoded(self._out_stream.encode(None), output)

    def _next_packet(self) -> av.Packet | None:
        if self._pending is not None:
            packet, self._pending = self._pending, None
            return packet
        while not self._exhausted:
            try:
                packet = next(self._packets)
            except StopIteration:
                self._exhausted = True
                return None
            except av.error.FFmpegError as e:
                log.warning("%s: audio reading stopped (%s)", self.path, one_line(e))
                self._exhausted = True
                return None
            if packet.pts is None or packet.size == 0:  # flush marker or no timing
                continue
            return packet
        return None

    def _write(self, packet: av.Packet, output: av.container.OutputContainer) -> None:
        assert self._out_stream is not None
        if not self._transcode:
            packet.pts -= self._offset_pts
            packet.dts = packet.pts if packet.dts is None else packet.dts - self._offset_pts
            packet.stream = self._out_stream
            output.mux(packet)
            self.packets_copied += 1
            return
        try:
            frames = self._in_stream.decode(packet)
        except av.error.FFmpegError as e:
            log.warning("%s: skipped an audio packet that does not decode (%s)",
                        self.path, one_line(e))
            return
        for frame in frames:
            trimmed = self._trim_before_origin(frame)
            if trimmed is None:
                continue
            # Sample-counted pts from the first sample kept (t = 0): the encoder then marks its
            # priming samples with a negative pts, and `_mux_encoded` leaves them out.
            trimmed.pts = self._samples_in
            trimmed.time_base = Fraction(1, trimmed.sample_rate)
            self._samples_in += trimmed.samples
            self._mux_encoded(self._out_stream.encode(trimmed), output)
        self.packets_copied += 1

    def _mux_encoded(self, packets: list[av.Packet], output: av.container.OutputContainer) -> None:
        for packet in packets:
            # The AAC encoder's priming packet has a negative pts; fragmented MP4 has no edit list
            # to hide it, so it would delay the whole track: it is left out, as for copied audio.
            output.mux(packet)

    def _trim_before_origin(self, frame: av.AudioFrame) -> av.AudioFrame | None:
        """Drop the samples of a decoded frame that lie before the origin (None: all of them)."""
        if self._started or frame.pts is None or frame.time_base is None:
            self._started = True
            return frame
        start = float(frame.pts * frame.time_base) - self._origin
        cut = round(-start * frame.sample_rate)
        if cut <= 0:  # the audio starts after t = 0: the encoder's sample count starts later
            self._started = True
            self._samples_in = -cut
            return frame
        if cut >= frame.samples:
            return None
        self._started = True
        samples = frame.to_ndarray()
        channels = frame.layout.nb_channels
        kept = samples[:, cut:] if frame.format.is_planar else samples[:, cut * channels:]
        out = av.AudioFrame.from_ndarray(np.ascontiguousarray(kept), format=frame.format.name,
                                         layout=frame.layout.name)
        out.sample_rate = frame.sample_rate
        return out

    def close(self) -> None:
        self._input.close()


def _check_output_path(path: Path) -> str:
    """The muxer name for `path`, or `OutputError` if it cannot be written."""
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS:
        known = ", ".join(sorted(CONTAINERS))
        raise OutputError(
            f"cannot write {path}: unknown video file ending {suffix!r} (use {known})"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is not a folder")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable")
    return CONTAINERS[suffix]
