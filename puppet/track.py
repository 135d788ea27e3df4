"""``puppet track``: any video, camera or image to a parameter file (and an optional overlay video).

A decode thread reads ahead of the tracker (bounded queue, lossless); every input frame yields one
parameter frame with the input's timestamp. Ctrl-C stops early and still writes everything tracked
so far: the parameter file, and a playable overlay video with the input's audio. The first Ctrl-C
is taken between frames (each frame is tracked, drawn and written whole, so the overlay has exactly
the frames of the parameter file); a second one raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from puppet.interrupt import stop_on_interrupt
from puppet.paths import VIDEO_SUFFIXES, check_output_path, refuse_overwriting_input
from puppet.params import DriverParams, ParamSequence, make_header, save_params
from puppet.prefetch import Prefetcher
from puppet.sources import Source, open_source
from puppet.tracking import Tracker, TrackingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackSummary:
    """What a tracking run did, for the user and for tests."""

    input: str
    output: Path
    overlay: Path | None
    frames: int
    face_frames: int
    body_frames: int
    seconds: float
    interrupted: bool
    face_backend: str
    mode: str

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def face_rate(self) -> float:
        return self.face_frames / self.frames if self.frames else 0.0

    @property
    def body_rate(self) -> float:
        return self.body_frames / self.frames if self.frames else 0.0

    def describe(self) -> str:
        lines = [
            f"{'interrupted after' if self.interrupted else 'tracked'} {self.frames} frames of {self.input} "
            f"in {self.seconds:.1f} s ({self.fps:.1f} fps, {self.mode} mode, face tracker: {self.face_backend})",
            f"face found in {100 * self.face_rate:.1f}% of frames"
            + (f", body in {100 * self.body_rate:.1f}%" if self.mode == "full" else ""),
            f"parameters: {self.output}",
        ]
        if self.overlay is not None:
            lines.append(f"overlay: {self.overlay}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TrackJob:
    """One ``puppet track`` invocation.

    input: a video file, an image or image folder, or a camera ("0", "/dev/video0").
    output: the ``.npz`` parameter file to write.
    overlay: an optional video showing landmarks, head axes, skeleton and coefficient bars.
    max_frames: stop after this many frames (cameras run until Ctrl-C otherwise).
    """

    input: str
    output: Path
    overlay: Path | None = None
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    max_frames: int | None = None
    progress: bool = True


def track(job: TrackJob) -> TrackSummary:
    """Run a tracking job; see ``TrackJob``. Raises ``PuppetError`` subclasses on user mistakes."""
    output = check_output_path(job.output, (".npz",))
    overlay_path = check_output_path(job.overlay, VIDEO_SUFFIXES) if job.overlay else None
    source = open_source(job.input)
    with source, stop_on_interrupt() as stop:
        if overlay_path is not None:
            refuse_overwriting_input(overlay_path, source.path, "overlay")
        writer = None
        if overlay_path is not None:
            from puppet.video_writer import VideoWriter

            writer = VideoWriter.for_source(overlay_path, source.info)
        try:
            with Tracker(job.tracking) as tracker:
                frames, interrupted, seconds = _run(source, tracker, writer, job, stop)
                backend = tracker.face_backend
        finally:
            if writer is not None:
                writer.close()
        header = make_header(
            fps=source.fps,
            source=source.description,
            extra={
                "mode": job.tracking.mode,
                "face_tracker": backend,
                "expression_source": job.tracking.face_solver.expression_source,
                "frames": len(frames),
                "interrupted": interrupted,
            },
        )
        save_params(output, ParamSequence.from_frames(frames, header))
    return TrackSummary(
        input=source.description,
        output=output,
        overlay=overlay_path,
        frames=len(frames),
        face_frames=sum(p.face_ok for p in frames),
        body_frames=sum(p.body_ok for p in frames),
        seconds=seconds,
        interrupted=interrupted,
        face_backend=backend,
        mode=job.tracking.mode,
    )


def _run(source: Source, tracker: Tracker, writer, job: TrackJob,
         stop: threading.Event) -> tuple[list[DriverParams], bool, float]:
    from tqdm import tqdm

    draw = None
    if writer is not None:
        from puppet.overlay import draw_overlay as draw

    total = source.frame_count
    if job.max_frames is not None:
        total = min(total, job.max_frames) if total else job.max_frames
    frames: list[DriverParams] = []
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=total, unit="frame", disable=None if job.progress else True, desc="tracking", leave=False,
               dynamic_ncols=True)
    # Live sources are read directly (the newest frame matters); files are decoded ahead.
    frames_in = iter(source) if source.is_live else Prefetcher(source, depth=8, name="decode")
    try:
        for frame in frames_in:
            tracked = tracker.process(frame)
            frames.append(tracked.params)
            if writer is not None:
                writer.write(draw(frame.image, tracked), frame.t)
            bar.update(1)
            if len(frames) % 15 == 0:
                bar.set_postfix(face=f"{100 * sum(p.face_ok for p in frames) / len(frames):.0f}%")
            if job.max_frames is not None and len(frames) >= job.max_frames:
                break
            if stop.is_set():
                interrupted = True
                log.warning("interrupted: keeping the %d frames tracked so far", len(frames))
                break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: keeping the %d frames tracked so far", len(frames))
    finally:
        bar.close()
        if isinstance(frames_in, Prefetcher):
            frames_in.close()
    return frames, interrupted, time.perf_counter() - start
