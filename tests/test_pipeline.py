"""The threaded pipeline: lossless file mode, newest-frame live mode, latency, errors, stopping."""

import _thread
import threading
import time

import numpy as np
import pytest

from puppet.frame import Frame
import puppet.pipeline as pipeline_module
from puppet.pipeline import FunctionStage, Pipeline, PipelineOptions


def frames(n, fps=30.0, paced=False):
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(n):
        if paced:
            time.sleep(1.0 / fps)
        yield Frame(image, t=i / fps, index=i)


class ListSink:
    def __init__(self, stop_after=None):
        self.packets, self.opened, self.closed, self.stop_after = [], False, False, stop_after
        self.thread = None

    def open(self):
        self.opened = True

    def write(self, packet):
        self.thread = threading.current_thread()
        self.packets.append(packet)
        return self.stop_after is None or len(self.packets) < self.stop_after

    def close(self):
        self.closed = True


class ThreadRecordingStage:
    """Records which threads open/process/close run on (they must all be the same one)."""

    name = "record"

    def __init__(self):
        self.threads = set()

    def open(self):
        self.threads.add(threading.current_thread().name)

    def process(self, packet):
        self.threads.add(threading.current_thread().name)
        return packet.with_(avatar=packet.frame.index * 2)

    def close(self):
        self.threads.add(threading.current_thread().name)


def test_file_mode_is_lossless_ordered_and_timed():
    sink = ListSink()
    rec = ThreadRecordingStage()
    slow = FunctionStage("slow", lambda p: (time.sleep(0.002), p)[1])
    stats = Pipeline(frames(50), [rec, slow], sink, PipelineOptions(live=False, queue_depth=2)).run()
    assert [p.frame.index for p in sink.packets] == list(range(50))
    assert [p.t for p in sink.packets] == [i / 30.0 for i in range(50)]
    assert [p.avatar for p in sink.packets] == [2 * i for i in range(50)]
    assert stats.frames_in == stats.frames_out == 50 and stats.dropped == {}
    assert rec.threads == {"stage-record"}, "a stage opens, works and closes on its own thread"
    assert sink.thread is threading.main_thread() and sink.opened and sink.closed
    assert stats.stage_ms["slow"].p50 >= 2.0
    assert set(sink.packets[-1].timings_ms) == {"record", "slow"}
    assert stats.latency_ms.p50 > 0 and not stats.interrupted


def test_live_mode_keeps_the_newest_and_counts_drops():
    sink = ListSink()
    slow = FunctionStage("render", lambda p: (time.sleep(0.1), p)[1])  # 10 fps stage, 100 fps source
    stats = Pipeline(frames(60, fps=100.0, paced=True), [slow], sink, PipelineOptions(live=True)).run()
    indices = [p.frame.index for p in sink.packets]
    assert indices == sorted(indices)
    assert len(indices) < 20, "a slow stage must not queue up every frame"
    assert sum(stats.dropped.values()) >= 40
    assert stats.frames_in == 60
    assert stats.frames_out + sum(stats.dropped.values()) == 60
    assert stats.latency_ms.p95 < 400, "latency stays bounded: stale frames were dropped"


def test_stage_errors_reach_the_caller():
    def broken(p):
        if p.frame.index == 5:
            raise RuntimeError("stage broke")
        return p

    sink = ListSink()
    with pytest.raises(RuntimeError, match="stage broke"):
        Pipeline(frames(100), [FunctionStage("broken", broken)], sink).run()
    assert sink.closed


def test_a_failure_waits_for_a_stage_still_opening(monkeypatch):
    # A stage still loading (a model, an engine) when another fails must finish opening before
    # run() returns: exiting while a daemon thread is inside native loading code aborts Python.
    monkeypatch.setattr(pipeline_module, "JOIN_TIMEOUT_S", 0.05)
    finished = threading.Event()

    class SlowToOpen(FunctionStage):
        def open(self):
            time.sleep(0.5)
            finished.set()

    class FailsToOpen(FunctionStage):
        def open(self):
            raise RuntimeError("no such checkpoint")

    stages = [FailsToOpen("solve", lambda p: p), SlowToOpen("render", lambda p: p)]
    with pytest.raises(RuntimeError, match="no such checkpoint"):
        Pipeline(frames(10), stages, ListSink()).run()
    assert finished.is_set()


def test_sink_can_stop_the_run():
    sink = ListSink(stop_after=10)
    stats = Pipeline(frames(10_000), [FunctionStage("id", lambda p: p)], sink).run()
    assert stats.frames_out == len(sink.packets) == 10
    assert stats.frames_in < 10_000


def test_ctrl_c_stops_cleanly():
    sink = ListSink()
    threading.Timer(0.3, _thread.interrupt_main).start()
    stats = Pipeline(frames(10_000, fps=200.0, paced=True), [FunctionStage("id", lambda p: p)], sink).run()
    assert stats.interrupted and sink.closed
    assert 0 < stats.frames_out < 10_000


def test_live_end_of_stream_keeps_the_last_frame_and_fps_excludes_start_up():
    class SlowOpen:
        name = "slow-open"

        def open(self):
            time.sleep(0.5)  # a model loading

        def process(self, packet):
            return packet

        def close(self):
            pass

    sink = ListSink()
    stats = Pipeline(frames(3), [SlowOpen()], sink, PipelineOptions(live=True)).run()
    assert sink.packets[-1].frame.index == 2, "the end marker must not replace the last frame"
    assert stats.seconds >= 0.5
    assert stats.streaming_s < 0.4, "throughput is timed from the first frame written"
