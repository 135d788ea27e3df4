"""The viewer pages in a real browser: headless Chromium opens the WebRTC page and the HLS page,
and each page reports back to the server the frames it showed (``requestVideoFrameCallback``),
so no browser-automation library is needed. Skipped where no Chromium binary exists."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from puppet.sinks.base import SinkStats, StreamFormat
from puppet.sinks.hls import HlsOptions, HlsSink
from puppet.sinks.http import LocalServer
from puppet.sinks.webrtc import WebRtcSink

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (Debian: apt install chromium)")

SIZE = (160, 120)
FPS = 30.0


def moving(i: int) -> np.ndarray:
    image = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
    x = (4 * i) % (SIZE[0] - 30)
    image[40:80, x:x + 30] = (230, 180, 40)
    return image


@contextlib.contextmanager
def chromium(url: str, profile: Path) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                             f"--user-data-dir={profile}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_until(sink, done: Callable[[SinkStats], bool], timeout: float) -> SinkStats:
    """Send frames at 30 fps (the capture clock) until ``done`` or ``timeout``."""
    start = time.perf_counter()
    i = 0
    while not done(stats := sink.stats()):
        if time.perf_counter() - start > timeout:
            return stats
        sink.send(moving(i), i / FPS, time.perf_counter())
        i += 1
        time.sleep(max(0.0, start + i / FPS - time.perf_counter()))
    return stats


def test_webrtc_page_shows_the_stream(tmp_path: Path) -> None:
    server = LocalServer("127.0.0.1", 0)
    server.start()
    sink = WebRtcSink(server)
    try:
        sink.open(StreamFormat(SIZE, FPS))
        with chromium(sink.url, tmp_path / "profile"):
            stats = stream_until(sink, lambda s: (s.viewer_frames or 0) >= 45, timeout=45)
            assert stats.viewers == 1, stats
    finally:
        sink.close()
        server.close()
    assert stats.viewer_frames >= 45, stats  # frames the page showed, counted by the page itself
    assert stats.frames_sent >= stats.viewer_frames
    # The page's RTP timestamps map back to frames this sink sent: capture-to-screen latency.
    latency = stats.viewer_latency_ms
    assert latency is not None and not math.isnan(latency.p50), stats
    assert 0 < latency.p50 < 1000, latency
    assert sink.stats().viewers == 0  # hung up on close


def test_hls_page_plays_without_network(tmp_path: Path) -> None:
    server = LocalServer("127.0.0.1", 0)
    server.start()
    sink = HlsSink(HlsOptions(tmp_path / "live"), server)
    try:
        sink.open(StreamFormat(SIZE, FPS))
        with chromium(sink.url, tmp_path / "profile"):
            stats = stream_until(sink, lambda s: (s.viewer_frames or 0) >= 45, timeout=45)
    finally:
        sink.close()
        server.close()
    assert stats.viewer_frames >= 45, stats  # the page's own Media Source player played the segments
    latency = stats.viewer_latency_ms
    assert latency is not None and not math.isnan(latency.p50), stats
    # Segments of 1 s, the page ~1.5 segments behind the live edge: about 1-4 s.
    assert 500 < latency.p50 < 6000, latency
