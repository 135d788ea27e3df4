"""Soak benchmark for ``puppet stream`` (a measurement, not a test): minutes of live streaming on
CPU into one sink, with a viewer on this machine, watching memory, frame time and latency.

    python scripts/soak_stream.py --sink rtmp --minutes 10 --json docs/figures/soak_rtmp.json
    python scripts/soak_stream.py --sink hls --minutes 3
    python scripts/soak_stream.py --sink webrtc --minutes 3

The source is a clip from ../shared/media played in real time over and over (``--loop``); the
pipeline is the one ``puppet stream`` runs (tracking, retargeting, mesh engine). The viewer:
- rtmp: FFmpeg's RTMP server in its own process (``python -m puppet.sinks.listen``), which decodes
  every frame; latency = its arrival time - the frame's capture time;
- hls: headless Chromium on the viewer page (its own MSE player), latency = shown - captured; and
  "segment ready": a segment's file time - the capture time of its first frame;
- webrtc: headless Chromium on the viewer page, latency = shown - captured (the page maps RTP
  timestamps back through the sink).
Capture-to-send latency is the sink's own (frame captured -> muxed / handed to aiortc).

``--synthetic`` replaces the source and the stages by a moving test pattern at 30 fps (the same
live pipeline and fan-out, no tracking or rendering): the sink's own cost and transport latency.

Pass criteria (issue 6): resident memory grows at most 5 % between the first and the last minute
after warm-up; the per-frame work (track + retarget + render, wall ms) does not grow. On a shared
machine wall time follows the other jobs' load, so the CPU time per streamed frame (this process
and its publisher, all threads) is recorded too: it grows only if the work itself does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from puppet.avatar import load_avatar  # noqa: E402
from puppet.convert import RenderOptions  # noqa: E402
from puppet.pipeline import FunctionStage, Percentiles, Pipeline, PipelineOptions  # noqa: E402
from puppet.sinks.hls import parse_playlist  # noqa: E402
from puppet.stream import (FanOut, LoopedVideo, StreamOptions, StreamSinks, StreamStatus,  # noqa: E402
                           StreamSummary, parse_target, run_stream, stream_format)
from puppet.tracking import TrackingOptions  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared" / "media" / "video" / "lp_d10.mp4"


def rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def publishers() -> list[str]:
    """Process ids of this process's RTMP publisher children (not the viewers)."""
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for pid in kids:
            try:
                if b"puppet.sinks.rtmp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except FileNotFoundError:
                pass
    return found


def children_rss_mb() -> float:
    return sum(rss_mb(pid) for pid in publishers())


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its RTMP publisher so far."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in publishers():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total


@dataclass
class Sample:
    t: float
    rss_mb: float
    child_rss_mb: float
    fps: float
    frame_ms_p50: float
    latency_ms_p50: float
    send_ms_p50: float
    dropped: int
    sink_dropped: int
    viewer_ms_p50: float | None
    load1: float
    cpu_ms_per_frame: float | None  # CPU time per streamed frame since the last sample (all threads)


@dataclass
class Recorder:
    """The stream's monitor: one sample per second, and the status line every 10 s."""

    every_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    started_at: float = field(default_factory=time.perf_counter)
    _last_cpu: tuple[float, int] | None = None

    def started(self, urls) -> None:
        for url in urls:
            print(f"streaming: {url}", flush=True)

    def status(self, status: StreamStatus) -> None:
        sink = status.sinks[0]
        viewer = sink.viewer_latency_ms
        cpu = cpu_seconds()
        per_frame = None
        if self._last_cpu is not None and status.frames > self._last_cpu[1]:
            per_frame = 1e3 * (cpu - self._last_cpu[0]) / (status.frames - self._last_cpu[1])
        self._last_cpu = (cpu, status.frames)
        self.samples.append(Sample(
            t=status.elapsed_s, rss_mb=rss_mb(), child_rss_mb=children_rss_mb(), fps=status.fps,
            frame_ms_p50=status.frame_ms.p50, latency_ms_p50=status.latency_ms.p50,
            send_ms_p50=sink.latency_ms.p50, dropped=status.dropped, sink_dropped=sink.dropped,
            viewer_ms_p50=None if viewer is None or np.isnan(viewer.p50) else viewer.p50,
            load1=os.getloadavg()[0], cpu_ms_per_frame=per_frame))
        if len(self.samples) % 10 == 0:
            print(status.describe(), flush=True)

    def end(self) -> None:
        pass


