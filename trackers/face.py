"""Face tracking: ``Frame`` -> ``FaceObservation`` (478 landmarks in pixels, optional blendshapes).

Backends (``FaceTrackerOptions.backend``):

- ``"facemesh"`` (default): MediaPipe's legacy FaceMesh in video mode with refined landmarks
  (iris), bundled with mediapipe 0.10.14, works offline. When ``face_landmarker.task`` can be found
  (and ``blendshapes="auto"``), MediaPipe's blendshape network from that bundle runs on FaceMesh's
  landmarks (~0.6 ms, ``trackers.mediapipe_blendshapes.BlendshapeModel``); without it the solvers
  compute the expression from the landmarks.
- ``"landmarker"``: MediaPipe Tasks ``FaceLandmarker`` in VIDEO running mode with the 52-category
  blendshape model; needs ``face_landmarker.task`` (``puppet.assets.find_face_landmarker``).
  Timestamps are ``Frame.t`` in milliseconds, forced strictly increasing.
- ``"auto"``: the landmarker when its bundle can be found, else FaceMesh.

One subject. The landmark graph tracks ``max_faces`` faces (default 1): in video mode it takes the
face region of the next frame from this frame's landmarks, so it follows one face by itself and
runs its face detector only when it has fewer faces than ``max_faces``. Choosing WHICH face is
this module's job:

- (re)acquisition: a short-range BlazeFace detector (the one inside the landmark graphs) lists
  the faces; ``subject`` picks one ("largest", "center", "left", "right" or an index in
  left-to-right order); the landmark graph is then run on a copy of the frame in which only the
  region around that face is kept, so its own detector can only find the chosen face;
- tracking: the landmark graph runs on the whole frame; among the faces it returns, the one
  nearest the subject's previous position and size is kept (``follow_tolerance``); a bigger face
  elsewhere never takes over;
- loss: for ``reacquire_timeout`` seconds after the subject was last seen only a face within
  ``reacquire_radius`` face sizes of where it was is taken back; after that the ``subject`` rule
  chooses again among all faces.

Cost, measured here (2 CPU cores shared with other jobs, load ~3), median ms per ``process()``
call (MediaPipe plus conversions), frames 10+ of lp_d3.mp4 (512x512, one face), a still 800x400
frame with two faces, and black frames; medians of 4 runs (best run in brackets). Measured before
FaceMesh's graph was driven directly (``FaceMeshGraph``), which saves ~0.3 ms more per call:

==========  =========  ================  ===============  ==========  =================
backend     max_faces  1 face            2 faces          no face     (re)acquisition
==========  =========  ================  ===============  ==========  =================
facemesh    1          3.9 (3.6)         3.9 (3.7)        1.9 (1.6)   10.4
facemesh    2          6.6 (5.3)         7.5 (6.7)        1.7 (1.7)
landmarker  1          12.7 (9.6)        13.0 (10.3)      2.2 (1.5)   13.9
landmarker  2          12.1 (10.3)       27.5 (16.9)      2.1 (1.6)
==========  =========  ================  ===============  ==========  =================

With FaceMesh, max_faces=2 costs ~2-3 ms more on one face, because the graph's detector then
runs on every frame (fewer faces than the maximum), and a second face in view adds its landmark
pass; max_faces=1 with subject following costs the same with one or two faces in view. Frames without a face cost
only the BlazeFace pass; a (re)acquisition frame runs BlazeFace and the graph's own detector
before the landmarks. The landmarker (landmarks + 52 blendshapes) alone exceeds the project's
face budget (tracking + solving <= 8 ms/frame): FaceMesh with max_faces=1 is the default and the
landmarker is opt-in ("landmarker", or "auto" to use it whenever its bundle is installed).

``FaceObservation.score``: neither MediaPipe graph outputs its per-frame face-presence score (the
landmark presence fields are empty); they only drop faces below ``min_tracking_confidence``. The
score reported is the face detector's confidence when the subject was (re)acquired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from puppet.assets import FACE_LANDMARKER_ENV, FACE_LANDMARKER_FILE, cache_dir, find_face_landmarker
from puppet.errors import AssetError
from puppet.frame import Frame
from trackers.mediapipe_blendshapes import BlendshapeModel, expression_from_categories
from trackers.observation import NUM_FACE_LANDMARKS, FaceObservation

logger = logging.getLogger(__name__)

BackendName = Literal["auto", "facemesh", "landmarker"]
SubjectRule = Literal["largest", "center", "left", "right"]
SUBJECT_RULES: tuple[str, ...] = ("largest", "center", "left", "right")


@dataclass(frozen=True)
class FaceTrackerOptions:
    """How faces are found and which one is followed."""

    backend: BackendName = "facemesh"
    # face_landmarker.task for the landmarker backend; else $PUPPET_FACE_LANDMARKER, then the cache.
    face_landmarker: str | None = None
    # "auto": with FaceMesh, run MediaPipe's blendshape network on the landmarks when the
    # face_landmarker.task bundle can be found; "off": never (the built-in solver does expressions).
    blendshapes: Literal["auto", "off"] = "auto"
    # Faces the landmark graph tracks at once. 1 is cheapest: >1 runs the face detector on every
    # frame that has fewer faces than this.
    max_faces: int = 1
    min_detection_confidence: float = 0.5  # face detector score to start tracking a face
    min_tracking_confidence: float = 0.5  # landmark presence score to keep tracking it
    # Who to follow when several faces are visible: a rule, or an index in left-to-right order.
    subject: SubjectRule | int = "largest"
    # Largest frame-to-frame change still taken for the same face: centre displacement in face
    # sizes plus |log| of the size ratio.
    follow_tolerance: float = 0.5
    # After a loss, only a face within this many face sizes of the last position is taken back...
    reacquire_radius: float = 1.0
    # ...for this many seconds; then ``subject`` chooses again among all faces.
    reacquire_timeout: float = 1.0
    # Side of the square kept around the chosen face when (re)acquiring, in detector box sizes.
    search_margin: float = 2.0

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "facemesh", "landmarker"):
            raise ValueError(f"backend must be auto, facemesh or landmarker, got {self.backend!r}")
        if self.blendshapes not in ("auto", "off"):
            raise ValueError(f"blendshapes must be auto or off, got {self.blendshapes!r}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if isinstance(self.subject, bool) or not (
            self.subject in SUBJECT_RULES or (isinstance(self.subject, int) and self.subject >= 0)
        ):
            raise ValueError(f"subject must be one of {SUBJECT_RULES} or an index >= 0, got {self.subject!r}")
        for name in ("follow_tolerance", "reacquire_radius", "search_margin"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.reacquire_timeout < 0:
            raise ValueError(f"reacquire_timeout must be >= 0, got {self.reacquire_timeout}")


# ---------------------------------------------------------------------------------------------
# Pure functions


def video_timestamp_ms(t: float, previous_ms: int | None) -> int:
    """Capture time ``t`` (s) -> integer milliseconds, strictly after ``previous_ms``.

    MediaPipe's VIDEO mode rejects a timestamp that does not increase; two frames less than 1 ms
    apart (or a source that repeats ``t``) get ``previous_ms + 1``.
    """
    ms = int(round(t * 1000.0))
    if previous_ms is not None and ms <= previous_ms:
        ms = previous_ms + 1
    return ms


def select_subject(
    centers: np.ndarray, sizes: np.ndarray, rule: SubjectRule | int, image_size: tuple[int, int]
) -> int | None:
    """Index of the face ``rule`` chooses, or None (no face, or index beyond the faces).

    centers: (N, 2) pixels; sizes: (N,) pixels; image_size: (width, height).
    """
    n = len(centers)
    assert centers.shape == (n, 2) and sizes.shape == (n,), (centers.shape, sizes.shape)
    if n == 0:
        return None
    if isinstance(rule, int):
        order = np.argsort(centers[:, 0], kind="stable")
        return int(order[rule]) if rule < n else None
    if rule == "largest":
        return int(np.argmax(sizes))
    if rule == "left":
        return int(np.argmin(centers[:, 0]))
    if rule == "right":
        return int(np.argmax(centers[:, 0]))
    if rule == "center":
        middle = np.array(image_size, np.float64) / 2.0
        return int(np.argmin(np.linalg.norm(centers - middle, axis=1)))
    raise ValueError(f"unknown subject rule {rule!r}")


def follow_cost(centers: np.ndarray, sizes: np.ndarray, center: np.ndarray, size: float) -> np.ndarray:
    """How far each face is from the previous subject: (N,) = |dc| / size + |log(size_i / size)|.

    centers: (N, 2) px; sizes: (N,) px; center: (2,) px; size: px (> 0).
    """
    return np.linalg.norm(centers - center, axis=1) / size + np.abs(np.log(np.maximum(sizes, 1e-6) / size))


def landmark_centers_sizes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 478, 3) pixel landmarks -> centres (K, 2) (mean of x, y) and sizes (K,) (bbox diagonal).

    The same definitions as ``FaceObservation.center`` / ``.size``.
    """
    xy = landmarks[..., :2]
    return xy.mean(axis=1), np.linalg.norm(xy.max(axis=1) - xy.min(axis=1), axis=1)


