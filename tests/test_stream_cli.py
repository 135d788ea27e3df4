"""``puppet stream`` as a user meets it: one-line errors before any model loads, a real run through
tracking and the mesh engine into HLS and WebRTC at once, Ctrl-C (exit 130, playlist finished),
and a looped clip whose time keeps running."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from puppet.sinks.hls import parse_playlist
from puppet.stream import LoopedVideo
from puppet.video_writer import VideoWriter
from test_cli import PUPPET, assert_one_error_line, run_main
from test_stream import Listener, free_port

def test_unknown_target_is_one_line() -> None:
    assert_one_error_line(run_main(["stream", "--to", "udp://x"]), "unknown stream target 'udp://x'")


def test_virtual_camera_missing_is_one_line_with_the_fix(face_video: Path) -> None:
    if any(Path("/sys/devices/virtual/video4linux").glob("video*")):
        pytest.skip("a v4l2loopback device exists on this machine")
    run = run_main(["stream", "--camera", str(face_video), "--to", "virtualcam"])
    assert_one_error_line(run, "no virtual camera", "sudo modprobe v4l2loopback devices=1 exclusive_caps=1")


def test_unreachable_rtmp_server_is_one_line_without_the_key(face_video: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    run = run_main(["stream", "--camera", str(face_video), "--to", f"rtmp://127.0.0.1:{port}/live/s3cr3t"])
    assert_one_error_line(run, f"cannot publish to rtmp://127.0.0.1:{port}/live/****")
    assert "s3cr3t" not in run.err


def test_stream_to_hls_webrtc_and_rtmp_then_ctrl_c(face_video: Path, tmp_path: Path) -> None:
    folder = tmp_path / "live"
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/key"
    listener = Listener(rtmp)
    proc = subprocess.Popen([*PUPPET, "stream", "--camera", str(face_video), "--to", f"hls:{folder}", "--to", "webrtc",
                             "--to", rtmp, "--port", "0", "--size", "128", "--mode", "face"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = {}
        while len(urls) < 2:  # printed once the sinks are open, before the models load
            line = proc.stderr.readline()
            assert line, proc.communicate()
            if match := re.match(r"streaming: (\w+) (http://127\.0\.0\.1:\d+/\w+/)", line):
                urls[match.group(1)] = match.group(2)
        with urllib.request.urlopen(urls["webrtc"], timeout=10) as r:
            assert b"RTCPeerConnection" in r.read()
        playlist = folder / "stream.m3u8"
        deadline = time.monotonic() + 120
        while not (playlist.exists() and len(parse_playlist(playlist.read_text()).segments) >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no HLS segments after 120 s"
            time.sleep(0.1)
        with urllib.request.urlopen(urls["hls"] + "stream.m3u8", timeout=10) as r:
            assert b"#EXTM3U" in r.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        frames_received, end = listener.result()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        listener.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"\d+ frames in [\d.]+ s \([\d.]+ fps\); latency p50 \d+ ms", out), out
    for sink in ("hls", "webrtc", "rtmp"):
        assert re.search(rf"^{sink}: \d+ sent, dropped \d+", out, re.M), out
    assert end["end"] == "closed" and len(frames_received) >= 2  # the RTMP server saw a clean hang-up
    assert {(f["w"], f["h"]) for f in frames_received} == {(128, 128)}
    final = parse_playlist(playlist.read_text())
    assert final.ended  # Ctrl-C finished the playlist
    frames = 0
    for uri, duration in final.segments:
        data = (folder / final.init).read_bytes() + (folder / uri).read_bytes()
        with av.open(io.BytesIO(data)) as c:
            decoded = list(c.decode(video=0))
        assert decoded[0].key_frame and (decoded[0].width, decoded[0].height) == (128, 128)
        assert decoded[-1].to_ndarray().std() > 5  # the avatar, not a blank frame
        frames += len(decoded)
    assert frames >= 2


def write_clip(path: Path, frames: int, fps: int) -> None:
    with VideoWriter(path, (64, 48), fps, time_base=Fraction(1, fps)) as writer:
        for i in range(frames):
            writer.write(np.full((48, 64, 3), 10 * i, np.uint8), i / fps)


def test_a_looped_clip_keeps_time_running(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=6, fps=20)  # 0.3 s
    with LoopedVideo(clip) as source:
        assert source.period == pytest.approx(0.3)
        frames = []
        started = time.monotonic()
        for frame in source:
            frames.append(frame)
            if len(frames) == 15:
                break
        elapsed = time.monotonic() - started
    t = np.array([f.t for f in frames])
    np.testing.assert_allclose(t, np.arange(15) / 20, atol=1e-6)  # 2.5 passes, no gap, no repeat
    assert [f.index for f in frames] == list(range(15))
    assert elapsed >= 0.65  # played at its real rate (14 frame intervals of 50 ms)
    means = [f.image.mean() for f in frames]
    assert means[0] == pytest.approx(means[6], abs=2) and means[5] == pytest.approx(means[11], abs=2)
