"""Face tracker on real media: landmarks, loss and re-detection, one subject among several faces,
the landmarker's blendshapes and timestamps, backend resolution, and the landmark tables."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from puppet.contract import ARKIT_NAMES, MEDIAPIPE_BLENDSHAPE_NAMES, Blendshape
from puppet.errors import AssetError
from puppet.frame import Frame
from trackers import face_landmarks as fl
from trackers.face import (
    FaceMeshGraph,
    FaceTracker,
    FaceTrackerOptions,
    follow_cost,
    keep_region,
    landmarks_from_wire,
    normalized_landmarks_array,
    select_subject,
    serialized_landmarks_array,
    video_timestamp_ms,
)
from trackers.face_landmarks import FaceLandmark as FL
from trackers.mediapipe_blendshapes import contract_expression, expression_from_categories

# --------------------------------------------------------------------------------------------
# Helpers


def read_frames(path: Path, count: int, start: int = 0) -> list[Frame]:
    """Frames ``start .. start+count-1`` of a video, with their real timestamps."""
    frames = []
    with av.open(str(path)) as container:
        for i, f in enumerate(container.decode(video=0)):
            if i >= start + count:
                break
            if i >= start:
                frames.append(Frame(f.to_ndarray(format="rgb24"), float(f.time), i))
    return frames


def still(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# Square crops around the faces of two stills (boxes measured with FaceMesh: lp_s0's face spans
# x 276-362, y 82-188 px; lp_s1's x 365-698, y 352-733 px).
CROPS = {"lp_s0.jpg": (199, 20, 439, 260), "lp_s1.jpg": (151, 162, 911, 922)}


@pytest.fixture(scope="module")
def two_faces(media_dir: Path):
    """``compose(size_a, size_b, ...)`` -> 800x400 frame: face A (lp_s0) centred in the left half,
    face B (lp_s1) in the right half, each a square of the given side (0 hides it)."""
    tiles = {name: Image.open(media_dir / "images" / name).convert("RGB").crop(box) for name, box in CROPS.items()}

    def compose(size_a: int, size_b: int, centre_a: int = 200, centre_b: int = 600) -> np.ndarray:
        canvas = np.full((400, 800, 3), 90, np.uint8)
        for name, side, cx in (("lp_s0.jpg", size_a, centre_a), ("lp_s1.jpg", size_b, centre_b)):
            if side:
                y, x = (400 - side) // 2, cx - side // 2
                canvas[y:y + side, x:x + side] = np.asarray(tiles[name].resize((side, side)))
        return canvas

    return compose


def run(tracker: FaceTracker, images, t0: float = 0.0, fps: float = 30.0):
    return [tracker.process(Frame(img, t0 + i / fps, i)) for i, img in enumerate(images)]


@pytest.fixture(scope="module")
def d3_frames(face_video: Path) -> list[Frame]:
    return read_frames(face_video, 30)


@pytest.fixture(scope="module")
def d0_landmarker_faces(media_dir: Path, face_landmarker_task: Path):
    """60 frames of lp_d0 (talking: the mouth opens and closes) through the landmarker backend."""
    path = media_dir / "video" / "lp_d0.mp4"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    options = FaceTrackerOptions(backend="landmarker", face_landmarker=str(face_landmarker_task))
    with FaceTracker(options) as tracker:
        return [tracker.process(f) for f in read_frames(path, 60)]


def d0_landmarks(faces):
    """The tracked faces, all of them found."""
    found = [f for f in faces if f is not None]
    assert len(found) == len(faces)
    return found


# --------------------------------------------------------------------------------------------
# Landmark tables


def test_landmark_tables_match_mediapipe_topology():
    from mediapipe.python.solutions import face_mesh_connections as c

    def vertices(edges):
        return {i for e in edges for i in e}

    assert set(fl.RIGHT_EYE_UPPER_LID + fl.RIGHT_EYE_LOWER_LID) == vertices(c.FACEMESH_RIGHT_EYE)
    assert set(fl.LEFT_EYE_UPPER_LID + fl.LEFT_EYE_LOWER_LID) == vertices(c.FACEMESH_LEFT_EYE)
    assert set(fl.RIGHT_BROW_UPPER + fl.RIGHT_BROW_LOWER) == vertices(c.FACEMESH_RIGHT_EYEBROW)
    assert set(fl.LEFT_BROW_UPPER + fl.LEFT_BROW_LOWER) == vertices(c.FACEMESH_LEFT_EYEBROW)
    assert set(fl.RIGHT_IRIS[1:]) == vertices(c.FACEMESH_RIGHT_IRIS)
    assert set(fl.LEFT_IRIS[1:]) == vertices(c.FACEMESH_LEFT_IRIS)
    lips = fl.OUTER_LIP_UPPER + fl.OUTER_LIP_LOWER + fl.INNER_LIP_UPPER + fl.INNER_LIP_LOWER
    assert set(lips) == vertices(c.FACEMESH_LIPS)
    assert set(fl.FACE_OVAL) == vertices(c.FACEMESH_FACE_OVAL) and len(fl.FACE_OVAL) == 36
    # Consecutive points of each contour are mesh edges (the order is a real path).
    for contour, edges in ((fl.FACE_OVAL + fl.FACE_OVAL[:1], c.FACEMESH_FACE_OVAL),
                           (fl.RIGHT_EYE_UPPER_LID, c.FACEMESH_RIGHT_EYE), (fl.LEFT_EYE_LOWER_LID, c.FACEMESH_LEFT_EYE),
                           (fl.INNER_LIP_UPPER, c.FACEMESH_LIPS), (fl.OUTER_LIP_LOWER, c.FACEMESH_LIPS)):
        undirected = edges | {(b, a) for a, b in edges}
        assert all((a, b) in undirected for a, b in zip(contour, contour[1:])), contour
    assert all(0 <= i < 478 for i in fl.RIGID) and len(set(fl.RIGID)) == len(fl.RIGID)
    assert not set(fl.RIGID) & set(lips + fl.RIGHT_BROW_UPPER + fl.LEFT_BROW_UPPER)


def test_landmark_sides_and_layout_on_a_face(media_dir: Path):
    """LEFT = the subject's left = image right in an unmirrored frontal photo."""
    with FaceTracker() as tracker:
        face = tracker.process(Frame(still(media_dir / "images" / "lp_s1.jpg"), 0.0, 0))
    assert face is not None
    p = face.landmarks
    for right, left in fl.MIRROR_PAIRS:
        assert p[left, 0] > p[right, 0], (right.name, left.name)
    assert p[FL.LEFT_IRIS_CENTER, 0] > p[FL.RIGHT_IRIS_CENTER, 0]
    # Top to bottom (y grows downward).
    assert p[FL.FOREHEAD_TOP, 1] < p[FL.NOSE_BRIDGE, 1] < p[FL.NOSE_TIP, 1] < p[FL.UPPER_LIP_TOP, 1] < p[FL.CHIN, 1]
    assert p[FL.UPPER_LIP_INNER, 1] <= p[FL.LOWER_LIP_INNER, 1] < p[FL.LOWER_LIP_BOTTOM, 1]
    for upper, lower in ((FL.RIGHT_EYE_UPPER, FL.RIGHT_EYE_LOWER), (FL.LEFT_EYE_UPPER, FL.LEFT_EYE_LOWER)):
        assert p[upper, 1] < p[lower, 1]
    assert p[FL.RIGHT_BROW_MIDDLE, 1] < p[FL.RIGHT_EYE_UPPER, 1]
    assert p[FL.LEFT_BROW_MIDDLE, 1] < p[FL.LEFT_EYE_UPPER, 1]
    # Irises lie between their eye corners.
    for iris, a, b in ((FL.RIGHT_IRIS_CENTER, FL.RIGHT_EYE_OUTER, FL.RIGHT_EYE_INNER),
                       (FL.LEFT_IRIS_CENTER, FL.LEFT_EYE_INNER, FL.LEFT_EYE_OUTER)):
        assert p[a, 0] < p[iris, 0] < p[b, 0]