def keep_region(image: np.ndarray, center: np.ndarray, side: float, fill: int = 127) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) with everything outside a ``side``-pixel square at ``center``
    set to ``fill``: the only face a detector can then find is the one inside."""
    h, w = image.shape[:2]
    half = side / 2.0
    x0, x1 = max(0, int(center[0] - half)), min(w, int(np.ceil(center[0] + half)))
    y0, y1 = max(0, int(center[1] - half)), min(h, int(np.ceil(center[1] + half)))
    out = np.full_like(image, fill)
    out[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return out


# Wire layout of one NormalizedLandmark holding only x, y, z (proto2, all three set): field tag,
# length 15, then tag+float for x, y, z. Reading the serialised list with numpy is ~10x faster than
# a Python loop over 478 protobuf messages (0.05 vs 0.45 ms).
_LANDMARK_BYTES = 17
_LANDMARK_TAG_COLUMNS = np.array([0, 1, 2, 7, 12])
_LANDMARK_TAGS = np.array([0x0A, 0x0F, 0x0D, 0x15, 0x1D], np.uint8)
_LANDMARK_FLOAT_COLUMNS = np.array([3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16])  # x, y, z little-endian


def landmarks_from_wire(raw: bytes) -> np.ndarray | None:
    """A serialised ``NormalizedLandmarkList`` whose landmarks carry exactly x, y, z -> float32
    (K, 3); None when the bytes have any other layout (other fields set, packed differently)."""
    n = len(raw) // _LANDMARK_BYTES
    if n == 0 or len(raw) != _LANDMARK_BYTES * n:
        return None
    bytes_ = np.frombuffer(raw, np.uint8).reshape(n, _LANDMARK_BYTES)
    if not (bytes_[:, _LANDMARK_TAG_COLUMNS] == _LANDMARK_TAGS).all():
        return None
    return bytes_.take(_LANDMARK_FLOAT_COLUMNS, axis=1).view("<f4").astype(np.float32, copy=False)


def normalized_landmarks_array(landmark_list) -> np.ndarray:
    """A ``NormalizedLandmarkList`` protobuf -> float32 (K, 3) normalised x, y, z."""
    if len(landmark_list.landmark):
        points = landmarks_from_wire(landmark_list.SerializeToString())
        if points is not None:
            return points
    return np.array([(p.x, p.y, p.z) for p in landmark_list.landmark], np.float32).reshape(-1, 3)


def serialized_landmarks_array(raw: bytes) -> np.ndarray:
    """A serialised ``NormalizedLandmarkList`` -> float32 (K, 3): read with numpy when it has the
    usual layout, else parsed (the values are the same either way)."""
    points = landmarks_from_wire(raw)
    if points is not None:
        return points
    from mediapipe.framework.formats import landmark_pb2

    return normalized_landmarks_array(landmark_pb2.NormalizedLandmarkList.FromString(raw))


# ---------------------------------------------------------------------------------------------
# Landmark backends: image -> faces in normalised coordinates


class _LandmarkBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (H, W, 3) RGB -> normalised landmarks (K, 478, 3) and blendshapes (K, 52) or None."""

    def reset(self) -> None: ...

    def close(self) -> None: ...


