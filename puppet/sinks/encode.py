"""Low-latency H.264 + AAC encoding into a PyAV output container (shared by RTMP and HLS).

- Video: libx264, ``tune=zerolatency`` (no look-ahead, no B-frames, sliced threads), a capped
  CRF (quality where the picture is easy, never above ``max_bitrate``), keyframes forced by
  *time* on a grid of ``gop_seconds`` (a live stream drops frames, so a GOP counted in frames
  would stretch; HLS segments and RTMP join time depend on this).
- Time: pts = (t - t of the first frame) in the codec's time base; ``t`` is the capture time,
  so pacing and gaps (dropped frames) are kept, never invented.
- Audio: AAC, 48 kHz stereo, in step with the video: with each frame the audio up to its ``t``
  (plus ``AUDIO_LEAD_S``) is encoded; from the source file (``AudioFeed``) or silence.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from puppet.sinks.base import StreamFormat
from puppet.video_writer import check_x264_settings, even_size, pad_to_even

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_LEAD_S = 0.1
"""Audio is encoded this far ahead of each video frame: the muxer interleaves packets by time and
holds a video packet until audio up to its time is out of the AAC encoder (which lags ~2048
samples), so without a lead every video frame would wait for the next one. The audio comes from
a file or is silence, so it is available ahead; its timestamps stay exact."""


@dataclass(frozen=True)
class LiveEncoderOptions:
    """preset: libx264 speed ("ultrafast", "superfast", "veryfast"); crf: quality target;
    max_bitrate: cap in bits/s (VBV, buffer of one second); gop_seconds: keyframe interval;
    audio: carry an AAC track (the source's audio, else silence); audio_bitrate: bits/s."""

    preset: str = "veryfast"
    crf: int = 23
    max_bitrate: int = 2_500_000
    gop_seconds: float = 1.0
    audio: bool = True
    audio_bitrate: int = 128_000

    def __post_init__(self) -> None:
        check_x264_settings(self.crf, self.gop_seconds)
        if self.max_bitrate < 100_000:
            raise ValueError(f"max_bitrate must be at least 100000 bits/s, got {self.max_bitrate}")


# ----------------------------------------------------------------------------- audio

class AudioFeed:
    """PCM in step with the video clock: 48 kHz stereo float32, planar (2, n).

    Sample ``n`` belongs to stream time ``n / 48000`` (``t`` = 0 at the source's start). From
    ``path`` (its first audio stream, ``origin`` = the media time of ``t`` = 0), repeated every
    ``loop_period`` seconds when the source loops; silence where there is no audio. Reads only
    move forward.
    """

    def __init__(self, path: Path | None = None, origin: float = 0.0,
                 loop_period: float | None = None) -> None:
        self.path = path
        self._origin = origin
        self._period = None if loop_period is None else round(loop_period * AUDIO_RATE)
        if self._period is not None and self._period <= 0:
            raise ValueError(f"loop_period must be positive, got {loop_period}")
        self.cursor = 0  # next sample to hand out
        self._pass = -1
        self._container: av.container.InputContainer | None = None
        self._chunks = None
        self._buf = np.zeros((2, 0), np.float32)
        self._buf_start = 0  # file sample index (relative to the origin) of _buf[:, 0]

    @property
    def has_file(self) -> bool:
        return self.path is not None

    def read_until(self, t: float) -> np.ndarray:
        """The samples from the cursor up to stream time ``t`` (2, n) float32; may be empty."""
        end = max(self.cursor, round(t * AUDIO_RATE))
        out = self._samples(self.cursor, end)
        self.cursor = end
        return out

    def skip_until(self, t: float) -> None:
        """Move the cursor to ``t`` without handing the samples out (a reconnection, a start)."""
        end = max(self.cursor, round(t * AUDIO_RATE))
        if self.path is not None:  # decode through, so the next read is in place
            step = AUDIO_RATE * 10
            for a in range(self.cursor, end, step):
                self._samples(a, min(end, a + step))
        self.cursor = end

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    # -- internals

    def _samples(self, start: int, end: int) -> np.ndarray:
        out = np.zeros((2, end - start), np.float32)
        if self.path is None:
            return out
        pos = start
        while pos < end:
            if self._period is None:
                k, local, span = 0, pos, end - pos
            else:
                k, local = divmod(pos, self._period)
                span = min(end - pos, self._period - local)
            if k != self._pass:
                self._restart(k)
            out[:, pos - start:pos - start + span] = self._file_samples(local, local + span)
            pos += span
        return out

    def _restart(self, k: int) -> None:
        self.close()
        self._pass = k
        self._buf = np.zeros((2, 0), np.float32)
        self._buf_start = 0
        try:
            self._container = av.open(str(self.path))
            stream = self._container.streams.audio[0]
        except (av.error.FFmpegError, IndexError) as exc:
            log.warning("%s: no audio to send (%s): sending silence", self.path, exc)
            self.path = None
            return
        self._chunks = self._decode(self._container, stream)

    def _decode(self, container, stream):
        """(start sample relative to the origin, (2, n) float32) chunks, contiguous."""
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        position: int | None = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    log.debug("%s: skipped an audio packet (%s)", self.path, exc)
                    continue
                for frame in frames:
                    if position is None:
                        start = float(frame.pts * frame.time_base) if frame.pts is not None else self._origin
                        position = round((start - self._origin) * AUDIO_RATE)
                    for out in resampler.resample(frame):
                        pcm = out.to_ndarray().astype(np.float32, copy=False)
                        yield position, pcm
                        position += pcm.shape[1]
            for out in resampler.resample(None):
                pcm = out.to_ndarray().astype(np.float32, copy=False)
                yield position or 0, pcm
                position = (position or 0) + pcm.shape[1]
        except av.error.FFmpegError as exc:
            log.warning("%s: audio reading stopped (%s)", self.path, exc)

    def _file_samples(self, a: int, b: int) -> np.ndarray:
        """File samples [a, b) relative to the origin, zeros where the file has none."""
        out = np.zeros((2, b - a), np.float32)
        while self._chunks is not None and self._buf_start + self._buf.shape[1] < b:
            try:
                start, pcm = next(self._chunks)
            except StopIteration:
                self._chunks = None
                break
            if self._buf.shape[1] == 0:
                self._buf, self._buf_start = pcm, start
            else:
                self._buf = np.concatenate([self._buf, pcm], axis=1)
        lo, hi = max(a, self._buf_start), min(b, self._buf_start + self._buf.shape[1])
        if hi > lo:
            out[:, lo - a:hi - a] = self._buf[:, lo - self._buf_start:hi - self._buf_start]
        keep = max(0, b - self._buf_start)  # nothing before b is asked for again
        self._buf = self._buf[:, keep:]
        self._buf_start += keep
        return out


# ----------------------------------------------------------------------------- encoder

class LiveEncoder:
    """Adds an H.264 (and an AAC) stream to ``container`` and encodes frames into it.

    container: an output container with no streams yet (FLV to an RTMP URL, HLS into a folder).
    audio: the feed to take sound from (None: no audio track). ``start()`` writes the header
    (for RTMP this connects and publishes, so a wrong URL fails here).
    """

    def __init__(self, container: av.container.OutputContainer, fmt: StreamFormat,
                 options: LiveEncoderOptions, audio: AudioFeed | None) -> None:
        self.container = container
        self.options = options
        self.fps = fmt.fps
        width, height = even_size(fmt.size)
        gop_frames = max(1, math.ceil(options.gop_seconds * fmt.fps))
        rate = Fraction(fmt.fps).limit_denominator(1001)
        buffer = options.max_bitrate  # one second of VBV: rate stays near the cap within a second
        video = container.add_stream("libx264", rate=rate, options={
            "preset": options.preset, "tune": "zerolatency", "crf": str(options.crf),
            "maxrate": str(options.max_bitrate), "bufsize": str(buffer),
            "x264-params": "scenecut=0",  # keyframes only where forced: one per segment, on the grid
        })
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = VIDEO_TIME_BASE
        video.codec_context.gop_size = 4 * gop_frames  # an upper bound: keyframes are forced by time
        video.codec_context.max_b_frames = 0
        self.video = video
        self.audio_stream = None
        self.audio = audio
        if audio is not None:
            stream = container.add_stream("aac", rate=AUDIO_RATE)
            stream.layout = "stereo"
            stream.bit_rate = options.audio_bitrate
            self.audio_stream = stream
        self._t0: float | None = None
        self._next_key = 0.0  # stream time of the next forced keyframe (a grid of gop_seconds)
        self.keyframes = 0  # forced so far: HLS segment n starts with keyframe n
        self._samples_out = 0
        self.frames = 0
        self.forced_key = False  # the last frame encoded was a forced keyframe
        self.bytes = 0
        self.audio_shift = 0.0  # the muxer delays everything by the AAC encoder's priming

    def start(self) -> None:
        self.container.start_encoding()

    def encode(self, image: np.ndarray, t: float) -> float:
        """Encode and mux one RGB frame captured at ``t``; returns its stream time (seconds since
        the first frame of this encoder). Raises FFmpeg/OS errors from the muxer (a lost server)."""
        if self._t0 is None:
            self._t0 = t
            if self.audio is not None:
                self.audio.skip_until(t)
        stream_t = t - self._t0
        frame = av.VideoFrame.from_ndarray(pad_to_even(image), format="rgb24")
        frame.pts = round(stream_t / VIDEO_TIME_BASE)
        frame.time_base = VIDEO_TIME_BASE
        self.forced_key = stream_t >= self._next_key - 0.25 / self.fps
        if self.forced_key:
            # On a fixed grid (not "gop after the last one"): the HLS muxer cuts a segment at the
            # first keyframe past each multiple of its segment length, so every keyframe cuts one.
            frame.pict_type = av.video.frame.PictureType.I
            self.keyframes += 1
            gop = self.options.gop_seconds
            self._next_key = (math.floor(stream_t / gop + 0.25 / (self.fps * gop)) + 1) * gop
        self._mux(self.video.encode(frame))
        if self.audio is not None:
            self._encode_audio(self.audio.read_until(t + AUDIO_LEAD_S))
        self.frames += 1
        return stream_t

    def flush(self) -> None:
        """Drain the encoders into the container (the caller then closes it)."""
        self._mux(self.video.encode(None))
        if self.audio_stream is not None:
            self._mux(self.audio_stream.encode(None))

    def _encode_audio(self, pcm: np.ndarray) -> None:
        if pcm.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples_out
        frame.time_base = Fraction(1, AUDIO_RATE)
        self._samples_out += pcm.shape[1]
        packets = self.audio_stream.encode(frame)
        for p in packets:
            if p.pts is not None and p.pts < 0 and p.time_base is not None:
                self.audio_shift = max(self.audio_shift, -float(p.pts * p.time_base))
        self._mux(packets)

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)