def test_rigid_landmarks_move_less_than_the_mouth(d0_landmarker_faces):
    """After aligning each frame on RIGID (2D similarity), the rigid points scatter far less than
    the lips over a talking clip."""
    faces = [f.landmarks[:, :2].astype(np.float64) for f in d0_landmarks(d0_landmarker_faces)]
    ref = faces[0]
    rigid = list(fl.RIGID)
    aligned = []
    for x in faces:
        a, b = x[rigid] - x[rigid].mean(0), ref[rigid] - ref[rigid].mean(0)
        u, s, vt = np.linalg.svd(a.T @ b)
        d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
        rot = u @ d @ vt
        scale = (s * np.diag(d)).sum() / (a**2).sum()
        aligned.append((x - x[rigid].mean(0)) * scale @ rot + ref[rigid].mean(0))
    spread = np.linalg.norm(np.stack(aligned) - np.mean(aligned, axis=0), axis=2).mean(axis=0)
    lips = list(fl.INNER_LIP_LOWER + fl.OUTER_LIP_LOWER)
    assert spread[rigid].mean() * 3 < spread[lips].mean(), (spread[rigid].mean(), spread[lips].mean())


# --------------------------------------------------------------------------------------------
# Detection on real images and video


def test_detects_478_landmarks_on_a_face_image(face_image: Path):
    image = still(face_image)
    h, w = image.shape[:2]
    with FaceTracker() as tracker:
        face = tracker.process(Frame(image, 0.0, 0))
        assert tracker.backend == "facemesh" and tracker.tracking
    assert face is not None
    assert face.landmarks.shape == (478, 3) and face.landmarks.dtype == np.float32
    assert face.blendshapes is None and 0.5 <= face.score <= 1.0
    xy = face.landmarks[:, :2]
    assert (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
    # lp_s0 (600x704 painting): the face spans about x 276-362, y 82-188 px.
    nose = face.landmarks[FL.NOSE_TIP, :2]
    assert 300 < nose[0] < 340 and 120 < nose[1] < 170, nose
    assert 100 < face.size < 180


def test_tracks_video_frames_in_pixels(d3_frames):
    with FaceTracker() as tracker:
        faces = [tracker.process(f) for f in d3_frames]
    assert all(f is not None for f in faces)
    w, h = d3_frames[0].size
    for f in faces:
        xy = f.landmarks[:, :2]
        assert (xy > 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
        lo, hi = xy.min(0), xy.max(0)
        nose = f.landmarks[FL.NOSE_TIP, :2]
        # Nose tip near the middle of the face box (a close-up, roughly frontal).
        assert np.all(np.abs(nose - (lo + hi) / 2) < 0.2 * (hi - lo)), nose
        # z is scaled like x: the face's depth range is a fraction of its width, not of 1.
        depth, width = np.ptp(f.landmarks[:, 2]), hi[0] - lo[0]
        assert 0.2 * width < depth < 1.5 * width
    # Tracking is smooth: the nose moves a few pixels per frame, not across the face.
    noses = np.array([f.landmarks[FL.NOSE_TIP, :2] for f in faces])
    assert np.linalg.norm(np.diff(noses, axis=0), axis=1).max() < 0.1 * faces[0].size



def test_landmarks_read_from_the_wire_match_the_protobuf_fields():
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(1)
    points = rng.uniform(-1.5, 1.5, (478, 3)).astype(np.float32)
    points[0] = 0.0  # zeros are still written (proto2 fields that are set)
    message = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in points:
        message.landmark.add(x=x, y=y, z=z)
    raw = message.SerializeToString()
    for decoded in (landmarks_from_wire(raw), serialized_landmarks_array(raw), normalized_landmarks_array(message)):
        assert decoded.dtype == np.float32 and np.array_equal(decoded, points)
    # Another layout (visibility set on one landmark) is not misread: it is parsed instead.
    message.landmark[5].visibility = 0.5
    raw = message.SerializeToString()
    assert landmarks_from_wire(raw) is None
    assert np.array_equal(serialized_landmarks_array(raw), points)
    assert np.array_equal(normalized_landmarks_array(message), points)
    assert landmarks_from_wire(raw[:-1]) is None and landmarks_from_wire(b"") is None
    assert normalized_landmarks_array(landmark_pb2.NormalizedLandmarkList()).shape == (0, 3)


def test_direct_facemesh_graph_matches_the_public_process(d3_frames):
    """The direct graph path (mediapipe 0.10.14) gives FaceMesh.process's landmarks, bit for bit."""
    from mediapipe.python.solutions import face_mesh

    options = dict(static_image_mode=False, max_num_faces=1, refine_landmarks=True)
    with face_mesh.FaceMesh(**options) as public, face_mesh.FaceMesh(**options) as direct_mesh:
        direct = FaceMeshGraph.attach(direct_mesh)
        assert direct is not None, "mediapipe's SolutionBase internals changed: the tracker falls back"
        blank = np.zeros((256, 256, 3), np.uint8)
        for image in [f.image for f in d3_frames[:6]] + [blank] + [f.image for f in d3_frames[6:9]]:
            image = np.ascontiguousarray(image)
            expected = [normalized_landmarks_array(f) for f in public.process(image).multi_face_landmarks or []]
            got = direct.process(image)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                assert a.shape == (478, 3) and np.array_equal(a, b)
        assert public._simulated_timestamp == direct_mesh._simulated_timestamp
        direct_mesh.reset()  # the solution's own reset still applies to the direct path
        assert len(direct.process(np.ascontiguousarray(d3_frames[0].image))) == 1
    assert FaceMeshGraph.attach(object()) is None  # not a SolutionBase: the public path is kept


def test_tracker_uses_the_direct_facemesh_graph():
    with FaceTracker(FaceTrackerOptions(backend="facemesh")) as tracker:
        assert tracker._backend._graph is not None

def test_no_face_gives_none():
    rng = np.random.default_rng(0)
    images = [np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 200, np.uint8),
              rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)]
    with FaceTracker() as tracker:
        assert run(tracker, images) == [None, None, None]
        assert not tracker.tracking