class ViewerLatency:
    """Capture-to-viewer latencies collected on a thread (ms)."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []  # (seconds since start, ms)
        self._lock = threading.Lock()
        self.t0 = time.time()

    def add(self, arrival_epoch: float, captured_epoch: float) -> None:
        with self._lock:
            self.values.append((arrival_epoch - self.t0, 1e3 * (arrival_epoch - captured_epoch)))


def lookup(times, ms: int) -> float | None:
    return next((c for k in (ms, ms - 1, ms + 1) if (c := times.get(k)) is not None), None)


def follow_rtmp(listener: subprocess.Popen, sink, out: ViewerLatency, stats: dict) -> None:
    for line in listener.stdout:
        msg = json.loads(line)
        if "pts_ms" in msg and msg["pts_ms"] is not None:
            stats["frames"] = stats.get("frames", 0) + 1
            captured = lookup(sink.times, msg["pts_ms"] - round(sink.audio_shift * 1000))
            if captured is not None:
                out.add(msg["arrival"], captured)
        elif "end" in msg:
            stats["end"] = msg


def follow_hls(sink, stop: threading.Event, out: ViewerLatency) -> None:
    """Segment ready latency: a segment file's time - the capture time of its first frame (segment
    n starts with the sink's n-th keyframe)."""
    seen: set[str] = set()
    while not stop.wait(0.1):
        try:
            playlist = parse_playlist(sink.playlist.read_text())
        except (FileNotFoundError, ValueError):
            continue
        for uri, _ in playlist.segments:
            if uri in seen:
                continue
            seen.add(uri)
            try:
                ready = (sink.directory / uri).stat().st_mtime
            except FileNotFoundError:
                continue
            captured = sink.segment_starts.get(int(uri[3:-4]))
            if captured is not None:
                out.add(ready, captured)


