"""Benchmarks that measure (never assert): per-stage milliseconds, p50/p95, frames per second,
with the machine and versions recorded next to the numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
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
    """Where a figure was measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": tool_versions(),
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
        lines = [header, f"machine: {self.machine['cpu']}, {self.machine['cores']} cores",
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
    """Per-frame render time of an engine after baking: ``total`` is the whole ``render`` call;
    the other stages are the engine's own breakdown when it reports one."""

    engine: str
    engine_info: dict[str, Any]
    avatar: str
    size: int
    frames: int
    warmup: int
    bake_s: float
    stages_ms: dict[str, Percentiles]
    machine: dict[str, Any] = field(default_factory=machine_info)

    @property
    def fps(self) -> float:
        return 1e3 / self.stages_ms["total"].mean

    def table(self) -> str:
        lines = self._stage_table(
            f"puppet bench render: engine {self.engine} ({self.engine_info.get('backend')}, "
            f"{self.engine_info.get('device')}), avatar {self.avatar}, {self.size}x{self.size}, "
            f"{self.frames} frames after {self.warmup} warm-up; bake {self.bake_s:.1f} s")
        lines.append(f"render: {self.fps:.1f} fps")
        return "\n".join(lines)



def bench_render(engine_name: str = "mesh", avatar: str = "ada", size: int = 512, frames: int = 200,
                 warmup: int = 10) -> RenderBenchReport:
    """Render a moving performance (``puppet.synthetic.random_avatar_performance``) after baking."""
    import engines
    from puppet.avatar import load_avatar
    from puppet.synthetic import random_avatar_performance

    perf = random_avatar_performance(seconds=(frames + warmup) / 30.0 + 1.0, neutral_s=0.0)
    samples: dict[str, list[float]] = {"total": []}
    with engines.create(engine_name, size=size) as engine:
        start = time.perf_counter()
        baked = engine.bake(load_avatar(avatar))
        bake_s = time.perf_counter() - start
        for i in range(frames + warmup):
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
        info = dataclasses.asdict(engine.info())
    return RenderBenchReport(engine=engine_name, engine_info=info, avatar=avatar, size=size, frames=frames,
                             warmup=warmup, bake_s=bake_s,
                             stages_ms={k: Percentiles.of(v) for k, v in samples.items()})