def test_redetects_after_the_face_is_lost(d3_frames, caplog):
    caplog.set_level(logging.INFO, logger="trackers.face")
    rng = np.random.default_rng(1)
    shape = d3_frames[0].image.shape
    gap = [np.zeros(shape, np.uint8), rng.integers(0, 256, shape, dtype=np.uint8), np.zeros(shape, np.uint8),
           rng.integers(0, 256, shape, dtype=np.uint8)]
    images = [f.image for f in d3_frames[:8]] + gap + [f.image for f in d3_frames[12:22]]
    with FaceTracker() as tracker:
        faces = run(tracker, images)
    assert all(f is not None for f in faces[:8])
    assert all(f is None for f in faces[8:12])
    assert all(f is not None for f in faces[12:]), [f is not None for f in faces[12:]]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("face acquired" in m for m in messages) == 2 and sum("face lost" in m for m in messages) == 1
    # Back on the same face: the nose is where it was before the gap (the head moves little).
    assert np.linalg.norm(faces[12].landmarks[FL.NOSE_TIP, :2] - faces[7].landmarks[FL.NOSE_TIP, :2]) < 0.15 * faces[7].size


# --------------------------------------------------------------------------------------------
# One subject among several faces


@pytest.mark.parametrize(
    ("subject", "expect_left"),
    [("largest", True), ("left", True), ("right", False), (0, True), (1, False), ("center", False)],
)
def test_subject_rule_chooses_the_face(two_faces, subject, expect_left):
    # A: 300 px at x=200 (left, larger); B: 200 px at x=520 (right, nearer the centre x=400).
    image = two_faces(300, 200, centre_b=520)
    with FaceTracker(FaceTrackerOptions(subject=subject)) as tracker:
        faces = run(tracker, [image] * 3)
    assert all(f is not None for f in faces)
    assert all((f.center[0] < 400) == expect_left for f in faces), [f.center[0] for f in faces]


