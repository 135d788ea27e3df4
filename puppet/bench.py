"""Benchmarks that measure (never assert): per-stage milliseconds, p50/p95, frames per second,
with the machine and versions recorded next to the numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from puppet.errors import InputError
from puppet.params import tool_versions
from puppet.pipeline import Percentiles
from puppet.sources import open_source
from puppet.tracking import STAGES, Tracker, TrackingOptions

log = logging.getLogger(__name__)


def machine_info() -> dict[str, Any]:
    """Where a figure was measured (the GPU when torch is loaded and sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = None
    if "torch" in sys.modules:  # never import torch just to say there is no GPU
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    versions = tool_versions()
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


class _Report:
    """What every benchmark report offers besides its table: JSON next to the numbers."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def _stage_table(self, header: str) -> list[str]:
        """The report's header, the machine, then one row of p50 / p95 / mean per stage."""
        gpu = f"; GPU {self.machine['gpu']}" if self.machine.get("gpu") else ""
        lines = [header, f"machine: {self.machine['cpu']}, {self.machine['cores']} cores{gpu}",
                 f"{'stage':<10} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"]
        for name, st in self.stages_ms.items():
            lines.append(f"{name:<10} {st.p50:>8.2f} {st.p95:>8.2f} {st.mean:>8.2f}")
        return lines


@dataclass(frozen=True)
class TrackBenchReport(_Report):
    """Per-stage timings of the tracking stage on one input.

    ``tracking`` is the wall time of the whole stage per frame (face + body + solve + smooth; face
    and body overlap when run in parallel), the figure the tracking speed bar refers to.
    """

    input: str
    frame_size: tuple[int, int]
    frames: int
    warmup: int
    mode: str
    parallel: bool
    face_backend: str
    stages_ms: dict[str, Percentiles]
    fps: float
    machine: dict[str, Any] = field(default_factory=machine_info)

    def table(self) -> str:
        w, h = self.frame_size
        lines = self._stage_table(
            f"puppet bench track: {self.input} ({w}x{h}), {self.frames} frames after {self.warmup} "
            f"warm-up, mode {self.mode}, {'parallel' if self.parallel else 'sequential'}, "
            f"face tracker {self.face_backend}")
        lines.append(f"tracking stage: {1e3 / self.stages_ms['tracking'].mean:.1f} fps; "
                     f"end to end (decode + tracking): {self.fps:.1f} fps")
        return "\n".join(lines)



def bench_track(input: str, options: TrackingOptions = TrackingOptions(), frames: int | None = 300,
                warmup: int = 10, progress: bool = True) -> TrackBenchReport:
    """Decode and track ``frames`` frames of ``input`` (after ``warmup``), timing every stage.

    Decoding is timed on its own (not overlapped) so that the stage figures add up.
    """
    from tqdm import tqdm

    samples: dict[str, list[float]] = {name: [] for name in ("decode", *STAGES, "tracking")}
    with open_source(input) as source, Tracker(options) as tracker:
        total = source.frame_count
        limit = None if frames is None else frames + warmup
        if total is not None and limit is not None:
            total = min(total, limit)
        it = iter(source)
        n = 0
        start_all = None
        with tqdm(total=total, unit="frame", desc="bench", disable=None if progress else True, leave=False) as bar:
            while limit is None or n < limit:
                t0 = time.perf_counter()
                try:
                    frame = next(it)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                tracked = tracker.process(frame)
                t2 = time.perf_counter()
                if n == warmup:
                    start_all = t0
                if n >= warmup:
                    samples["decode"].append(1e3 * (t1 - t0))
                    samples["tracking"].append(1e3 * (t2 - t1))
                    for name in STAGES:
                        samples[name].append(tracked.timings_ms[name])
                n += 1
                bar.update(1)
        measured = max(0, n - warmup)
        if measured == 0:
            raise InputError(f"{source.description} has only {n} frames: nothing left to time after "
                             f"{warmup} warm-up frames")
        elapsed = time.perf_counter() - start_all if start_all is not None else 0.0
        stages = {name: Percentiles.of(v) for name, v in samples.items()
                  if name not in ("body",) or options.mode == "full"}
        return TrackBenchReport(
            input=source.description,
            frame_size=source.size,
            frames=measured,
            warmup=min(warmup, n),
            mode=options.mode,
            parallel=options.parallel,
            face_backend=tracker.face_backend,
            stages_ms=stages,
            fps=measured / elapsed if elapsed > 0 else 0.0,
        )


@dataclass(frozen=True)
class RenderBenchReport(_Report):
    """Per-frame render time of an engine after baking: ``total`` is the whole ``render`` call
    (frame returned to the host as uint8); the other stages are the engine's own breakdown when it
    reports one. Neural engine: ``backend`` the runtime asked for, ``checkpoint`` (None: a freshly
    initialised published-config generator, said in ``note``), ``peak_gpu_memory_mb`` torch's
    allocator peak over the timed frames on CUDA (TensorRT/ONNX Runtime workspaces not included)."""

    engine: str
    engine_info: dict[str, Any]
    avatar: str
    size: int
    frames: int
    warmup: int
    bake_s: float
    stages_ms: dict[str, Percentiles]
    machine: dict[str, Any] = field(default_factory=machine_info)
    backend: str = ""
    checkpoint: str | None = None
    note: str = ""
    peak_gpu_memory_mb: float | None = None

    @property
    def fps(self) -> float:
        return 1e3 / self.stages_ms["total"].mean

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["fps"] = self.fps
        return out

    def table(self) -> str:
        lines = self._stage_table(
            f"puppet bench render: engine {self.engine} ({self.engine_info.get('backend')}, "
            f"{self.engine_info.get('device')}, {self.engine_info.get('precision')}), avatar {self.avatar}, "
            f"{self.size}x{self.size}, {self.frames} frames after {self.warmup} warm-up; bake {self.bake_s:.1f} s")
        extra = f"; peak GPU memory {self.peak_gpu_memory_mb:.0f} MB" if self.peak_gpu_memory_mb is not None else ""
        lines.append(f"render: {self.fps:.1f} fps{extra}")
        if self.checkpoint:
            lines.append(f"checkpoint: {self.checkpoint}")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)



