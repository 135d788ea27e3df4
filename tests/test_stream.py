"""Streaming sinks on loopback: what an RTMP server, an HLS player and a virtual camera receive.

Frames are synthetic (frame i is a flat grey of level ``level(i)``, so order and loss show in the
decoded pixels) and are sent as fast as each sink takes them (one in flight), so no frame is
dropped by the newest-frame rule and every count is exact. The RTMP server is FFmpeg's listen
mode in its own process (``python -m puppet.sinks.listen``).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from puppet.errors import OutputError, PuppetError
from puppet.sinks.base import FrameTimes, StreamFormat, check_image
from puppet.sinks.encode import AUDIO_RATE, AudioFeed
from puppet.sinks.hls import HlsOptions, HlsSink, parse_playlist
from puppet.sinks.http import LocalServer
from puppet.sinks.rtmp import RtmpOptions, RtmpSink, backoff_delays, parse_rtmp_url, redact
from puppet.sinks.virtualcam import VirtualCamSink, no_device_message
from puppet.stream import Target, parse_target

SIZE = (96, 64)
FPS = 30.0


@pytest.fixture(scope="module")
def sound_video(media_dir: Path) -> Path:
    """A clip whose audio track is not silent (several of the test clips carry silent tracks)."""
    path = media_dir / "video" / "lp_d10.mp4"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def level(i: int) -> int:
    return 20 + (i * 7) % 200


def frame(i: int) -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), level(i), np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def send_all(sink, count: int, start: int = 0, timeout: float = 10.0) -> None:
    """Send frames start..start+count-1 one at a time, each once the previous one left."""
    for i in range(start, start + count):
        before = sink.stats().frames_sent
        sink.send(frame(i), i / FPS, time.perf_counter())
        wait_until(lambda: sink.stats().frames_sent > before, timeout, f"frame {i} to be sent")


# ------------------------------------------------------------------------------------- targets

def test_targets_parse_and_refuse_with_one_line() -> None:
    assert parse_target("webrtc") == Target("webrtc")
    assert parse_target("virtualcam") == Target("virtualcam", None)
    assert parse_target("virtualcam:/dev/video7") == Target("virtualcam", "/dev/video7")
    assert parse_target("hls:out/live") == Target("hls", "out/live")
    assert parse_target("rtmp://example.com/live/abc") == Target("rtmp", "rtmp://example.com/live/abc")
    for bad in ("rtmp://", "hls:", "udp://x", "webrtcc", "rtmp://host"):
        with pytest.raises(PuppetError):
            parse_target(bad)


def test_rtmp_urls_keys_and_backoff() -> None:
    assert parse_rtmp_url("rtmp://a.example/live/key") == ("a.example", 1935)
    assert parse_rtmp_url("rtmp://127.0.0.1:5000/app") == ("127.0.0.1", 5000)
    assert parse_rtmp_url("rtmps://b.example/app/k") == ("b.example", 443)
    assert redact("rtmp://a.example:1936/live/s3cr3t") == "rtmp://a.example:1936/live/****"
    assert "s3cr3t" not in redact("rtmp://user:pw@a.example/live/s3cr3t")
    with pytest.raises(ValueError) as info:
        parse_rtmp_url("http://a.example/live/s3cr3t")
    assert "s3cr3t" not in str(info.value)
    delays = backoff_delays(0.5, 4.0)
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_frame_times_are_bounded() -> None:
    times = FrameTimes(capacity=3)
    for k in range(5):
        times.add(k, 100.0 + k)
    assert times.get(0) is None and times.get(1) is None
    assert times.get(4) == 104.0


def test_images_are_checked_at_the_sink() -> None:
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    assert check_image(rgba, SIZE).shape == (SIZE[1], SIZE[0], 3)
    with pytest.raises(ValueError):
        check_image(np.zeros((10, 10, 3), np.uint8), SIZE)
    with pytest.raises(ValueError):
        check_image(np.zeros((SIZE[1], SIZE[0], 3), np.float32), SIZE)


# ------------------------------------------------------------------------------------- audio

def decode_audio(path: Path, seconds: float) -> np.ndarray:
    """The first ``seconds`` of a file's audio, 48 kHz stereo float32 (2, n), from its start."""
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    chunks = []
    with av.open(str(path)) as c:
        for f in c.decode(audio=0):
            chunks += [o.to_ndarray() for o in resampler.resample(f)]
    return np.concatenate(chunks, axis=1)[:, :round(seconds * AUDIO_RATE)]


