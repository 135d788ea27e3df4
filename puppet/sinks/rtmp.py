"""RTMP push (FLV over RTMP) through PyAV: H.264 (low latency) + AAC, reconnecting with backoff.

Why a helper process: FFmpeg opens an RTMP connection (TCP connect, handshake, publish) while
holding Python's GIL, and PyAV offers no timeout for output connections, so a server that
accepts the connection but never answers would freeze every thread of the process (the
pipeline, the other sinks, Ctrl-C). The connection and the encoder therefore live in a small
child process (``python -m puppet.sinks.rtmp``, fed raw frames through a pipe, one frame in
flight); this sink's worker thread waits for each frame's acknowledgement with a timeout and
kills the child when it stalls.

- The first connection is made by ``open``: an unreachable server or a refused publish is a
  one-line ``OutputError`` before anything else starts.
- When the server goes away (a write fails, or the child stops answering), the sink hangs up and
  tries again after 0.5 s, 1 s, 2 s ... (at most ``backoff_max_s``); meanwhile frames are thrown
  away and counted (``dropped_offline``) and the rest of the stream keeps running. Each
  connection is a new FLV stream whose timestamps start at its first frame, with the audio
  picked up at that frame's time.
- The stream key (the URL's last part) never appears in messages, logs, or the child's command
  line (the configuration goes through the pipe).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from puppet.errors import OutputError, one_line
from puppet.sinks.base import (FrameTimes, LatencyWindow, NewestFrameWorker, Outgoing, SinkStats, StreamFormat,
                               WorkerFedSink,
                               perf_to_epoch)
from puppet.sinks.encode import LiveEncoderOptions

log = logging.getLogger(__name__)

DEFAULT_PORT = {"rtmp": 1935, "rtmps": 443}
_HEADER = struct.Struct("<I")  # length of the JSON header that precedes each message on the pipe


@dataclass(frozen=True)
class RtmpOptions:
    """url: rtmp://HOST[:PORT]/APP/KEY; encoder: video/audio settings; connect_timeout_s: longest
    wait for a connection and publish; stall_timeout_s: longest wait for one frame to be sent;
    backoff_s, backoff_max_s: first and longest wait between reconnection attempts (doubling)."""

    url: str
    encoder: LiveEncoderOptions = field(default_factory=LiveEncoderOptions)
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 5.0
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        parse_rtmp_url(self.url)
        if not 0 < self.backoff_s <= self.backoff_max_s:
            raise ValueError(f"need 0 < backoff_s <= backoff_max_s, got {self.backoff_s}, {self.backoff_max_s}")
        if not (self.connect_timeout_s > 0 and self.stall_timeout_s > 0):
            raise ValueError("timeouts must be positive")


def parse_rtmp_url(url: str) -> tuple[str, int]:
    """(host, port) of an rtmp:// or rtmps:// URL; ValueError when it is not one."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORT or not parts.hostname:
        raise ValueError(f"not an RTMP URL (rtmp://HOST[:PORT]/APP/KEY): {redact(url)!r}")
    if not [p for p in parts.path.split("/") if p]:
        raise ValueError(f"an RTMP URL needs an application (and usually a key): {redact(url)!r}")
    try:
        port = parts.port or DEFAULT_PORT[parts.scheme]
    except ValueError:
        raise ValueError(f"bad port in {redact(url)!r}") from None
    return parts.hostname, port