class FaceMeshGraph:
    """Runs a legacy ``FaceMesh`` solution's graph per frame without ``SolutionBase.process``.

    Why: in mediapipe 0.10.14 ``process`` costs ~0.5 ms per frame on top of the graph: it builds a
    new namedtuple class on every call (with an ``eval``), looks its packet creator and getter up
    by name, and parses every output landmark list into protobuf messages, which we then only
    serialise again to read them with numpy. This makes the same graph calls as ``process`` (an
    ``Image`` packet in SRGB, copied when the array is writeable; the same simulated 30 fps
    timestamp, kept in the solution; ``wait_until_idle``) and reads the landmark lists straight
    from their serialised bytes. It reads fields private to ``SolutionBase`` (``_graph``, ``_graph_outputs``,
    ``_simulated_timestamp`` and the stream type tables), so ``attach`` checks them and gives None
    when they are not what 0.10.14 has: the caller then keeps the public ``process``. ``reset``
    and ``close`` stay the solution's own.
    """

    _INPUT = "image"
    _OUTPUT = "multi_face_landmarks"
    _ELEMENT_TYPE = "mediapipe.NormalizedLandmarkList"

    def __init__(self, mesh) -> None:
        from mediapipe.python._framework_bindings import _packet_creator, _packet_getter, image_frame

        self._mesh = mesh
        self._create_image = _packet_creator._create_image_from_pixel_data
        self._srgb = image_frame.ImageFormat.SRGB
        self._vector_size = _packet_getter._get_proto_vector_size
        self._element_type = _packet_getter._get_proto_vector_element_type_name
        self._serialized_list = _packet_getter._get_serialized_proto_list

    @classmethod
    def attach(cls, mesh) -> FaceMeshGraph | None:
        """The direct path for ``mesh`` (a ``face_mesh.FaceMesh``), or None when its internals are
        not the ones this class was written against."""
        try:
            from mediapipe.python.solution_base import PacketDataType

            ok = (isinstance(mesh._graph_outputs, dict) and isinstance(mesh._simulated_timestamp, int)
                  and mesh._graph is not None
                  and mesh._input_stream_type_info == {cls._INPUT: PacketDataType.IMAGE}
                  and mesh._output_stream_type_info == {cls._OUTPUT: PacketDataType.PROTO_LIST})
            graph = cls(mesh) if ok else None
        except (AttributeError, ImportError) as error:
            logger.debug("FaceMesh internals differ (%s): using FaceMesh.process", error)
            return None
        if graph is None:
            logger.debug("FaceMesh streams differ: using FaceMesh.process")
        return graph

    def process(self, image: np.ndarray) -> list[np.ndarray]:
        """uint8 (H, W, 3) RGB, C-contiguous -> each face's normalised landmarks, float32 (478, 3)."""
        mesh = self._mesh
        if mesh._graph is None:
            raise ValueError("the FaceMesh graph is closed")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("Input image must contain three channel rgb data.")
        mesh._graph_outputs.clear()
        mesh._simulated_timestamp += 33333
        packet = self._create_image(self._srgb, image, bool(image.flags.writeable))
        mesh._graph.add_packet_to_input_stream(stream=self._INPUT, packet=packet.at(mesh._simulated_timestamp))
        mesh._graph.wait_until_idle()
        output = mesh._graph_outputs.get(self._OUTPUT)
        if output is None or output.is_empty() or self._vector_size(output) == 0:
            return []
        if self._element_type(output) != self._ELEMENT_TYPE:  # not seen in 0.10.14: the public getter
            from mediapipe.python import packet_getter

            return [normalized_landmarks_array(f) for f in packet_getter.get_proto_list(output)]
        return [serialized_landmarks_array(raw) for raw in self._serialized_list(output)]