FRESH_GENERATOR_NOTE = ("no checkpoint: a freshly initialised published-config generator (untrained, seed 0) "
                        "was timed; speed only, the images mean nothing")


def _create_bench_engine(engine_name: str, size: int, backend: str | None, checkpoint: str | Path | None,
                         engine_options: dict[str, Any]):
    """The engine to time and the note about it (see ``bench_render``)."""
    import engines

    if engine_name != "neural":
        if backend not in (None, "", engine_name, "moderngl"):
            raise InputError(f"--backend {backend} is for --engine neural")
        if checkpoint is not None:
            raise InputError("--checkpoint is for --engine neural")
        return engines.create(engine_name, size=size, **engine_options), ""
    options = {"size": size, "runtime": backend or "torch", **engine_options}
    if backend == "tensorrt":  # fail before building a generator
        from engines.tensorrt_runtime import tensorrt_module

        tensorrt_module()
    try:
        if checkpoint is not None:
            return engines.create("neural", checkpoint=checkpoint, **options), ""
        import torch

        from engines.neural import NeuralEngine, NeuralEngineOptions
        from puppet.generator.config import GeneratorConfig
        from puppet.generator.model import Generator

        torch.manual_seed(0)
        generator = Generator(GeneratorConfig.published())
        return NeuralEngine(NeuralEngineOptions(checkpoint="(fresh published-config generator)", **options),
                            generator=generator), FRESH_GENERATOR_NOTE
    except ValueError as exc:  # option mistakes (a CPU device with float16, an unknown runtime...)
        raise InputError(str(exc)) from None


def bench_render(engine_name: str = "mesh", avatar: str = "ada", size: int = 512, frames: int = 200,
                 warmup: int = 10, backend: str | None = None, checkpoint: str | Path | None = None,
                 engine_options: dict[str, Any] | None = None) -> RenderBenchReport:
    """Render a moving performance (``puppet.synthetic.random_avatar_performance``) after baking.

    Neural engine: ``backend`` its runtime ("torch", "onnx", "tensorrt"), ``checkpoint`` the
    generator (None: a freshly initialised published-config one, said in the report's note),
    ``engine_options`` more ``NeuralEngineOptions`` fields (device, precision, cuda_graphs...)."""
    from puppet.avatar import load_avatar
    from puppet.synthetic import random_avatar_performance

    perf = random_avatar_performance(seconds=(frames + warmup) / 30.0 + 1.0, neutral_s=0.0)
    samples: dict[str, list[float]] = {"total": []}
    engine, note = _create_bench_engine(engine_name, size, backend, checkpoint, dict(engine_options or {}))
    peak_mb = None
    with engine:
        start = time.perf_counter()
        baked = engine.bake(load_avatar(avatar))
        bake_s = time.perf_counter() - start
        device = getattr(engine, "device", None)
        on_cuda = getattr(device, "type", None) == "cuda"
        for i in range(frames + warmup):
            if i == warmup and on_cuda:
                import torch

                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            engine.render(baked, perf.params(i))
            ms = 1e3 * (time.perf_counter() - t0)
            timing = getattr(engine, "last_timing", None)
            if i < warmup:
                continue
            samples["total"].append(ms)
            if timing is not None:
                for name, value in dataclasses.asdict(timing).items():
                    samples.setdefault(name.removesuffix("_ms"), []).append(value)
        if on_cuda:
            import torch

            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        info = dataclasses.asdict(engine.info())
    return RenderBenchReport(engine=engine_name, engine_info=info, avatar=avatar, size=size, frames=frames,
                             warmup=warmup, bake_s=bake_s,
                             stages_ms={k: Percentiles.of(v) for k, v in samples.items()},
                             backend=backend or info.get("backend", ""),
                             checkpoint=None if checkpoint is None else str(checkpoint), note=note,
                             peak_gpu_memory_mb=peak_mb)