class PatternSource:
    """A live test source: a square moving across a grey frame, ``fps`` frames per second."""

    def __init__(self, size: int, fps: float, seconds: float) -> None:
        self.size, self.fps, self.seconds = size, fps, seconds

    def __iter__(self):
        from puppet.frame import Frame

        start = time.monotonic()
        for i in range(int(self.seconds * self.fps) + 1):
            if (delay := start + i / self.fps - time.monotonic()) > 0:
                time.sleep(delay)
            yield Frame(np.zeros((8, 8, 3), np.uint8), i / self.fps, i)

    def draw(self, packet):
        i, n = packet.frame.index, self.size
        image = np.full((n, n, 3), 60, np.uint8)
        x = (4 * i) % (n - n // 4)
        image[n // 3:n // 3 + n // 4, x:x + n // 4] = (230, 180, 40)
        return packet.with_(rendered=image)


def chromium(url: str, profile: Path) -> subprocess.Popen:
    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        raise SystemExit("this sink's viewer needs Chromium (apt install chromium)")
    return subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                             f"--user-data-dir={profile}", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(samples: list[Sample], viewer: ViewerLatency, warmup_s: float, duration_s: float) -> dict:
    after = [s for s in samples if s.t >= warmup_s]
    window = min(60.0, (duration_s - warmup_s) / 3)
    first = [s for s in after if s.t < warmup_s + window]
    last = [s for s in after if s.t >= duration_s - window]

    def med(values):
        values = [v for v in values if v is not None and not np.isnan(v)]
        return statistics.median(values) if values else float("nan")

    rss_first, rss_last = med([s.rss_mb + s.child_rss_mb for s in first]), med([s.rss_mb + s.child_rss_mb for s in last])
    work_first, work_last = med([s.frame_ms_p50 for s in first]), med([s.frame_ms_p50 for s in last])
    cpu_first, cpu_last = med([s.cpu_ms_per_frame for s in first]), med([s.cpu_ms_per_frame for s in last])
    viewer_after = [ms for t, ms in viewer.values if t >= warmup_s]
    return {
        "warmup_s": warmup_s, "compare_window_s": window,
        "rss_mb_first": rss_first, "rss_mb_last": rss_last,
        "rss_growth_pct": 100 * (rss_last - rss_first) / rss_first,
        "frame_ms_first": work_first, "frame_ms_last": work_last,
        "frame_ms_growth_pct": 100 * (work_last - work_first) / work_first,
        "cpu_ms_per_frame_first": cpu_first, "cpu_ms_per_frame_last": cpu_last,
        "cpu_ms_per_frame_growth_pct": 100 * (cpu_last - cpu_first) / cpu_first,
        "load1_first": med([s.load1 for s in first]), "load1_last": med([s.load1 for s in last]),
        "fps_median": med([s.fps for s in after]),
        "capture_to_sinks_ms_median_p50": med([s.latency_ms_p50 for s in after]),
        "capture_to_send_ms_median_p50": med([s.send_ms_p50 for s in after]),
        "viewer_page_ms_median_p50": med([s.viewer_ms_p50 for s in after]),
        "viewer_ms": asdict(Percentiles.of(viewer_after)) if viewer_after else None,
        "viewer_samples": len(viewer_after),
        "load1_median": med([s.load1 for s in after]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", choices=("rtmp", "hls", "webrtc"), required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the comparisons")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", choices=("full", "face"), default="full")
    parser.add_argument("--synthetic", action="store_true",
                        help="a moving test pattern instead of the clip, tracking and rendering")
    parser.add_argument("--json", type=Path, help="write the series and the summary here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GLOG_minloglevel", "2")
    if not args.clip.exists():
        raise SystemExit(f"{args.clip} is absent (the soak plays a clip from ../shared/media)")

    work = Path(tempfile.mkdtemp(prefix="soak_stream_"))
    duration = args.minutes * 60
    target = {"rtmp": f"rtmp://127.0.0.1:{free_port()}/live/soak", "hls": f"hls:{work / 'hls'}",
              "webrtc": "webrtc"}[args.sink]
    options = StreamOptions(camera=str(args.clip), targets=(parse_target(target),), port=0, loop=True,
                            render=RenderOptions(size=args.size), tracking=TrackingOptions(mode=args.mode),
                            max_seconds=duration)
    viewer = ViewerLatency()
    listener = browser = follower = None
    stop = threading.Event()
    listener_stats: dict = {}
    avatar = load_avatar(options.render.avatar)
    if args.sink == "rtmp":
        listener = subprocess.Popen([sys.executable, "-m", "puppet.sinks.listen", target, "--wait", "120",
                                     "--max-seconds", str(duration + 600)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        listener.stdout.readline()
        time.sleep(0.3)
    source = LoopedVideo(args.clip)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    recorder = Recorder()
    with source:
        sinks = StreamSinks(options.targets, stream_format(source, options.render, True), options.host, 0,
                            options.encoder)
        sink = sinks.sinks[0]
        if args.sink == "rtmp":
            follower = threading.Thread(target=follow_rtmp, args=(listener, sink, viewer, listener_stats), daemon=True)
        else:
            browser = chromium(sink.url, work / "profile")
            if args.sink == "hls":
                follower = threading.Thread(target=follow_hls, args=(sink, stop, viewer), daemon=True)
        if follower is not None:
            follower.start()
        try:
            if args.synthetic:
                pattern = PatternSource(args.size, 30.0, duration)
                fanout = FanOut(sinks, recorder, duration)
                recorder.started(sinks.urls())
                stats = Pipeline(pattern, [FunctionStage("pattern", pattern.draw)], fanout,
                                 PipelineOptions(live=True)).run()
                summary = StreamSummary(pipeline=stats, sinks=sinks.stats(), urls=sinks.urls())
            else:
                summary = run_stream(options, source, sinks, avatar, recorder)
        finally:
            stop.set()
            if browser is not None:
                browser.terminate()
                browser.wait(timeout=20)
            if listener is not None:
                listener.wait(timeout=30)
            if follower is not None:
                follower.join(timeout=10)
    if args.sink == "webrtc":  # the page's own reports, sampled each second by the recorder
        for s in recorder.samples:
            if s.viewer_ms_p50 is not None:
                viewer.values.append((s.t, s.viewer_ms_p50))
    result = {
        "sink": args.sink, "date": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "python": platform.python_version(),
                    "load_before": load_before, "load_after": os.getloadavg()},
        "options": {"minutes": args.minutes, "synthetic": args.synthetic,
                    "clip": None if args.synthetic else args.clip.name, "size": args.size,
                    "mode": None if args.synthetic else args.mode, "encoder": asdict(options.encoder)},
        "pipeline": summary.pipeline.describe(),
        "sink_stats": summary.sinks[0].describe(),
        "listener": listener_stats.get("end"),
        "summary": summarize(recorder.samples, viewer, min(args.warmup, duration / 5), duration),
        "series": [asdict(s) for s in recorder.samples[::5]],
    }
    print(json.dumps(result["summary"], indent=2))
    print(result["pipeline"])
    print(result["sink_stats"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