class _FaceMeshBackend:
    name = "facemesh"

    def __init__(self, options: FaceTrackerOptions) -> None:
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=options.max_faces,
            refine_landmarks=True,
            min_detection_confidence=options.min_detection_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
        )
        self._graph = FaceMeshGraph.attach(self._mesh)

    def detect(self, image: np.ndarray, t: float) -> tuple[np.ndarray, None]:
        if self._graph is not None:
            faces = self._graph.process(image)
        else:
            faces = [normalized_landmarks_array(f) for f in self._mesh.process(image).multi_face_landmarks or []]
        if not faces:
            return np.zeros((0, NUM_FACE_LANDMARKS, 3), np.float32), None
        return np.stack(faces), None

    def reset(self) -> None:
        self._mesh.reset()

    def close(self) -> None:
        self._mesh.close()


class _LandmarkerBackend:
    name = "landmarker"

    def __init__(self, options: FaceTrackerOptions, model: Path) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self._task_options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=options.max_faces,
            min_face_detection_confidence=options.min_detection_confidence,
            min_face_presence_confidence=options.min_tracking_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
            output_face_blendshapes=True,
        )
        self._landmarker_class = vision.FaceLandmarker
        self._landmarker = self._landmarker_class.create_from_options(self._task_options)
        self._last_ms: int | None = None

    def detect(self, image: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray | None]:
        self._last_ms = video_timestamp_ms(t, self._last_ms)
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image)
        result = self._landmarker.detect_for_video(mp_image, self._last_ms)
        if not result.face_landmarks:
            return np.zeros((0, NUM_FACE_LANDMARKS, 3), np.float32), None
        landmarks = np.array([[(p.x, p.y, p.z) for p in face] for face in result.face_landmarks], np.float32)
        expressions = np.stack([expression_from_categories(c) for c in result.face_blendshapes])
        return landmarks, expressions

    def reset(self) -> None:
        """A new graph: the Tasks API has no reset, and a new run may restart its timestamps."""
        self._landmarker.close()
        self._landmarker = self._landmarker_class.create_from_options(self._task_options)
        self._last_ms = None

    def close(self) -> None:
        self._landmarker.close()


