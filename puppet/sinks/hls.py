"""HLS into a folder: 1 s fragmented-MP4 segments, a rolling playlist, a viewer page, served locally.

Files in the folder: ``stream.m3u8`` (the playlist: the last ``list_size`` segments, older
segments deleted), ``init.mp4`` (the codec header every segment needs), ``segNNNNN.m4s`` (one
per ``segment_seconds``, each starting on a keyframe forced by time), and ``index.html`` (the
viewer page). At ``close`` the encoder is flushed and the playlist gets ``#EXT-X-ENDLIST`` (a
finished stream: players stop at its end instead of waiting for more).

The viewer page needs no network: hls.js would have to be fetched from a CDN (or vendored), so
the page carries a small Media Source Extensions player instead (~80 lines: it polls the
playlist and appends ``init.mp4`` and new segments to a SourceBuffer, keeping about 1.5 segments
behind the live edge). Fragmented-MP4 segments are what MSE accepts in every browser (MPEG-TS
segments would need a remuxer in JavaScript, which is most of hls.js). Where MSE is missing
(Safari on iPhone), the page hands the playlist to the ``<video>`` element, which plays HLS
natively. Any other HLS player (VLC, ffplay, Safari, hls.js pages) can open the playlist URL.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import av
import av.error

from puppet.errors import OutputError, one_line
from puppet.sinks.base import (FrameTimes, LatencyWindow, NewestFrameWorker, Outgoing, SinkStats, StreamFormat,
                               WorkerFedSink,
                               perf_to_epoch)
from puppet.sinks.encode import AudioFeed, LiveEncoder, LiveEncoderOptions
from puppet.sinks.http import LocalServer, Response

log = logging.getLogger(__name__)

PLAYLIST = "stream.m3u8"
INIT = "init.mp4"
SEGMENT_PATTERN = "seg%05d.m4s"
_OUR_FILES = re.compile(r"^(stream\.m3u8|init\.mp4|seg\d+\.m4s|index\.html)(\.tmp)?$")


@dataclass(frozen=True)
class HlsOptions:
    """directory: where the playlist and segments go (created if missing); segment_seconds:
    segment length (= keyframe interval); list_size: segments in the rolling playlist;
    path: where the local server serves the folder; encoder: video/audio settings (its GOP is
    set to the segment length)."""

    directory: Path
    segment_seconds: float = 1.0
    list_size: int = 6
    path: str = "/hls/"
    encoder: LiveEncoderOptions = field(default_factory=LiveEncoderOptions)

    def __post_init__(self) -> None:
        if not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be positive, got {self.segment_seconds}")
        if self.list_size < 2:
            raise ValueError(f"list_size must be at least 2, got {self.list_size}")


def page_html() -> str:
    return (resources.files("puppet.sinks") / "pages" / "hls.html").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Playlist:
    """A parsed media playlist: what a player reads."""

    version: int
    target_duration: float
    media_sequence: int
    init: str | None
    segments: tuple[tuple[str, float], ...]  # (uri, duration)
    ended: bool


def parse_playlist(text: str) -> Playlist:
    """Parse an HLS media playlist (the subset FFmpeg writes); ValueError when it is not one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist (no #EXTM3U first line)")
    version, target, sequence, init, ended = 1, None, 0, None, False
    segments: list[tuple[str, float]] = []
    duration: float | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-VERSION:"):
            version = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            match = re.search(r'URI="([^"]+)"', line)
            if not match:
                raise ValueError(f"#EXT-X-MAP without a URI: {line}")
            init = match.group(1)
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif not line.startswith("#"):
            if duration is None:
                raise ValueError(f"segment {line} has no #EXTINF before it")
            segments.append((line, duration))
            duration = None
    if target is None:
        raise ValueError("no #EXT-X-TARGETDURATION")
    for uri, d in segments:
        if round(d) > target:  # the spec: each EXTINF rounded to an integer <= TARGETDURATION
            raise ValueError(f"segment {uri} lasts {d} s, longer than the target duration {target}")
    return Playlist(version, target, sequence, init, tuple(segments), ended)


class HlsSink(WorkerFedSink):
    """Writes a live HLS stream into ``options.directory`` and serves it (and a viewer page)."""

    name = "hls"

    def __init__(self, options: HlsOptions, server: LocalServer | None = None) -> None:
        self.options = options
        self.server = server
        self.directory = Path(options.directory)
        self._fmt: StreamFormat | None = None
        self._encoder: LiveEncoder | None = None
        self._audio: AudioFeed | None = None
        self._worker: NewestFrameWorker | None = None
        self._latency = LatencyWindow()
        self._viewer_latency = LatencyWindow()
        self.times = FrameTimes(capacity=1200)  # stream ms -> capture epoch
        self.segment_starts = FrameTimes(capacity=120)  # segment number -> capture epoch of its first frame
        self._frames_in = 0
        self._sent = 0
        self._viewer_frames = 0
        self._dropped_busy = 0

    @property
    def playlist(self) -> Path:
        return self.directory / PLAYLIST

    @property
    def url(self) -> str | None:
        return self.server.url(self.options.path) if self.server is not None else None

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        self._prepare_directory()
        if self.options.encoder.audio:
            self._audio = AudioFeed(fmt.audio_path, fmt.audio_origin, fmt.loop_period)
        seconds = self.options.segment_seconds
        hls_options = {
            "hls_time": f"{seconds:g}",
            "hls_list_size": str(self.options.list_size),
            # temp_file: segments and playlist appear under their names only once complete.
            "hls_flags": "delete_segments+independent_segments+temp_file+program_date_time",
            "hls_segment_type": "fmp4",
            "hls_fmp4_init_filename": INIT,
            "hls_segment_filename": str(self.directory / SEGMENT_PATTERN),
        }
        try:
            container = av.open(str(self.playlist), mode="w", format="hls", options=hls_options)
        except (OSError, av.error.FFmpegError) as exc:
            raise OutputError(f"cannot write HLS into {self.directory}: {one_line(exc)}") from None
        encoder_options = self.options.encoder
        if encoder_options.gop_seconds != seconds:
            encoder_options = dataclasses.replace(encoder_options, gop_seconds=seconds)
        try:
            self._encoder = LiveEncoder(container, fmt, encoder_options, self._audio)
            self._encoder.start()
        except (OSError, av.error.FFmpegError) as exc:
            container.close()
            raise OutputError(f"cannot write HLS into {self.directory}: {one_line(exc)}") from None
        if self.server is not None:
            self.server.add_folder(self.options.path, self.directory, title="HLS viewer (any HLS player: stream.m3u8)")
            self.server.add_post(self.options.path + "report", self._on_report)
        self._worker = NewestFrameWorker(self.name, self._deliver, self._finish)
        self._worker.start()

    def close(self) -> None:
        if self._worker is None:
            return
        if not self._worker.close(timeout=30.0):
            log.warning("hls: the writer did not finish in time")
        error, self._dropped_busy, self._worker = self._worker.error, self._worker.dropped, None
        if error is not None:
            raise error

    def stats(self) -> SinkStats:
        return SinkStats(name=self.name, frames_in=self._frames_in, frames_sent=self._sent,
                         dropped=self._worker.dropped if self._worker else self._dropped_busy,
                         latency_ms=self._latency.percentiles(), viewer_frames=self._viewer_frames,
                         viewer_latency_ms=self._viewer_latency.percentiles())

    @property
    def audio_shift(self) -> float:
        """How far the muxer moved every timestamp to fit the AAC priming (seconds)."""
        return self._encoder.audio_shift if self._encoder is not None else 0.0

    # -- worker

    def _prepare_directory(self) -> None:
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the HLS folder {d}: {exc.strerror or exc}") from None
        if not d.is_dir():
            raise OutputError(f"{d} is not a folder")
        stale = [p for p in d.iterdir() if _OUR_FILES.match(p.name)]
        for p in stale:  # a previous run's playlist and segments would confuse players
            p.unlink()
        if stale:
            log.info("hls: removed %d files of a previous stream from %s", len(stale), d)
        try:
            (d / "index.html").write_text(page_html(), encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write into {d}: {exc.strerror or exc}") from None

    def _deliver(self, item: Outgoing) -> None:
        try:
            stream_t = self._encoder.encode(item.image, item.t)
        except (OSError, av.error.FFmpegError) as exc:
            raise OutputError(f"cannot write HLS into {self.directory}: {one_line(exc)}") from None
        self._sent += 1
        captured = perf_to_epoch(item.captured)
        self.times.add(round(stream_t * 1000), captured)
        if self._encoder.forced_key:
            self.segment_starts.add(self._encoder.keyframes - 1, captured)
        self._latency.add(1e3 * (time.perf_counter() - item.captured))

    def _finish(self) -> None:
        try:
            if self._encoder is not None:
                self._encoder.flush()
                self._encoder.container.close()  # writes the last segment and #EXT-X-ENDLIST
                self._encoder = None
        finally:
            if self._audio is not None:
                self._audio.close()

    # -- viewer reports (request threads)

    def _on_report(self, body: bytes) -> Response:
        """{frames: shown so far, samples: [{media: seconds, shown: epoch ms}]} from the page."""
        report = json.loads(body)
        self._viewer_frames = max(self._viewer_frames, int(report.get("frames", 0)))
        # Players that apply the init segment's edit list (Chrome's MSE) report the stream time;
        # others report it moved by the AAC priming. Frames are >= 21 ms apart below 47 fps, so
        # at most one of the two readings names a frame that was sent.
        shift = self.audio_shift
        for sample in report.get("samples", [])[:1000]:
            media = float(sample["media"])
            captured = None
            for ms in (round(media * 1000), round((media - shift) * 1000)):
                captured = next((c for k in (ms, ms - 1, ms + 1) if (c := self.times.get(k)) is not None), None)
                if captured is not None:
                    break
            if captured is not None:
                self._viewer_latency.add(float(sample["shown"]) - 1e3 * captured)
        return Response(b"{}", "application/json")