@dataclass(frozen=True)
class PipelineBenchReport(_Report):
    """End to end through the real pipeline (decode -> track -> retarget -> render -> a sink that
    drops the frames): per-stage ms, ``fps`` delivered to the sink, capture-to-sink ``latency_ms``.
    ``live`` False: lossless, the file read as fast as the stages take it (throughput; latency then
    includes the wait in the queues between stages); True: the file paced at its frame rate with
    stale frames dropped, as the webcam (real-time latency)."""

    input: str
    frame_size: tuple[int, int]
    engine: str
    engine_options: dict[str, Any]
    size: int
    live: bool
    frames: int
    dropped: int
    stages_ms: dict[str, Percentiles]
    latency_ms: Percentiles
    fps: float
    startup_s: float
    machine: dict[str, Any] = field(default_factory=machine_info)

    def table(self) -> str:
        w, h = self.frame_size
        backend = self.engine_options.get("runtime")
        lines = self._stage_table(
            f"puppet bench pipeline: {self.input} ({w}x{h}) -> engine {self.engine}"
            f"{f' ({backend})' if backend else ''} {self.size}x{self.size}, {self.frames} frames, "
            f"{'live (paced, newest frame only)' if self.live else 'lossless (as fast as possible)'}")
        lat = self.latency_ms
        lines.append(f"end to end: {self.fps:.1f} fps; capture-to-sink latency p50 {lat.p50:.0f} ms, "
                     f"p95 {lat.p95:.0f} ms; dropped {self.dropped}; start-up {self.startup_s:.1f} s")
        return "\n".join(lines)


class _NullSink:
    """Takes every frame and keeps nothing (the pipeline measures the latency at the sink)."""

    def open(self) -> None:
        pass

    def write(self, packet) -> bool:
        return True

    def close(self) -> None:
        pass


def bench_pipeline(input: str, render: Any = None, tracking: TrackingOptions = TrackingOptions(),
                   retarget: Any = None, frames: int | None = 300, live: bool = False) -> PipelineBenchReport:
    """Run ``input`` through tracking, retargeting and ``render`` (``puppet.convert.RenderOptions``)
    into a null sink with ``puppet.pipeline.Pipeline`` (as ``puppet convert`` does) and report its
    statistics (``PipelineBenchReport``)."""
    from itertools import islice

    from puppet.avatar import load_avatar
    from puppet.convert import RenderOptions
    from puppet.pipeline import Pipeline, PipelineOptions
    from puppet.retarget import RetargetOptions
    from puppet.sources import VideoFileOptions, VideoFileSource
    from puppet.stages import RenderStage, RetargetStage, TrackStage

    render = render or RenderOptions()
    retarget = retarget or RetargetOptions()
    avatar = load_avatar(render.avatar)
    path = Path(input)
    source = VideoFileSource(path, VideoFileOptions(realtime=True)) if live and path.is_file() else open_source(input)
    with source:
        stream = source if frames is None else islice(source, frames)
        stages = [TrackStage(tracking), RetargetStage(retarget),
                  RenderStage(render.engine, render.create_engine_options(), avatar)]
        stats = Pipeline(stream, stages, _NullSink(), PipelineOptions(live=live)).run()
        if stats.frames_out == 0:
            raise InputError(f"{source.description}: no frame reached the sink")
        engine_options = {k: str(v) if isinstance(v, Path) else v for k, v in render.engine_options.items()}
        return PipelineBenchReport(
            input=source.description, frame_size=source.size, engine=render.engine, engine_options=engine_options,
            size=render.size, live=live, frames=stats.frames_out, dropped=sum(stats.dropped.values()),
            stages_ms=dict(stats.stage_ms), latency_ms=stats.latency_ms, fps=stats.fps,
            startup_s=stats.seconds - stats.streaming_s)