def test_subject_index_beyond_the_faces_gives_none(two_faces):
    with FaceTracker(FaceTrackerOptions(subject=2)) as tracker:
        assert run(tracker, [two_faces(300, 200)] * 2) == [None, None]


@pytest.mark.parametrize("max_faces", [1, 2])
def test_follows_the_subject_when_another_face_grows(two_faces, max_faces, caplog):
    """A starts larger and is chosen; over 20 frames B grows past it and A shrinks: A is followed,
    by tracking (one acquisition), not by choosing again."""
    caplog.set_level(logging.INFO, logger="trackers.face")
    steps = np.linspace(0.0, 1.0, 20)
    images = [two_faces(int(360 - 200 * s), int(160 + 200 * s)) for s in steps]
    with FaceTracker(FaceTrackerOptions(max_faces=max_faces)) as tracker:
        faces = run(tracker, images)
    assert all(f is not None and f.center[0] < 400 for f in faces), [None if f is None else f.center[0] for f in faces]
    assert faces[-1].size < 0.65 * faces[0].size  # it really is A, shrunk
    assert sum("face acquired" in r.getMessage() for r in caplog.records) == 1
    # The same last frame on its own: the rule picks B, the now larger face.
    with FaceTracker() as fresh:
        assert fresh.process(Frame(images[-1], 0.0, 0)).center[0] > 400