def test_audio_feed_follows_the_video_clock(sound_video: Path) -> None:
    silent = AudioFeed(None)
    assert silent.read_until(0.5).shape == (2, AUDIO_RATE // 2)
    assert not silent.read_until(0.5).any() and silent.read_until(0.4).shape == (2, 0)  # never backwards

    reference = decode_audio(sound_video, 2.0)
    assert np.abs(reference).max() > 0.1  # the clip has sound to compare
    feed = AudioFeed(sound_video, origin=0.0)
    feed.skip_until(0.5)
    got = np.concatenate([feed.read_until(t) for t in (0.7, 1.0, 1.5)], axis=1)
    np.testing.assert_allclose(got, reference[:, AUDIO_RATE // 2:AUDIO_RATE * 3 // 2], atol=1e-6)
    feed.close()

    looped = AudioFeed(sound_video, origin=0.0, loop_period=1.0)  # a 1-second "clip" repeated
    first, second = looped.read_until(1.0), looped.read_until(2.0)
    np.testing.assert_allclose(first, reference[:, :AUDIO_RATE], atol=1e-6)
    np.testing.assert_allclose(second, first, atol=1e-6)
    looped.close()


# ------------------------------------------------------------------------------------- HLS

def read_segment(folder: Path, playlist, uri: str) -> list[av.VideoFrame]:
    data = (folder / playlist.init).read_bytes() + (folder / uri).read_bytes()
    with av.open(io.BytesIO(data)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        return list(c.decode(video=0))


def test_hls_playlist_is_valid_and_its_segments_decode(tmp_path: Path, sound_video: Path) -> None:
    folder = tmp_path / "live"
    server = LocalServer("127.0.0.1", 0)
    server.start()
    sink = HlsSink(HlsOptions(folder, segment_seconds=1.0, list_size=3), server)
    try:
        sink.open(StreamFormat(SIZE, FPS, audio_path=sound_video))
        count = 125  # 4 s 5 frames: 5 segments, the oldest leaves the 3-segment window
        send_all(sink, count)
        live = parse_playlist((folder / "stream.m3u8").read_text())
        assert not live.ended and live.target_duration == 1 and len(live.segments) == 3
        # Served over HTTP with the right types, a viewer page, nothing outside the folder.
        with urllib.request.urlopen(server.url("/hls/stream.m3u8")) as r:
            assert r.headers["Content-Type"] == "application/vnd.apple.mpegurl"
        with urllib.request.urlopen(server.url("/hls/")) as r:
            assert b"MediaSource" in r.read()
        with urllib.request.urlopen(server.url("/")) as r:
            assert b"/hls/" in r.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url("/hls/..%2Fsecret"))
    finally:
        sink.close()
        server.close()
    final = parse_playlist((folder / "stream.m3u8").read_text())
    assert final.ended and final.version >= 6 and final.init == "init.mp4"
    assert len(final.segments) == 3 and final.media_sequence == 2  # rolling: 5 segments, the last 3 kept
    on_disk = sorted(p.name for p in folder.glob("*.m4s"))
    # Old segments are deleted, keeping one past the window for players that read the playlist late.
    assert on_disk == ["seg00001.m4s", *(uri for uri, _ in final.segments)]
    decoded = []
    for uri, duration in final.segments:
        frames = read_segment(folder, final, uri)
        assert frames[0].key_frame  # every segment starts on a keyframe (forced by time)
        assert abs(len(frames) / FPS - duration) < 1.5 / FPS
        decoded += frames
    expected = list(range(count - len(decoded), count))
    assert len(decoded) == 65 == len(expected)  # 2 full segments + the last 5 frames
    means = np.array([f.to_ndarray(format="rgb24").mean() for f in decoded])
    np.testing.assert_allclose(means, [level(i) for i in expected], atol=3)
    times = np.array([float(f.pts * f.time_base) for f in decoded])
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-3)  # the capture clock, not invented
    stats = sink.stats()
    assert stats.frames_sent == count and stats.dropped == 0 and stats.latency_ms.p50 > 0


def test_hls_refuses_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="HLS folder"):
        HlsSink(HlsOptions(blocker / "live")).open(StreamFormat(SIZE, FPS))


def test_playlists_that_are_not_valid() -> None:
    with pytest.raises(ValueError):
        parse_playlist("#EXT-X-VERSION:7\n")
    with pytest.raises(ValueError):
        parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:1\nseg.m4s\n")  # no EXTINF
    with pytest.raises(ValueError):
        parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:2.5,\nseg.m4s\n")  # too long


# ------------------------------------------------------------------------------------- RTMP

class Listener:
    """``python -m puppet.sinks.listen``: one FFmpeg RTMP server for one publisher."""

    def __init__(self, url: str, frames: int | None = None) -> None:
        command = [sys.executable, "-m", "puppet.sinks.listen", url, "--wait", "30"]
        if frames is not None:
            command += ["--frames", str(frames)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "listening" in self.proc.stdout.readline()
        time.sleep(0.2)  # from printing to listening (``open_rtmp`` retries if that was not enough)

    def result(self, timeout: float = 20.0) -> tuple[list[dict], dict]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines and "end" in lines[-1], err
        return lines[:-1], lines[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def open_rtmp(sink: RtmpSink, fmt: StreamFormat, timeout: float = 10.0) -> None:
    """``sink.open`` once the listener accepts connections (it cannot be probed: it takes one
    client, and a probe would be that client)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sink.open(fmt)
            return
        except OutputError as exc:
            if "refused" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture()
def rtmp_url() -> str:
    return f"rtmp://127.0.0.1:{free_port()}/live/s3cr3t"


def test_rtmp_listener_receives_the_frames_sent(rtmp_url: str, sound_video: Path) -> None:
    listener = Listener(rtmp_url)
    sink = RtmpSink(RtmpOptions(rtmp_url))
    try:
        open_rtmp(sink, StreamFormat(SIZE, FPS, audio_path=sound_video))
        count = 45
        send_all(sink, count)
        sink.close()
        frames, end = listener.result()
    finally:
        sink.close()
        listener.kill()
    assert end["end"] == "closed" and end["audio_packets"] > 0
    assert end["audio_rms"] > 0.01  # the clip's sound, not silence
    assert len(frames) == count
    assert {(f["w"], f["h"]) for f in frames} == {SIZE}
    np.testing.assert_allclose([f["mean"] for f in frames], [level(i) for i in range(count)], atol=3)
    pts = np.array([f["pts_ms"] for f in frames])
    shift = pts[0]  # the muxer moves every timestamp by the AAC priming
    assert abs(shift / 1000 - sink.audio_shift) <= 0.001
    np.testing.assert_allclose(pts - shift, np.round(np.arange(count) / FPS * 1000), atol=1)
    stats = sink.stats()
    assert stats.frames_sent == count and stats.dropped == 0 and stats.connected and stats.reconnects == 0


def test_rtmp_reconnects_when_the_server_comes_back(rtmp_url: str) -> None:
    first = Listener(rtmp_url, frames=10)  # receives 10 frames, then goes away
    sink = RtmpSink(RtmpOptions(rtmp_url, backoff_s=0.2, backoff_max_s=0.4))
    second = None
    try:
        open_rtmp(sink, StreamFormat(SIZE, FPS))
        i = 0
        deadline = time.monotonic() + 20
        while sink.stats().dropped_offline < 5:  # the stream keeps running while disconnected
            assert time.monotonic() < deadline, sink.stats()
            sink.send(frame(i), i / FPS, time.perf_counter())
            i += 1
            time.sleep(1 / FPS)
        received_first, _ = first.result()
        assert len(received_first) == 10
        assert not sink.stats().connected
        second = Listener(rtmp_url)
        while sink.stats().reconnects < 1:
            assert time.monotonic() < deadline, sink.stats()
            sink.send(frame(i), i / FPS, time.perf_counter())
            i += 1
            time.sleep(1 / FPS)
        # Every frame handed over is accounted for: sent, replaced by a newer one, or thrown away offline.
        wait_until(lambda: (s := sink.stats()).frames_sent + s.dropped == s.frames_in, 10, "the sink to settle")
        sent_before = sink.stats().frames_sent
        send_all(sink, 15, start=i)
        sink.close()
        received_second, end = second.result()
    finally:
        sink.close()
        for listener in (first, second):
            if listener is not None:
                listener.kill()
    stats = sink.stats()
    assert stats.reconnects == 1 and stats.dropped_offline >= 5
    assert len(received_second) >= 15 and received_second[-1]["mean"] == pytest.approx(level(i + 14), abs=3)
    assert stats.frames_sent == sent_before + 15
    assert received_second[0]["pts_ms"] <= 100  # a new stream: its timestamps start again at 0
    assert end["audio_packets"] > 0 and end["audio_rms"] == 0.0  # no audio source: silence, not nothing


def test_rtmp_unreachable_server_is_one_clear_error(rtmp_url: str) -> None:
    with pytest.raises(OutputError) as info:
        RtmpSink(RtmpOptions(rtmp_url, connect_timeout_s=5)).open(StreamFormat(SIZE, FPS))
    message = str(info.value)
    assert "cannot publish to rtmp://127.0.0.1" in message and "s3cr3t" not in message
    assert "\n" not in message


def test_rtmp_silent_server_does_not_freeze_the_process() -> None:
    """A server that accepts TCP but never speaks RTMP: FFmpeg would hold the GIL while waiting;
    the connection lives in a child process, so this process keeps running and gives up in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"rtmp://127.0.0.1:{silent.getsockname()[1]}/live/key"
        ticks: list[float] = []
        stop = threading.Event()

        def tick() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                time.sleep(0.02)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        started = time.monotonic()
        with pytest.raises(OutputError, match="no answer"):
            RtmpSink(RtmpOptions(url, connect_timeout_s=2.0)).open(StreamFormat(SIZE, FPS))
        elapsed = time.monotonic() - started
        stop.set()
        ticker.join()
    assert 1.9 < elapsed < 8
    assert max(np.diff(ticks)) < 1.0  # other threads kept running while it waited (frozen: >= 2 s)


# ------------------------------------------------------------------------------------- virtual camera

def test_virtual_camera_without_a_device_says_how_to_get_one() -> None:
    if any(Path("/sys/devices/virtual/video4linux").glob("video*")):
        pytest.skip("a v4l2loopback device exists on this machine")
    with pytest.raises(OutputError) as info:
        VirtualCamSink().open(StreamFormat(SIZE, FPS))
    message = str(info.value)
    assert "modprobe v4l2loopback devices=1 exclusive_caps=1" in message and "\n" not in message
    assert "OBS" in no_device_message("no backend", platform="win32")


def test_virtual_camera_gets_rgb_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvirtualcam

    received: list[np.ndarray] = []

    class FakeCamera:
        def __init__(self, width, height, fps, *, fmt, device, backend, print_fps):
            assert (width, height, fmt) == (*SIZE, pyvirtualcam.PixelFormat.RGB)
            self.device, self.backend = "/dev/video9", "fake"

        def send(self, image: np.ndarray) -> None:
            assert image.flags.c_contiguous
            received.append(image.copy())

        def close(self) -> None:
            received.append(None)

    monkeypatch.setattr(pyvirtualcam, "Camera", FakeCamera)
    sink = VirtualCamSink()
    sink.open(StreamFormat(SIZE, FPS))
    rgba = np.dstack([frame(3), np.full(SIZE[::-1], 255, np.uint8)])
    sink.send(rgba, 0.1, time.perf_counter())
    sink.close()
    assert len(received) == 2 and received[-1] is None
    np.testing.assert_array_equal(received[0], frame(3))
    assert sink.stats().frames_sent == 1 and sink.device == "/dev/video9"


# ------------------------------------------------------------------------------------- status line

def test_status_line_shows_fps_latency_and_drops() -> None:
    from puppet.pipeline import Percentiles
    from puppet.sinks.base import SinkStats
    from puppet.stream import StatusLine, StreamStatus

    status = StreamStatus(elapsed_s=75.2, frames=1800, fps=24.96, latency_ms=Percentiles(81.0, 120.0, 90.0),
                          dropped=12, sinks=(SinkStats("rtmp", frames_sent=1790, dropped=3, connected=False),
                                             SinkStats("webrtc", frames_sent=1700, dropped=90, viewers=2,
                                                       viewer_latency_ms=Percentiles(60.0, 80.0, 65.0))))
    out = io.StringIO()
    line = StatusLine(out)
    assert not line.tty and line.every_s == 5.0  # not a terminal: a line every 5 s, not a \r line
    line.started(("webrtc http://127.0.0.1:8080/webrtc/",))
    line.status(status)
    assert out.getvalue().splitlines() == [
        "streaming: webrtc http://127.0.0.1:8080/webrtc/",
        "01:15 25.0 fps | latency   81 ms | dropped 12 | rtmp OFFLINE 1790 sent, 3 dropped"
        " | webrtc 1700 sent, 90 dropped, 2 viewers, shown 60 ms"]


def test_max_seconds_count_from_the_first_frame_sent() -> None:
    """A sink whose first send is slow (an encoder opening) must not eat the streaming time: the
    pipeline reports time from the first frame sent, and --max-seconds must mean the same."""
    from types import SimpleNamespace

    from puppet.frame import Frame
    from puppet.pipeline import Packet
    from puppet.stream import FanOut

    class SlowFirstSend:
        fmt = SimpleNamespace(size=(8, 8))
        sends = 0

        def send(self, image, t, captured) -> None:
            self.sends += 1
            if self.sends == 1:
                time.sleep(0.3)

        def stats(self) -> tuple:
            return ()

        def close(self) -> None:
            pass

    fanout = FanOut(SlowFirstSend(), max_seconds=0.2)
    image = np.zeros((8, 8, 3), np.uint8)
    try:
        keep_going, times = True, []  # when each write returned: the frame had gone out
        for i in range(100):
            keep_going = fanout.write(Packet(Frame(image, i / 30, i), time.perf_counter(), rendered=image))
            times.append(time.perf_counter())
            if not keep_going:
                break
            time.sleep(0.02)
    finally:
        fanout.close()
    assert not keep_going, "max_seconds never stopped the stream"
    streamed = times[-1] - times[0]
    assert 0.2 <= streamed < 0.2 + 0.25, f"stopped {streamed:.2f} s after the first frame went out"
