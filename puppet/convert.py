"""``puppet convert`` and ``puppet render``: a performance drives an avatar into a video file.

convert: video -> tracking -> retargeting -> engine -> H.264 with the input's audio; lossless (one
output frame per input frame, same timestamps), stages on threads. render: a saved parameter file
-> retargeting -> engine -> video, timestamps from the file. Ctrl-C stops between frames and
leaves a playable file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from puppet.compose import side_by_side
import numpy as np

from puppet.interrupt import stop_on_interrupt
from puppet.params import ParamSequence, make_header, save_params
from puppet.paths import VIDEO_SUFFIXES, check_output_path, refuse_overwriting_input
from puppet.pipeline import Packet, Pipeline, PipelineOptions, PipelineStats
from puppet.retarget import RetargetOptions, Retargeter
from puppet.sources import open_source
from puppet.stages import RenderStage, RetargetStage, TrackStage
from puppet.tracking import TrackingOptions

log = logging.getLogger(__name__)

DEFAULT_AVATAR = "ada"


@dataclass(frozen=True)
class RenderOptions:
    """The avatar and how it is drawn.

    avatar: a built-in avatar name or an avatar JSON file.
    engine: "mesh" (the embedded default) or "neural" (the trained generator).
    size: output side in pixels (square avatar image).
    background: RGB in [0, 1] the engine composites the avatar over.
    engine_options: further fields of the engine's options (``engines.create``); the neural
        engine needs ``{"checkpoint": path}``.
    """

    avatar: str = DEFAULT_AVATAR
    engine: str = "mesh"
    size: int = 512
    background: tuple[float, float, float] = (0.34, 0.40, 0.47)
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 2048:
            raise ValueError(f"size must be between 64 and 2048, got {self.size}")
        from engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known: {', '.join(sorted(ENGINES))}")
        if self.engine == "neural" and not self.engine_options.get("checkpoint"):
            raise ValueError("the neural engine needs a generator checkpoint (engine_options={'checkpoint': path})")

    def create_engine_options(self) -> dict[str, Any]:
        return {"size": self.size, "background": (*self.background, 1.0), **self.engine_options}




@dataclass(frozen=True)
class ConvertJob:
    input: str
    output: Path
    render: RenderOptions = field(default_factory=RenderOptions)
    side_by_side: bool = False
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    max_frames: int | None = None
    progress: bool = True
    params_output: Path | None = None  # also save the tracked (driver) parameters here (.npz)


@dataclass(frozen=True)
class ConvertSummary:
    input: str
    output: Path
    frames: int
    stats: PipelineStats

    def describe(self) -> str:
        verb = "interrupted after" if self.stats.interrupted else "converted"
        return f"{verb} {self.frames} frames of {self.input} -> {self.output}\n{self.stats.describe()}"


class VideoSink:
    """Writes avatar frames (optionally beside the driver) with the input's timestamps, and keeps
    the tracked parameters when asked to."""

    def __init__(self, writer, with_driver: bool, total: int | None, progress: bool, keep_params: bool) -> None:
        self._writer = writer
        self._with_driver = with_driver
        self._total = total
        self._progress = progress
        self._keep_params = keep_params
        self.params: list = []

    def open(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self._total, unit="frame", desc="converting", leave=False,
                         disable=None if self._progress else True, dynamic_ncols=True)

    def write(self, packet: Packet) -> bool:
        image = packet.rendered[..., :3]  # the engine composited the avatar over its background
        if self._keep_params:
            self.params.append(packet.tracked.params)
        if self._with_driver:
            image = side_by_side(packet.frame.image, image)
        self._writer.write(np.ascontiguousarray(image), packet.t)
        self._bar.update(1)
        return True

    def close(self) -> None:
        self._bar.close()
        self._writer.close()


def _output_size(driver_size: tuple[int, int], size: int, with_driver: bool) -> tuple[int, int]:
    if not with_driver:
        return size, size
    w, h = driver_size
    return max(1, round(w * size / h)) + size, size


def convert(job: ConvertJob) -> ConvertSummary:
    """Run a conversion (see ``ConvertJob``); user mistakes raise ``PuppetError`` before any work."""
    from puppet.avatar import load_avatar
    from puppet.video_writer import VideoWriter

    output = check_output_path(job.output, VIDEO_SUFFIXES)
    params_output = check_output_path(job.params_output, (".npz",)) if job.params_output else None
    avatar = load_avatar(job.render.avatar)
    source = open_source(job.input)
    with source:
        refuse_overwriting_input(output, source.path, "video")
        size = _output_size(source.size, job.render.size, job.side_by_side)
        writer = VideoWriter.for_source(output, source.info, size=size)
        total = source.frame_count
        if job.max_frames is not None:
            total = min(total, job.max_frames) if total else job.max_frames
        frames = source if job.max_frames is None else islice(source, job.max_frames)
        stages = [
            TrackStage(job.tracking),
            RetargetStage(job.retarget),
            RenderStage(job.render.engine, job.render.create_engine_options(), avatar),
        ]
        sink = VideoSink(writer, job.side_by_side, total, job.progress, keep_params=params_output is not None)
        stats = Pipeline(frames, stages, sink, PipelineOptions(live=False)).run()
        if params_output is not None:
            header = make_header(source.fps, source.description,
                                 {"mode": job.tracking.mode, "frames": len(sink.params), "interrupted": stats.interrupted})
            save_params(params_output, ParamSequence.from_frames(sink.params, header))
    return ConvertSummary(input=source.description, output=output, frames=stats.frames_out, stats=stats)


@dataclass(frozen=True)
class RenderJob:
    params: Path
    output: Path
    render: RenderOptions = field(default_factory=RenderOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    progress: bool = True


@dataclass(frozen=True)
class RenderSummary:
    params: Path
    output: Path
    frames: int
    seconds: float
    interrupted: bool

    def describe(self) -> str:
        verb = "interrupted after" if self.interrupted else "rendered"
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return f"{verb} {self.frames} frames of {self.params} -> {self.output} ({fps:.1f} fps)"


def render_params(job: RenderJob) -> RenderSummary:
    """Drive an avatar from a saved parameter file (``puppet track`` output)."""
    import engines
    from tqdm import tqdm

    from puppet.avatar import load_avatar
    from puppet.params import load_params
    from puppet.video_writer import VideoWriter

    output = check_output_path(job.output, VIDEO_SUFFIXES)
    seq = load_params(job.params)
    avatar = load_avatar(job.render.avatar)
    fps = seq.fps or 30.0
    retargeter = Retargeter(job.retarget)
    frames = 0
    start = time.perf_counter()
    size = (job.render.size, job.render.size)
    with engines.create(job.render.engine, **job.render.create_engine_options()) as engine, \
            VideoWriter(output, size, fps) as writer, stop_on_interrupt() as stop:
        baked = engine.bake(avatar)
        for params in tqdm(seq, total=len(seq), unit="frame", desc="rendering", leave=False,
                           disable=None if job.progress else True):
            if stop.is_set():
                break
            image = engine.render(baked, retargeter.process(params)).image
            writer.write(np.ascontiguousarray(image[..., :3]), params.t)
            frames += 1
    return RenderSummary(params=job.params, output=output, frames=frames,
                         seconds=time.perf_counter() - start, interrupted=stop.interrupted)