def test_lost_subject_is_waited_for_then_the_rule_chooses_again(two_faces):
    both, only_b = two_faces(300, 200), two_faces(0, 200)
    options = FaceTrackerOptions(reacquire_timeout=0.5)
    with FaceTracker(options) as tracker:
        # A (larger) chosen; A hidden for 5 frames (0.17 s < 0.5 s): B is not taken instead.
        faces = run(tracker, [both] * 3 + [only_b] * 5 + [both] * 3)
        assert all(f.center[0] < 400 for f in faces[:3])
        assert faces[3:8] == [None] * 5
        assert all(f is not None and f.center[0] < 400 for f in faces[8:])
        # A hidden again from t = 11/30 s, now for 1 s: after the timeout the rule chooses among
        # the faces left, i.e. B.
        t0 = 11 / 30
        later = run(tracker, [only_b] * 30, t0=t0)
    waited = np.array([t0 + i / 30 - 10 / 30 for i in range(30)])  # since A was last seen
    assert all(f is None for f, w in zip(later, waited) if w < 0.49)
    assert all(f is not None and f.center[0] > 400 for f, w in zip(later, waited) if w > 0.51)


def test_selection_functions():
    centers = np.array([[500.0, 100.0], [100.0, 100.0], [330.0, 260.0]])
    sizes = np.array([50.0, 80.0, 60.0])
    assert select_subject(centers, sizes, "largest", (640, 480)) == 1
    assert select_subject(centers, sizes, "left", (640, 480)) == 1
    assert select_subject(centers, sizes, "right", (640, 480)) == 0
    assert select_subject(centers, sizes, "center", (640, 480)) == 2
    assert [select_subject(centers, sizes, i, (640, 480)) for i in range(4)] == [1, 2, 0, None]
    assert select_subject(np.zeros((0, 2)), np.zeros(0), "largest", (640, 480)) is None
    cost = follow_cost(centers, sizes, np.array([110.0, 100.0]), 80.0)
    assert np.argmin(cost) == 1 and cost[1] == pytest.approx(10 / 80)
    image = np.full((100, 200, 3), 255, np.uint8)
    kept = keep_region(image, np.array([50.0, 50.0]), 40.0)
    assert (kept[30:70, 30:70] == 255).all() and (kept[:, 80:] == 127).all() and (kept[:25] == 127).all()


# --------------------------------------------------------------------------------------------
# Landmarker backend: blendshapes and timestamps


def test_landmarker_blendshapes_follow_the_jaw(d0_landmarker_faces):
    faces = d0_landmarks(d0_landmarker_faces)
    expr = np.stack([f.blendshapes for f in faces])
    assert expr.shape == (60, 52) and expr.dtype == np.float32
    assert (expr >= 0).all() and (expr <= 1).all() and (expr[:, Blendshape.tongueOut] == 0).all()
    gap = np.array([
        np.linalg.norm(f.landmarks[FL.UPPER_LIP_INNER, :2] - f.landmarks[FL.LOWER_LIP_INNER, :2])
        / np.linalg.norm(f.landmarks[FL.FOREHEAD_TOP, :2] - f.landmarks[FL.CHIN, :2])
        for f in faces
    ])
    jaw = expr[:, Blendshape.jawOpen]
    assert gap.max() > 0.05 and gap.min() < 0.01  # the clip does open and close the mouth
    assert jaw[np.argmax(gap)] > jaw[np.argmin(gap)] + 0.1
    assert np.corrcoef(gap, jaw)[0, 1] > 0.8


def test_landmarker_timestamps_strictly_increase(d3_frames, face_landmarker_task, monkeypatch):
    from mediapipe.tasks.python import vision

    sent: list[int] = []
    original = vision.FaceLandmarker.detect_for_video

    def spy(self, image, timestamp_ms, *args, **kwargs):
        sent.append(timestamp_ms)
        return original(self, image, timestamp_ms, *args, **kwargs)

    monkeypatch.setattr(vision.FaceLandmarker, "detect_for_video", spy)
    # t repeats (0, 0, 0), goes back, then moves on by less than a millisecond.
    times = [0.0, 0.0, 0.0, 0.010, 0.005, 0.0334, 0.0336, 0.0337, 0.5]
    frames = [Frame(f.image, t, i) for i, (f, t) in enumerate(zip(d3_frames, times))]
    with FaceTracker(FaceTrackerOptions(backend="landmarker", face_landmarker=str(face_landmarker_task))) as tracker:
        faces = [tracker.process(f) for f in frames]
        assert tracker.backend == "landmarker"
        # After reset a new stream may start again at t = 0.
        tracker.reset()
        again = tracker.process(Frame(d3_frames[0].image, 0.0, 0))
    assert all(f is not None for f in faces) and again is not None
    before_reset = sent[:-1]
    assert len(before_reset) >= len(frames)
    assert all(b > a for a, b in zip(before_reset, before_reset[1:])), before_reset
    assert before_reset[0] == 0 and before_reset[-1] == 500 and sent[-1] == 0


