"""The tracking stage: a frame in, smoothed driving parameters out.

Frame -> (face tracker -> face solver) + (body tracker) -> body solver -> DriverParams -> smoother.
Face and body trackers are independent MediaPipe graphs that release the GIL, so with
``parallel=True`` the body tracker runs on a helper thread while the face runs on the caller's:
on two cores the face's ~5 ms hide under the body's ~20 ms.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from puppet.frame import Frame
from puppet.params import DriverParams
from puppet.smoothing import ParamSmoother, SmoothingOptions
from trackers.body import BodyTracker, BodyTrackerOptions
from trackers.body_solver import BodySolution, BodySolver, BodySolverOptions
from trackers.face import FaceTracker, FaceTrackerOptions
from trackers.face_solver import FaceSolution, FaceSolver, FaceSolverOptions
from trackers.observation import BodyObservation, Observation

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("face", "body", "solve", "smooth")


@dataclass(frozen=True)
class TrackingOptions:
    """Everything the tracking stage needs; the CLI builds one of these.

    mode: "full" tracks face and upper body; "face" skips the body (faster; shoulders at rest,
        camera frontal).
    parallel: run the body tracker on a second thread.
    """

    mode: Literal["full", "face"] = "full"
    parallel: bool = True
    face: FaceTrackerOptions = field(default_factory=FaceTrackerOptions)
    body: BodyTrackerOptions = field(default_factory=BodyTrackerOptions)
    face_solver: FaceSolverOptions = field(default_factory=FaceSolverOptions)
    body_solver: BodySolverOptions = field(default_factory=BodySolverOptions)
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "face"):
            raise ValueError(f"mode must be 'full' or 'face', got {self.mode!r}")


@dataclass(frozen=True)
class TrackedFrame:
    """What the tracking stage knows about one frame (for parameter files, overlays, benchmarks).

    raw: parameters straight from the solvers; params: after smoothing (what drives avatars).
    timings_ms: wall time of each stage in ``STAGES`` (face and body overlap when parallel).
    """

    t: float
    index: int
    observation: Observation
    face: FaceSolution | None
    body: BodySolution
    raw: DriverParams
    params: DriverParams
    timings_ms: dict[str, float]


def assemble_params(t: float, face: FaceSolution | None, body: BodySolution, shape_dim: int) -> DriverParams:
    """Solver outputs -> one frame of the parameter contract."""
    if face is None:
        expression = np.zeros(52, np.float32)
        gaze = np.zeros((2, 2), np.float32)
        shape = np.zeros(shape_dim, np.float32)
    else:
        expression, gaze, shape = face.expression, face.gaze, face.shape
    return DriverParams(
        t=t,
        expression=expression,
        pose=body.pose,
        camera=body.camera,
        gaze=gaze,
        shape=shape,
        face_ok=face is not None,
        body_ok=body.ok,
    )


class Tracker:
    """Frame -> TrackedFrame. One lifecycle: ``process`` / ``calibrate`` / ``reset`` / ``close``."""

    def __init__(self, options: TrackingOptions = TrackingOptions()) -> None:
        self.options = options
        self._face_tracker = FaceTracker(options.face)
        self._face_solver = FaceSolver(options.face_solver)
        self._body_tracker = BodyTracker(options.body) if options.mode == "full" else None
        self._body_solver = BodySolver(options.body_solver)
        self._smoother = ParamSmoother(options.smoothing)
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="body")
                      if options.parallel and self._body_tracker is not None else None)
        self._shape_dim = len(self._face_solver.basis.identity)

    @property
    def face_backend(self) -> str:
        return self._face_tracker.backend

    def process(self, frame: Frame) -> TrackedFrame:
        timings = dict.fromkeys(STAGES, 0.0)
        body_future: Future | None = None
        if self._pool is not None:
            body_future = self._pool.submit(self._track_body, frame)
        start = time.perf_counter()
        face_obs = self._face_tracker.process(frame)
        timings["face"] = 1e3 * (time.perf_counter() - start)
        body_obs: BodyObservation | None = None
        if body_future is not None:
            body_obs, timings["body"] = body_future.result()
        elif self._body_tracker is not None:
            body_obs, timings["body"] = self._track_body(frame)

        start = time.perf_counter()
        face = self._face_solver.solve(face_obs, frame.t, frame.size) if face_obs is not None else None
        body = self._body_solver.solve(body_obs, face.head_rotation if face is not None else None)
        raw = assemble_params(frame.t, face, body, self._shape_dim)
        timings["solve"] = 1e3 * (time.perf_counter() - start)

        start = time.perf_counter()
        params = self._smoother.process(raw)
        timings["smooth"] = 1e3 * (time.perf_counter() - start)

        observation = Observation(t=frame.t, index=frame.index, image_size=frame.size, face=face_obs, body=body_obs)
        return TrackedFrame(t=frame.t, index=frame.index, observation=observation, face=face, body=body,
                            raw=raw, params=params, timings_ms=timings)

    def calibrate(self) -> None:
        """Take the coming frames as the driver's neutral face."""
        self._face_solver.calibrate()

    def reset(self) -> None:
        """Forget everything about the current driver and scene (e.g. between clips)."""
        self._face_tracker.reset()
        if self._body_tracker is not None:
            self._body_tracker.reset()
        self._face_solver.reset()
        self._smoother.reset()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._face_tracker.close()
        if self._body_tracker is not None:
            self._body_tracker.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track_body(self, frame: Frame) -> tuple[BodyObservation | None, float]:
        start = time.perf_counter()
        obs = self._body_tracker.process(frame)
        return obs, 1e3 * (time.perf_counter() - start)

