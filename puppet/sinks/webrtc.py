"""WebRTC to a browser page (aiortc): the page offers, this server answers, video flows.

The signalling is one POST on the local HTTP server (``puppet.sinks.http``): the page sends its
offer (non-trickle, host candidates only: no STUN server is contacted), aiortc answers. Each
viewer gets its own ``NewestFrameTrack``, which always hands aiortc's encoder the newest
rendered frame; frames rendered while the encoder was busy are skipped and counted.

aiortc runs on its own asyncio loop on a thread; ``send`` (the pipeline's thread) only posts
the frame to that loop. The page reports, once a second, the frames it showed with their RTP
timestamps and display times (``requestVideoFrameCallback``); the sink maps each RTP timestamp
back to the frame's capture time, which gives capture-to-shown latency when the page runs on
this machine (same clock). Video only: the page has no audio track yet.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import Any

import av
import numpy as np

from puppet.errors import OutputError
from puppet.sinks.base import (FrameTimes, LatencyWindow, Outgoing, SinkStats, StreamFormat, check_image,
                               perf_to_epoch)
from puppet.sinks.http import LocalServer, Response
from puppet.video_writer import pad_to_even

log = logging.getLogger(__name__)

RTP_CLOCK = 90000
RTP_TIME_BASE = Fraction(1, RTP_CLOCK)


@dataclass(frozen=True)
class WebRtcOptions:
    """path: where the viewer page is served; max_viewers: peers encoded at once (each viewer
    costs one encoder); answer_timeout_s: longest wait for aiortc to answer an offer."""

    path: str = "/webrtc/"
    max_viewers: int = 4
    answer_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.path.startswith("/") and self.path.endswith("/")):
            raise ValueError(f"path must start and end with '/', got {self.path!r}")
        if self.max_viewers < 1:
            raise ValueError(f"max_viewers must be at least 1, got {self.max_viewers}")


def page_html() -> str:
    return (resources.files("puppet.sinks") / "pages" / "webrtc.html").read_text(encoding="utf-8")


class _Hub:
    """The newest frame, on the aiortc loop; tracks wait for one newer than they last sent."""

    def __init__(self) -> None:
        self.item: Outgoing | None = None
        self.seq = 0
        self.closed = False
        self._changed = asyncio.Event()

    def publish(self, item: Outgoing) -> None:
        self.item, self.seq = item, self.seq + 1
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def newer_than(self, seq: int) -> tuple[Outgoing, int]:
        from aiortc.mediastreams import MediaStreamError

        while self.seq <= seq and not self.closed:
            await self._changed.wait()
        if self.closed:
            raise MediaStreamError
        assert self.item is not None
        return self.item, self.seq


def _track_class():
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class NewestFrameTrack(MediaStreamTrack):
        """A video track that sends the newest rendered frame each time the encoder is ready.

        pts: the frame's capture time ``t`` relative to the first frame this viewer got, in the
        90 kHz RTP clock; aiortc adds a random origin, which ``rtp_origin`` recovers from the
        sender's last RTP timestamp (to map the page's reports back to capture times).
        """

        kind = "video"

        def __init__(self, hub: _Hub, latency: LatencyWindow) -> None:
            super().__init__()
            self._hub = hub
            self._latency = latency
            self._seq = 0
            self._t0: float | None = None
            self._last_pts: int | None = None
            self._origins: collections.Counter[int] = collections.Counter()
            self.sender: Any = None
            self.times = FrameTimes(capacity=600)
            self.sent = 0
            self.skipped = 0

        @property
        def rtp_origin(self) -> int | None:
            return self._origins.most_common(1)[0][0] if self._origins else None

        async def recv(self) -> av.VideoFrame:
            if self.readyState != "live":
                raise MediaStreamError
            self._note_rtp_origin()
            item, seq = await self._hub.newer_than(self._seq)
            if self._seq:
                self.skipped += seq - self._seq - 1
            self._seq = seq
            if self._t0 is None:
                self._t0 = item.t
            frame = av.VideoFrame.from_ndarray(pad_to_even(item.image), format="rgb24")
            pts = round((item.t - self._t0) * RTP_CLOCK)
            frame.pts, frame.time_base = pts, RTP_TIME_BASE
            self._last_pts = pts
            self.times.add(pts, perf_to_epoch(item.captured))
            self.sent += 1
            self._latency.add(1e3 * (time.perf_counter() - item.captured))
            return frame

        def _note_rtp_origin(self) -> None:
            # aiortc asks for the next frame only after the previous one's packets went out, so
            # the sender's last RTP timestamp is (origin + that frame's pts) mod 2^32.
            # aiortc 1.16 keeps it private; without it, viewer latency is simply not measured.
            if self.sender is None or self._last_pts is None:
                return
            rtp = getattr(self.sender, "_RTCRtpSender__rtp_timestamp", None)
            if isinstance(rtp, int) and rtp:
                self._origins[(rtp - self._last_pts) % (1 << 32)] += 1
                if len(self._origins) > 32:  # bounded: keep the likeliest
                    self._origins = collections.Counter(dict(self._origins.most_common(8)))

    return NewestFrameTrack


@dataclass
class _Peer:
    id: int
    pc: Any  # aiortc.RTCPeerConnection
    track: Any  # NewestFrameTrack
    frames_shown: int = 0
    connected: bool = False


class WebRtcSink:
    """Serves a viewer page at ``options.path`` of ``server`` and streams to every page opened."""

    name = "webrtc"

    def __init__(self, server: LocalServer, options: WebRtcOptions = WebRtcOptions()) -> None:
        self.server = server
        self.options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._hub: _Hub | None = None
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._latency = LatencyWindow()
        self._viewer_latency = LatencyWindow()
        self._frames_in = 0
        self._size: tuple[int, int] = (0, 0)
        self._closed_peers_sent = 0
        self._closed_peers_skipped = 0
        self._closed_peers_shown = 0

    @property
    def url(self) -> str:
        return self.server.url(self.options.path)

    def open(self, fmt: StreamFormat) -> None:
        try:
            import aiortc  # noqa: F401 - fail here, with one line, if it is missing
        except ImportError as exc:
            raise OutputError(f"WebRTC needs aiortc (pip install aiortc): {exc}") from None
        self._size = fmt.size
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="webrtc", daemon=True)
        self._thread.start()
        ready.wait()
        self._hub = self._call(self._make_hub())
        path = self.options.path
        self.server.add_page(path, page_html(), title="WebRTC viewer (lowest latency)")
        self.server.add_post(path + "offer", self._on_offer)
        self.server.add_post(path + "report", self._on_report)

    def send(self, image: np.ndarray, t: float, captured: float) -> None:
        item = Outgoing(check_image(image, self._size), t, captured)
        self._frames_in += 1
        assert self._loop is not None and self._hub is not None
        self._loop.call_soon_threadsafe(self._hub.publish, item)

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._shutdown(), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - closing peers must not hide the run's result
            log.warning("webrtc: closing the peers failed: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._loop = None

    def stats(self) -> SinkStats:
        with self._lock:
            peers = list(self._peers.values())
            sent = self._closed_peers_sent + sum(p.track.sent for p in peers)
            skipped = self._closed_peers_skipped + sum(p.track.skipped for p in peers)
            shown = self._closed_peers_shown + sum(p.frames_shown for p in peers)
        viewer = self._viewer_latency.percentiles()
        return SinkStats(name=self.name, frames_in=self._frames_in, frames_sent=sent, dropped=skipped,
                         latency_ms=self._latency.percentiles(), connected=True,
                         viewers=sum(p.connected for p in peers), viewer_frames=shown,
                         viewer_latency_ms=viewer)

    # -- the aiortc loop

    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro, timeout: float = 10.0):
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _make_hub(self) -> _Hub:
        return _Hub()  # its asyncio.Event must be made on the loop's thread

    async def _answer(self, offer: dict) -> dict:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only, no STUN
        track = _track_class()(self._hub, self._latency)
        peer = _Peer(next(self._ids), pc, track)
        with self._lock:
            self._peers[peer.id] = peer

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("webrtc viewer %d: %s", peer.id, pc.connectionState)
            peer.connected = pc.connectionState == "connected"
            if pc.connectionState in ("failed", "closed"):
                await self._drop(peer)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
            track.sender = pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self._drop(peer)
            raise
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "id": peer.id}

    async def _drop(self, peer: _Peer) -> None:
        with self._lock:
            if self._peers.pop(peer.id, None) is None:
                return
            self._closed_peers_sent += peer.track.sent
            self._closed_peers_skipped += peer.track.skipped
            self._closed_peers_shown += peer.frames_shown
        peer.track.stop()
        await peer.pc.close()

    async def _shutdown(self) -> None:
        if self._hub is not None:
            self._hub.close()
        for peer in list(self._peers.values()):
            await self._drop(peer)

    # -- HTTP handlers (request threads)

    def _on_offer(self, body: bytes) -> Response:
        try:
            offer = json.loads(body)
            if offer.get("type") != "offer" or not isinstance(offer.get("sdp"), str):
                raise ValueError
        except (ValueError, AttributeError):
            return Response(b"expected a JSON offer {type: 'offer', sdp: ...}\n", status=400)
        with self._lock:
            busy = len(self._peers) >= self.options.max_viewers
        if busy:
            return Response(f"at most {self.options.max_viewers} viewers at once\n".encode(), status=503)
        answer = self._call(self._answer(offer), timeout=self.options.answer_timeout_s)
        return Response(json.dumps(answer).encode(), "application/json")

    def _on_report(self, body: bytes) -> Response:
        """{id, frames: shown so far, samples: [{rtp, shown: epoch ms}]} from a viewer page."""
        report = json.loads(body)
        with self._lock:
            peer = self._peers.get(int(report.get("id", -1)))
        if peer is None:
            return Response(b"unknown viewer\n", status=404)
        peer.frames_shown = max(peer.frames_shown, int(report.get("frames", 0)))
        origin = peer.track.rtp_origin
        if origin is not None:
            for sample in report.get("samples", [])[:1000]:
                captured = peer.track.times.get((int(sample["rtp"]) - origin) % (1 << 32))
                if captured is not None:
                    self._viewer_latency.add(float(sample["shown"]) - 1e3 * captured)
        return Response(b"{}", "application/json")