def redact(url: str) -> str:
    """The URL without its stream key (the last of two or more path parts), for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    segments = parts.path.split("/")
    if len([s for s in segments if s]) >= 2:
        segments[-1] = "****"
    netloc = parts.hostname or ""
    try:
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        pass
    return urllib.parse.urlunsplit((parts.scheme, netloc, "/".join(segments), "", ""))


def backoff_delays(first: float, longest: float):
    """first, 2*first, 4*first, ... capped at longest (an endless generator)."""
    delay = first
    while True:
        yield delay
        delay = min(2 * delay, longest)


class _Disconnected(Exception):
    """The publisher lost its connection, failed, or stopped answering."""


class _Publisher:
    """The parent's handle on one child process (= one RTMP connection)."""

    def __init__(self, options: RtmpOptions, fmt: StreamFormat) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "puppet.sinks.rtmp"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=None)
        self._replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), name="rtmp-replies",
                                        daemon=True)
        self._reader.start()
        self.audio_shift = 0.0
        config = {"url": options.url, "encoder": dataclasses.asdict(options.encoder),
                  "size": list(fmt.size), "fps": fmt.fps,
                  "audio_path": None if fmt.audio_path is None else str(fmt.audio_path),
                  "audio_origin": fmt.audio_origin, "loop_period": fmt.loop_period}
        try:
            self._write(config)
            self._reply(options.connect_timeout_s, "connecting")
        except BaseException:
            self.kill()
            raise

    def send(self, image: np.ndarray, t: float, timeout: float) -> float:
        """Encode and publish one frame; returns its stream time. Raises ``_Disconnected``."""
        self._write({"t": t, "w": image.shape[1], "h": image.shape[0]}, image.tobytes())
        reply = self._reply(timeout, "sending")
        self.audio_shift = reply.get("shift", self.audio_shift)
        return float(reply["stream_t"])

    def finish(self, timeout: float) -> None:
        """Ask the child to flush and hang up, then wait for it (killed when it does not end)."""
        try:
            self._write(None)
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("rtmp: the publisher did not finish in %.0f s: stopped", timeout)
            self.kill()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _write(self, header: dict | None, payload: bytes = b"") -> None:
        data = b"" if header is None else json.dumps(header).encode()
        try:
            self._proc.stdin.write(_HEADER.pack(len(data)) + data + payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise _Disconnected(self._last_words() or f"the publisher is gone ({exc})") from None

    def _reply(self, timeout: float, doing: str) -> dict:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise _Disconnected(f"no answer after {timeout:.0f} s while {doing}") from None
        if reply is None:
            raise _Disconnected(self._last_words() or "the publisher ended")
        if "error" in reply:
            raise _Disconnected(reply["error"])
        return reply

    def _last_words(self) -> str | None:
        while True:
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                return None
            if reply is not None and "error" in reply:
                return reply["error"]

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                log.debug("rtmp publisher said %r", line)
        self._replies.put(None)


class RtmpSink(WorkerFedSink):
    """Publishes to an RTMP server (YouTube, Twitch, nginx-rtmp, OBS, an FFmpeg listener)."""

    name = "rtmp"

    def __init__(self, options: RtmpOptions) -> None:
        self.options = options
        parse_rtmp_url(options.url)
        self._fmt: StreamFormat | None = None
        self._publisher: _Publisher | None = None
        self._worker: NewestFrameWorker | None = None
        self._latency = LatencyWindow()
        self.times = FrameTimes()  # stream ms since this connection's first frame -> capture epoch
        self.connection = 0  # 1 for the first connection, +1 per reconnection
        self._frames_in = 0
        self._sent = 0
        self._offline = 0
        self._reconnects = 0
        self._retry_at = 0.0
        self._delays = backoff_delays(options.backoff_s, options.backoff_max_s)
        self.audio_shift = 0.0
        self._dropped_busy = 0
        self._hung_up = False  # closed while connected (a clean end, not a lost connection)

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        try:
            self._connect()
        except _Disconnected as exc:
            raise OutputError(f"cannot publish to {redact(self.options.url)}: {exc}") from None
        self._worker = NewestFrameWorker(self.name, self._deliver, self._finish)
        self._worker.start()

    def close(self) -> None:
        if self._worker is None:
            return
        if not self._worker.close(timeout=self.options.stall_timeout_s + 15.0):
            log.warning("rtmp: the sender did not stop in time")
        self._dropped_busy, self._worker = self._worker.dropped, None

    def stats(self) -> SinkStats:
        dropped = (self._worker.dropped if self._worker else self._dropped_busy) + self._offline
        return SinkStats(name=self.name, frames_in=self._frames_in, frames_sent=self._sent, dropped=dropped,
                         dropped_offline=self._offline, latency_ms=self._latency.percentiles(),
                         connected=self._publisher is not None or self._hung_up, reconnects=self._reconnects)

    # -- worker

    def _connect(self) -> None:
        self._publisher = _Publisher(self.options, self._fmt)
        self.times = FrameTimes()  # a new stream: its timestamps start again at 0
        self.connection += 1
        self._delays = backoff_delays(self.options.backoff_s, self.options.backoff_max_s)
        log.info("rtmp: publishing to %s", redact(self.options.url))

    def _deliver(self, item: Outgoing) -> None:
        if self._publisher is None:
            if time.monotonic() < self._retry_at or not self._reconnect():
                self._offline += 1
                return
        try:
            stream_t = self._publisher.send(item.image, item.t, self.options.stall_timeout_s)
        except _Disconnected as exc:
            log.warning("rtmp: connection to %s lost (%s); reconnecting", redact(self.options.url), exc)
            self._publisher.kill()
            self._publisher = None
            self._retry_at = time.monotonic() + next(self._delays)
            self._offline += 1
            return
        self.audio_shift = self._publisher.audio_shift
        self._sent += 1
        self.times.add(round(stream_t * 1000), perf_to_epoch(item.captured))
        self._latency.add(1e3 * (time.perf_counter() - item.captured))

    def _reconnect(self) -> bool:
        try:
            self._connect()  # resets the delays once connected
        except _Disconnected as exc:
            delay = next(self._delays)
            log.info("rtmp: reconnection failed (%s); next try in %.1f s", exc, delay)
            self._retry_at = time.monotonic() + delay
            return False
        self._reconnects += 1
        log.warning("rtmp: reconnected to %s", redact(self.options.url))
        return True

    def _finish(self) -> None:
        if self._publisher is not None:
            self._publisher.finish(timeout=self.options.stall_timeout_s + 5.0)
            self._publisher, self._hung_up = None, True


# ----------------------------------------------------------------------------- the child process

def _read_message(stdin: IO[bytes]) -> tuple[dict | None, bytes]:
    head = stdin.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None, b""
    (length,) = _HEADER.unpack(head)
    if length == 0:
        return None, b""
    header = json.loads(stdin.read(length))
    payload = b""
    if "w" in header:
        size = header["w"] * header["h"] * 3
        payload = stdin.read(size)
        if len(payload) < size:
            return None, b""
    return header, payload


def _publish(stdin: IO[bytes], stdout: IO[str]) -> int:
    """The child: connect, then encode each frame from stdin and acknowledge it on stdout."""
    import av
    import av.error

    from puppet.sinks.encode import AudioFeed, LiveEncoder

    def reply(**message: Any) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    config, _ = _read_message(stdin)
    if config is None:
        return 1
    fmt = StreamFormat(size=tuple(config["size"]), fps=config["fps"],
                       audio_path=None if config["audio_path"] is None else Path(config["audio_path"]),
                       audio_origin=config["audio_origin"], loop_period=config["loop_period"])
    options = LiveEncoderOptions(**config["encoder"])
    audio = AudioFeed(fmt.audio_path, fmt.audio_origin, fmt.loop_period) if options.audio else None
    try:
        container = av.open(config["url"], mode="w", format="flv")
        encoder = LiveEncoder(container, fmt, options, audio)
        encoder.start()  # connects and publishes
    except (OSError, av.error.FFmpegError) as exc:
        reply(error=one_line(exc))
        return 2
    reply(connected=True)
    code = 0
    try:
        while True:
            header, payload = _read_message(stdin)
            if header is None:
                encoder.flush()
                break
            image = np.frombuffer(payload, np.uint8).reshape(header["h"], header["w"], 3)
            stream_t = encoder.encode(image, header["t"])
            reply(stream_t=stream_t, shift=encoder.audio_shift)
    except (OSError, av.error.FFmpegError) as exc:
        reply(error=one_line(exc))
        code = 2
    finally:
        try:
            container.close()
        except (OSError, av.error.FFmpegError):
            pass
        if audio is not None:
            audio.close()
    return code


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides when this child stops
    # (it closes the pipe, and the child flushes and hangs up).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s puppet.sinks.rtmp: %(message)s")
    sys.exit(_publish(sys.stdin.buffer, sys.stdout))