def test_video_timestamp_ms():
    assert video_timestamp_ms(0.0, None) == 0
    assert video_timestamp_ms(0.0334, 0) == 33
    assert video_timestamp_ms(0.0334, 33) == 34
    assert video_timestamp_ms(0.01, 40) == 41
    assert video_timestamp_ms(12.5, 41) == 12500


def test_blendshape_sides_follow_the_subject(media_dir: Path, face_landmarker_task: Path):
    """lp_d8 frowns more on the subject's left (the corner at MOUTH_LEFT hangs lower):
    mouthFrownLeft > mouthFrownRight; the mirror image swaps both."""
    image = still(media_dir / "images" / "lp_d8.jpg")
    options = FaceTrackerOptions(backend="landmarker", face_landmarker=str(face_landmarker_task))
    for mirrored in (False, True):
        view = np.ascontiguousarray(image[:, ::-1]) if mirrored else image
        with FaceTracker(options) as tracker:
            face = tracker.process(Frame(view, 0.0, 0))
        left_lower = face.landmarks[FL.MOUTH_LEFT, 1] > face.landmarks[FL.MOUTH_RIGHT, 1]
        frown_left = face.blendshapes[Blendshape.mouthFrownLeft] > face.blendshapes[Blendshape.mouthFrownRight]
        assert left_lower == frown_left == (not mirrored)


def test_contract_expression_maps_by_name():
    class Category:
        def __init__(self, name, score):
            self.category_name, self.score = name, score

    names = list(MEDIAPIPE_BLENDSHAPE_NAMES)
    rng = np.random.default_rng(2)
    values = {n: float(v) for n, v in zip(names, rng.uniform(0, 1, len(names)))}
    shuffled = [Category(n, values[n]) for n in rng.permutation(names)]
    out = expression_from_categories(shuffled)
    assert out.shape == (52,) and out.dtype == np.float32
    for i, name in enumerate(ARKIT_NAMES[:-1]):
        assert out[i] == pytest.approx(values[name])
    assert out[Blendshape.tongueOut] == 0.0
    with pytest.raises(AssetError, match="unknown"):
        contract_expression({**values, "eyeBlink": 0.5})
    with pytest.raises(AssetError, match="lacks"):
        contract_expression({n: v for n, v in values.items() if n != "jawOpen"})


# --------------------------------------------------------------------------------------------
# Backend resolution, options, lifecycle


@pytest.fixture
def no_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("PUPPET_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PUPPET_FACE_LANDMARKER", raising=False)


def test_auto_falls_back_to_facemesh_without_a_bundle(no_bundle, face_image):
    with FaceTracker(FaceTrackerOptions(backend="auto")) as tracker:
        assert tracker.backend == "facemesh"
        assert tracker.process(Frame(still(face_image), 0.0, 0)) is not None
    with pytest.raises(AssetError, match="face_landmarker.task"):
        FaceTracker(FaceTrackerOptions(backend="landmarker"))


def test_auto_uses_the_landmarker_when_a_bundle_is_found(no_bundle, face_landmarker_task, monkeypatch):
    monkeypatch.setenv("PUPPET_FACE_LANDMARKER", str(face_landmarker_task))
    with FaceTracker(FaceTrackerOptions(backend="auto")) as tracker:
        assert tracker.backend == "landmarker"


def test_options_are_checked():
    for bad in ({"backend": "dlib"}, {"max_faces": 0}, {"subject": "biggest"}, {"subject": -1},
                {"subject": True}, {"min_detection_confidence": 1.5}, {"follow_tolerance": 0}):
        with pytest.raises(ValueError):
            FaceTrackerOptions(**bad)
    with pytest.raises(Exception):
        FaceTrackerOptions().max_faces = 2  # frozen


def test_close_releases_and_is_final(face_image):
    tracker = FaceTracker()
    frame = Frame(still(face_image), 0.0, 0)
    assert tracker.process(frame) is not None
    tracker.reset()
    assert not tracker.tracking
    assert tracker.process(frame) is not None
    tracker.close()
    tracker.close()
    with pytest.raises(RuntimeError):
        tracker.process(frame)