def resolve_backend(options: FaceTrackerOptions) -> tuple[Literal["facemesh", "landmarker"], Path | None]:
    """The backend ``options`` ask for and the landmarker bundle it uses (None for FaceMesh)."""
    if options.backend == "facemesh":
        return "facemesh", None
    model = find_face_landmarker(options.face_landmarker)
    if model is not None:
        return "landmarker", model
    if options.backend == "landmarker":
        raise AssetError(
            f"the landmarker backend needs MediaPipe's {FACE_LANDMARKER_FILE}: pass its path, set "
            f"${FACE_LANDMARKER_ENV}, or put it in {cache_dir()}"
        )
    return "facemesh", None


# ---------------------------------------------------------------------------------------------
# The tracker


class FaceTracker:
    """Frames in, one subject's face out. ``process`` / ``reset`` / ``close``, or ``with``."""

    def __init__(self, options: FaceTrackerOptions = FaceTrackerOptions()) -> None:
        from mediapipe.python.solutions import face_detection

        self.options = options
        name, model = resolve_backend(options)
        self._backend: _LandmarkBackend = (
            _LandmarkerBackend(options, model) if name == "landmarker" else _FaceMeshBackend(options)
        )
        self._blendshape_model: BlendshapeModel | None = None
        if name == "facemesh" and options.blendshapes == "auto":
            bundle = find_face_landmarker(options.face_landmarker)
            if bundle is not None:
                self._blendshape_model = BlendshapeModel(bundle)
        # Short-range BlazeFace: the detector inside both landmark graphs, used here to list faces.
        self._finder = face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=options.min_detection_confidence
        )
        self._closed = False
        self._clear_subject()
        logger.info("face tracker: backend %s%s, max_faces %d, subject %r", name,
                    f" ({model})" if model else "", options.max_faces, options.subject)

    @property
    def backend(self) -> str:
        """The backend in use ("facemesh" or "landmarker"; "auto" resolved)."""
        return self._backend.name

    @property
    def computes_blendshapes(self) -> bool:
        """Whether observations carry MediaPipe's blendshapes."""
        return self._backend.name == "landmarker" or self._blendshape_model is not None

    @property
    def tracking(self) -> bool:
        """Whether the subject was found in the last processed frame."""
        return self._tracking

    def process(self, frame: Frame) -> FaceObservation | None:
        """The subject's face in ``frame``, or None when it is not visible."""
        if self._closed:
            raise RuntimeError("FaceTracker is closed")
        image = np.ascontiguousarray(frame.image)
        if self._tracking:
            face = self._follow(image, frame.t)
            if face is not None:
                return face
            self._tracking = False
            logger.info("face lost at t=%.3f s", frame.t)
        face = self._acquire(image, frame.t)
        if face is not None:
            self._tracking = True
            logger.info("face acquired at t=%.3f s: centre (%.0f, %.0f) px, size %.0f px",
                        frame.t, *face.center, face.size)
        return face

    def reset(self) -> None:
        """Forget the subject and the graphs' state (a new, unrelated stream follows)."""
        if self._closed:
            raise RuntimeError("FaceTracker is closed")
        self._backend.reset()
        self._clear_subject()

    def close(self) -> None:
        """Release MediaPipe's graphs; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._backend.close()
        self._finder.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _clear_subject(self) -> None:
        self._tracking = False
        self._last: FaceObservation | None = None
        self._last_seen: float | None = None
        self._score = 0.0
        self._stale = False  # the graph holds faces we rejected: reset it before acquiring

    def _landmarks(self, image: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixel landmarks (K, 478, 3) and blendshapes (K, 52) or None of the graph's faces."""
        normalized, expressions = self._backend.detect(image, t)
        assert normalized.shape[1:] == (NUM_FACE_LANDMARKS, 3), normalized.shape
        h, w = image.shape[:2]
        return normalized * np.array([w, h, w], np.float32), expressions

    def _observe(self, landmarks: np.ndarray, expressions: np.ndarray | None, k: int, t: float) -> FaceObservation:
        points = np.ascontiguousarray(landmarks[k], dtype=np.float32)
        if expressions is not None:
            blendshapes = expressions[k].astype(np.float32)
        elif self._blendshape_model is not None:
            blendshapes = self._blendshape_model.predict(points)
        else:
            blendshapes = None
        face = FaceObservation(landmarks=points, score=self._score, blendshapes=blendshapes)
        self._last, self._last_seen = face, t
        return face

    def _follow(self, image: np.ndarray, t: float) -> FaceObservation | None:
        """Track on the whole frame; keep the face nearest the previous subject."""
        assert self._last is not None
        landmarks, expressions = self._landmarks(image, t)
        if len(landmarks) == 0:
            return None
        centers, sizes = landmark_centers_sizes(landmarks)
        cost = follow_cost(centers, sizes, self._last.center, self._last.size)
        k = int(np.argmin(cost))
        if cost[k] > self.options.follow_tolerance:
            self._stale = True
            logger.debug("nearest face moved by %.2f (> %.2f): not the subject", cost[k], self.options.follow_tolerance)
            return None
        return self._observe(landmarks, expressions, k, t)

    def _find_faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BlazeFace boxes -> centres (N, 2) px, sizes (N,) px (box diagonal), scores (N,)."""
        h, w = image.shape[:2]
        detections = self._finder.process(image).detections or []
        centers = np.zeros((len(detections), 2))
        sizes = np.zeros(len(detections))
        scores = np.zeros(len(detections))
        for i, d in enumerate(detections):
            box = d.location_data.relative_bounding_box
            centers[i] = ((box.xmin + box.width / 2) * w, (box.ymin + box.height / 2) * h)
            sizes[i] = np.hypot(box.width * w, box.height * h)
            scores[i] = d.score[0]
        return centers, sizes, scores

    def _acquire(self, image: np.ndarray, t: float) -> FaceObservation | None:
        """Choose a face (the lost subject if it is back in time, else by rule) and lock onto it."""
        centers, sizes, scores = self._find_faces(image)
        if len(centers) == 0:
            return None
        opts = self.options
        last = self._last
        if last is not None and self._last_seen is not None and t - self._last_seen <= opts.reacquire_timeout:
            distance = np.linalg.norm(centers - last.center, axis=1) / last.size
            k = int(np.argmin(distance))
            if distance[k] > opts.reacquire_radius:
                return None
        else:
            k = select_subject(centers, sizes, opts.subject, (image.shape[1], image.shape[0]))
            if k is None:
                return None
        side = opts.search_margin * sizes[k] / np.sqrt(2.0)
        view = image if len(centers) == 1 else keep_region(image, centers[k], side)
        if self._stale:
            logger.debug("resetting the landmark graph before re-acquisition")
            self._backend.reset()
            self._stale = False
        landmarks, expressions = self._landmarks(view, t)
        if len(landmarks) == 0:
            return None
        found_centers, _ = landmark_centers_sizes(landmarks)
        offset = np.linalg.norm(found_centers - centers[k], axis=1)
        j = int(np.argmin(offset))
        if offset[j] > 0.5 * sizes[k]:
            self._stale = True
            return None
        self._score = float(scores[k])
        return self._observe(landmarks, expressions, j, t)
